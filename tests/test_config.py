"""Every shipped YAML composes and validates; mistakes give one clear line."""


import pytest

from models.registry import ARCHITECTURES, get_arch
from tests.helpers import REPO, compose_config
from training.config import ConfigError, PretrainConfig, validate

ARCH_FILES = sorted(path.stem for path in (REPO / "config" / "arch").glob("*.yaml"))


def test_arch_presets_exist():
    assert {"trm", "bert", "bert_large", "bert_tiny"} <= set(ARCH_FILES)


@pytest.mark.parametrize("arch", ARCH_FILES)
def test_every_yaml_composes_and_validates(arch):
    raw = compose_config([f"arch={arch}"])
    config = validate(PretrainConfig, raw)
    spec = get_arch(config.arch["name"])
    arch_config = validate(spec.config_class, config.arch, prefix="arch.")
    assert arch_config.name in ARCHITECTURES


def test_bert_presets_sizes_and_training_defaults():
    sizes = {}
    for arch in ("bert", "bert_large", "bert_tiny"):
        raw = compose_config([f"arch={arch}"])
        sizes[arch] = (raw["arch"]["num_layers"], raw["arch"]["hidden_size"], raw["arch"]["num_heads"])
        # evaluators=None: the data decides (nothing for MLM data; see test_default_evaluators_follow_the_data).
        assert raw["optimizer"] == "adamw" and raw["beta2"] == 0.999 and raw["evaluators"] is None
    assert sizes == {"bert": (12, 768, 12), "bert_large": (24, 1024, 16), "bert_tiny": (4, 256, 4)}
    # A command-line override still wins over the arch file's defaults.
    assert compose_config(["arch=bert", "beta2=0.98"])["beta2"] == 0.98


def test_trm_recipe_overrides_compose():
    # The Sudoku MLP recipe of TRM's README, verbatim.
    overrides = (
        'arch=trm data_paths=[data/sudoku-extreme-1k-aug-1000] evaluators=[] epochs=50000 eval_interval=5000 '
        'lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 arch.mlp_t=True '
        'arch.pos_encodings=none arch.L_layers=2 arch.H_cycles=3 arch.L_cycles=6 +run_name=pretrain_mlp_t_sudoku '
        'ema=True'
    ).split()
    config = validate(PretrainConfig, compose_config(overrides))
    assert config.run_name == "pretrain_mlp_t_sudoku" and config.ema and config.arch["mlp_t"]
    assert config.arch["puzzle_emb_ndim"] == config.arch["hidden_size"] == 512
    assert config.optimizer == "adam_atan2" and config.beta2 == 0.95


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["+lrr=1"], "unknown config key 'lrr'"),
        (["+globl_batch_size=8"], "did you mean 'global_batch_size'"),
        (["global_batch_size=abc"], "config key 'global_batch_size'"),
        (["epochs=100", "eval_interval=30"], "must be a multiple of eval_interval"),
        (["optimizer=sgd"], "'adam_atan2' or 'adamw' or 'lamb'"),
        (["eval_only=true"], r"needs \+load_checkpoint"),
        (["checkpoint_keep_last=0"], "checkpoint_keep_last"),
        (["checkpoint_keep_best=all/steps"], "add checkpoint_best_mode=min or max"),
        (["checkpoint_best_mode=lowest"], "checkpoint_best_mode"),
    ],
)
def test_bad_top_level_values(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(PretrainConfig, compose_config(overrides))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["+arch.hiden_size=3"], "unknown config key 'arch.hiden_size'"),
        (["arch.pos_encodings=sinusoid"], "arch.pos_encodings"),
        (["arch=bert", "arch.num_layers=many"], "arch.num_layers"),
    ],
)
def test_bad_arch_values(overrides, message):
    config = validate(PretrainConfig, compose_config(overrides))
    spec = get_arch(config.arch["name"])
    with pytest.raises(ConfigError, match=message):
        validate(spec.config_class, config.arch, prefix="arch.")


def test_unknown_arch_name_lists_known():
    with pytest.raises(ConfigError, match="known architectures: bert, bert_cls, bert_ner, bert_qa, trm"):
        get_arch("gpt")


def test_cross_field_error_names_the_fields_not_the_whole_section():
    config = validate(PretrainConfig, compose_config(["arch=bert", "arch.hidden_size=100", "arch.num_heads=3"]))
    with pytest.raises(ConfigError) as info:
        validate(get_arch("bert").config_class, config.arch, prefix="arch.")
    assert str(info.value) == "arch.hidden_size (100) must be divisible by arch.num_heads (3)"


@pytest.mark.parametrize(
    "metric, given, expected",
    [("all/mlm_loss", None, "min"), ("ARC/pass@2", None, "max"), ("validation/f1", None, "max"),
     ("all/exact_accuracy", None, "max"), ("all/steps", "min", "min"), ("all/lm_loss", "max", "max")],
)
def test_best_checkpoint_direction_from_the_name_or_the_key(metric, given, expected):
    extra = [f"checkpoint_best_mode={given}"] if given else []
    config = validate(PretrainConfig, compose_config([f"checkpoint_keep_best={metric}", *extra]))
    assert config.checkpointing.best_mode == expected


@pytest.mark.parametrize("arch", ["bert", "bert_large"])
def test_the_lamb_recipes_state_nvidias_two_phases(arch):
    phases = {}
    for phase in ("lamb_phase1", "lamb_phase2"):
        config = validate(PretrainConfig, compose_config([f"arch={arch}", f"recipe={phase}"]))
        phases[phase] = (config.optimizer, config.global_batch_size, config.total_steps, config.lr,
                         config.lr_warmup_ratio, config.weight_decay, config.beta2, config.grad_clip_norm)
        for processes in (1, 2, 4, 8, 64):  # the micro-batch divides each process's share
            assert (config.global_batch_size // processes) % config.micro_batch_size == 0
        assert compose_config([f"arch={arch}"])["arch"] == config.arch  # the recipe leaves the model alone
    assert phases == {"lamb_phase1": ("lamb", 65536, 7038, 6e-3, 0.2843, 0.01, 0.999, 1.0),
                      "lamb_phase2": ("lamb", 32768, 1563, 4e-3, 0.128, 0.01, 0.999, 1.0)}
    assert compose_config([f"arch={arch}", "recipe=lamb_phase2", "lr=1e-3"])["lr"] == 1e-3  # the command line wins
