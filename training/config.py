"""The run configuration: Hydra composes it, this module types and checks it.

Nothing past `pretrain.py` sees a raw DictConfig: `validate` turns the composed config
into a `PretrainConfig` (unknown keys refused) and the `arch` section into the
architecture's own pydantic model, and every mistake becomes a `ConfigError` whose one
line names the key and what it accepts. The command line's keys stay flat (`lr=`,
`lr_warmup_steps=`, ...); the code reads them through typed views of one concern each
(`optimizer_settings`, `schedule_settings`, `checkpointing`, `logging`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from core.errors import ConfigError
from training.optim import OPTIMIZERS, OptimizerSettings
from training.schedule import SHAPES, ScheduleSettings


@dataclass(frozen=True)
class CheckpointSettings:
    """The run config's checkpoint keys, as the code reads them."""

    run_dir: Path | None
    """`+checkpoint_path`: the run folder (None: `checkpoints/<project>/<run>`)."""
    load: str | None
    """`+load_checkpoint`: a step folder, a run folder or `latest`."""
    resume: str | None
    every_eval: bool
    """`checkpoint_every_eval`."""
    keep_last: int | None
    """`checkpoint_keep_last`: how many of the newest checkpoints to keep (None: all)."""
    keep_best: str | None
    """`checkpoint_keep_best`: the eval metric whose best checkpoint is kept too."""
    best_mode: Literal["min", "max"] | None
    """Whether lower (`min`) or higher (`max`) `keep_best` is better (from the name unless given)."""


@dataclass(frozen=True)
class LoggingSettings:
    """The run config's logging keys, as the code reads them."""

    interval: int
    """`log_interval`: steps between metric records."""
    wandb: str
    project_name: str | None
    run_name: str | None
    peak_tflops: float | None
    """`peak_tflops`: one device's peak, the denominator of `train/mfu`."""


class PretrainConfig(BaseModel):
    """Every run setting (names and defaults follow TRM's `cfg_pretrain.yaml`)."""

    model_config = ConfigDict(extra="forbid")

    arch: dict[str, Any]
    """The architecture section; validated by the architecture's own config class."""
    data_paths: list[str] | None = None
    """Training dataset folders (several are concatenated); required."""
    data_paths_test: list[str] = []
    """Evaluation dataset folders; empty means the test split of `data_paths`."""
    data: dict[str, Any] = {}
    """Options of the data kind the arch reads (e.g. `data.masking.mask_prob` for MLM
    data); validated by that kind's options class."""
    evaluators: list[dict[str, Any]] | None = None
    """Evaluators, e.g. `[{name: arc}]`; None (the default) takes what the data calls for:
    ARC voting for ARC datasets, nothing otherwise. `[]` runs none."""

    global_batch_size: int
    """Examples per optimiser step, summed over all ranks."""
    micro_batch_size: int | None = Field(default=None, ge=1)
    """Examples per forward on each process; None: all of its share (global_batch_size /
    processes). A smaller value splits each step into that share / micro_batch_size
    forwards whose gradients add up to the same update (gradient accumulation)."""
    epochs: int
    """Passes over the training data."""
    eval_interval: int | None = None
    """Evaluate every this many epochs (None: only at the end)."""
    min_eval_interval: int | None = 0
    """Skip evaluations before this many epochs."""
    checkpoint_every_eval: bool = True
    """Save a checkpoint at every evaluation (one is always saved at the end)."""
    checkpoint_keep_last: int | None = Field(default=None, ge=1)
    """Keep only the newest this many checkpoints of the run (None: keep all). Older ones
    are deleted after a new one is written and verified, never the newest."""
    checkpoint_keep_best: str | None = None
    """Also keep the checkpoint with the best value of this eval metric (e.g.
    `all/mlm_loss`), whatever its age; the end of the run names it."""
    checkpoint_best_mode: Literal["min", "max"] | None = None
    """Whether lower (`min`) or higher (`max`) `checkpoint_keep_best` is better; None: read
    from the metric's name (`loss`, `error`, `perplexity`: min; `accuracy`, `f1`, `exact`,
    `pass@`, `mcc`, `pearson`, `spearman`, `precision`, `recall`: max)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (for demos and smoke tests); the LR schedule
    still spans the whole run."""
    total_steps: int | None = Field(default=None, ge=1)
    """The run's length in optimiser steps, which the LR schedule spans (recipes stated in
    steps, as NVIDIA's BERT phases); None: `epochs` x steps per epoch."""

    optimizer: str = "adam_atan2"
    """Weights optimiser, a name in `training.optim.OPTIMIZERS`: TRM's Adam-atan2, AdamW (BERT),
    or LAMB (BERT at batches of thousands, as NVIDIA trains it: `training/lamb.py`)."""
    lr: float
    """Peak learning rate."""
    lr_min_ratio: float = 1.0
    """Final learning rate as a fraction of `lr` (1.0: constant after warmup)."""
    lr_warmup_steps: int = 2000
    """Steps of linear warmup from 0."""
    lr_warmup_ratio: float | None = None
    """Warmup as a fraction of the run's steps (fine-tuning uses 0.1); when set it replaces
    `lr_warmup_steps`, which the run's saved config then shows."""
    lr_schedule: str = "cosine"
    """Shape of the decay after warmup, a name in `training.schedule.SHAPES`: cosine or linear."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.95
    """Adam beta2."""
    weight_decay: float = 0.1
    """Decoupled weight decay of the weights."""
    grad_clip_norm: float = 0.0
    """Clip the global gradient norm to this value (0: no clipping)."""
    puzzle_emb_lr: float = 1e-2
    """Learning rate of the sparse sign-SGD on puzzle embeddings (TRM)."""
    puzzle_emb_weight_decay: float = 0.1
    """Weight decay of the puzzle embeddings (TRM)."""
    freeze_weights: bool = False
    """Train only the puzzle embeddings (TRM fine-tuning)."""
    ema: bool = False
    """Keep an exponential moving average of the weights; evaluation uses it."""
    ema_rate: float = 0.999
    """EMA decay per step."""
    max_nonfinite_steps: int = 10
    """Stop after this many optimiser steps in a row with a non-finite loss or gradient."""

    seed: int = 0
    """Seed of initialisation, data order, masking and halting exploration."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; `auto` picks CUDA when available."""
    cpu_threads: int | None = Field(default=None, ge=1)
    """torch's intra-op threads on CPU runs; None takes OMP_NUM_THREADS when set, else picks
    them: the cores this process may use,
    shared by the processes of this machine, minus the cores other jobs keep busy (1-minute
    load average at start), at least 1. Oversubscribed threads are several times slower."""
    compile: bool | Literal["auto"] = "auto"
    """`torch.compile` the training forward: `auto` on GPUs only (on CPUs the compile time
    rarely pays back), true everywhere (inductor on CPU too), false never."""
    log_interval: int = 10
    """Steps between metric records (means over the interval)."""
    peak_tflops: float | None = Field(default=None, gt=0)
    """Peak TFLOP/s of one device, the denominator of `train/mfu`; None takes the dense bf16
    peak of a known GPU (`training.environment.PEAK_BF16_TFLOPS`) and logs no MFU on CPU."""
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    """Weights & Biases: `auto` logs online when logged in, offline otherwise, and is
    off when the package is not installed."""
    eval_only: bool = False
    """Evaluate `+load_checkpoint` without training: arch, data and settings come from the
    checkpoint; keys given on the command line override them (e.g. other `data_paths`)."""
    resume: Literal["auto"] | None = None
    """What to do with a run folder that already holds a run. None: refuse it (resume with
    `+load_checkpoint`, or pick another `+run_name`); `auto`: resume from its newest
    checkpoint when there is one, start fresh otherwise (restarts by torchrun's elastic
    agent or a scheduler)."""

    project_name: str | None = None
    """Run group (`+project_name=`); default: `<dataset>-<arch>`."""
    run_name: str | None = None
    """Run name (`+run_name=`); default: `<arch>-<date>-<time>`."""
    checkpoint_path: str | None = None
    """Run folder (`+checkpoint_path=`); default: `checkpoints/<project>/<run>`."""
    load_checkpoint: str | None = None
    """Resume from a checkpoint folder, a run folder or `latest` (`+load_checkpoint=`)."""
    init_from_hf: str | None = None
    """Start BERT from a Hugging Face `transformers` checkpoint folder (`+init_from_hf=`)."""
    init_from: str | None = None
    """Start from the weights of this project's checkpoint, a run or step_N folder (`+init_from=`):
    sizes from its config, matching tensors loaded, the rest fresh (e.g. fine-tuning heads)."""
    continue_from: str | None = None
    """Start a new run from the weights and optimiser state of this project's checkpoint, a run or
    step_N folder (`+continue_from=`; BERT's phase 2): step, schedule and data position start afresh
    (`training/continue_from.py`). Ignored when the run resumes from a checkpoint of its own."""

    @field_validator("optimizer", "lr_schedule")
    @classmethod
    def _registered(cls, name: str, info: ValidationInfo) -> str:
        """`optimizer` and `lr_schedule` name entries of their registries (`OPTIMIZERS`, `SHAPES`)."""
        known = {"optimizer": OPTIMIZERS, "lr_schedule": SHAPES}[info.field_name]
        if name not in known:
            raise ValueError(f"unknown {info.field_name}; use {' or '.join(repr(entry) for entry in known)}")
        return name

    @property
    def optimizer_settings(self) -> OptimizerSettings:
        """The optimiser keys as one value."""
        return OptimizerSettings(self.optimizer, self.lr, (self.beta1, self.beta2), self.freeze_weights,
                                 self.puzzle_emb_lr, self.puzzle_emb_weight_decay)

    @property
    def schedule_settings(self) -> ScheduleSettings:
        """The learning-rate schedule keys as one value (base rates per optimiser)."""
        return ScheduleSettings({"weights": self.lr, "sparse": self.puzzle_emb_lr}, self.lr_warmup_steps,
                                self.lr_warmup_ratio, self.lr_min_ratio, self.lr_schedule)

    @property
    def checkpointing(self) -> CheckpointSettings:
        """The checkpoint keys as one value."""
        run_dir = Path(self.checkpoint_path) if self.checkpoint_path else None
        best_mode = self.checkpoint_best_mode
        if self.checkpoint_keep_best and best_mode is None:
            best_mode = best_mode_of(self.checkpoint_keep_best)
        return CheckpointSettings(run_dir, self.load_checkpoint, self.resume, self.checkpoint_every_eval,
                                  self.checkpoint_keep_last, self.checkpoint_keep_best, best_mode)

    @property
    def logging(self) -> LoggingSettings:
        """The logging keys as one value."""
        return LoggingSettings(self.log_interval, self.wandb, self.project_name, self.run_name, self.peak_tflops)

    @model_validator(mode="after")
    def _check_consistency(self) -> PretrainConfig:
        positive = {"global_batch_size": self.global_batch_size, "epochs": self.epochs, "log_interval": self.log_interval}
        for key, value in positive.items():
            if value <= 0:
                raise ValueError(f"{key} must be positive, got {value}")
        if self.eval_interval is not None:
            if self.eval_interval <= 0:
                raise ValueError(f"eval_interval must be positive, got {self.eval_interval}")
            if self.epochs % self.eval_interval:
                raise ValueError(
                    f"epochs ({self.epochs}) must be a multiple of eval_interval ({self.eval_interval}); "
                    "change one of them"
                )
        if self.data_paths is not None and not self.data_paths:
            raise ValueError("data_paths is empty; pass data_paths=\"[path/to/dataset]\"")
        if self.eval_only and not self.load_checkpoint:
            raise ValueError("eval_only=true needs +load_checkpoint=PATH")
        starts = [f"+{key}" for key in ("init_from", "init_from_hf", "continue_from") if getattr(self, key)]
        if len(starts) > 1:
            raise ValueError(f"{' and '.join(starts)} each name starting weights; keep one")
        if self.lr_warmup_ratio is not None and not 0.0 <= self.lr_warmup_ratio < 1.0:
            raise ValueError(f"lr_warmup_ratio must be in [0, 1) or null, got {self.lr_warmup_ratio}")
        if not 0.0 <= self.ema_rate < 1.0:
            raise ValueError(f"ema_rate must be in [0, 1), got {self.ema_rate}")
        if self.checkpoint_keep_best and self.checkpoint_best_mode is None and best_mode_of(self.checkpoint_keep_best) is None:
            raise ValueError(f"cannot tell from its name whether a lower or a higher checkpoint_keep_best="
                             f"{self.checkpoint_keep_best} is better; add checkpoint_best_mode=min or max")
        return self


LOWER_IS_BETTER = ("loss", "error", "perplexity")
HIGHER_IS_BETTER = ("accuracy", "f1", "exact", "pass@", "mcc", "pearson", "spearman", "precision", "recall")
"""Words in a metric's name (after its set, e.g. `all/`) that say which way is better."""


def best_mode_of(metric: str) -> Literal["min", "max"] | None:
    """`min` or `max` for a metric name with a known word in it, else None."""
    name = metric.rsplit("/", 1)[-1].lower()
    if any(word in name for word in LOWER_IS_BETTER):
        return "min"
    if any(word in name for word in HIGHER_IS_BETTER):
        return "max"
    return None


def format_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line naming the first bad key and what it accepts."""
    first = error.errors()[0]
    key = prefix + ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{key}'; check the spelling (known keys are in config/*.yaml)"
    if first["type"] == "missing":
        return f"config key '{key}' is required"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "list_type" and isinstance(first.get("input"), str):
        return f"config key '{key}' takes a list: write {key}=\"[{first['input']}]\" (quotes included)"
    if not first["loc"]:
        # A check across several fields: its message names them; the input is the whole section.
        return message
    if key:
        return f"config key '{key}': {message} (got {first.get('input')!r})"
    return message


def validate(model_class: type[BaseModel], values: dict[str, Any], prefix: str = "") -> BaseModel:
    """`model_class.model_validate(values)`, raising `ConfigError` with one line."""
    try:
        return model_class.model_validate(values)
    except ValidationError as error:
        message = format_validation_error(error, prefix)
        first = error.errors()[0]
        if first["type"] == "extra_forbidden" and len(first["loc"]) == 1:
            close = difflib.get_close_matches(str(first["loc"][0]), list(model_class.model_fields), n=1)
            if close:
                message += f"; did you mean '{prefix}{close[0]}'?"
        raise ConfigError(message) from None


PLUS_KEYS = ("project_name", "run_name", "checkpoint_path", "load_checkpoint", "init_from_hf", "continue_from")
"""Keys left out of the YAML on purpose: the command line adds them with a `+`."""

MOVED_KEYS = {"arch.masking": "data.masking", "arch.trim_padding_to_multiple": "data.trim_padding_to_multiple"}
"""Keys that moved to another section: old prefix -> new prefix."""

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
"""Where Hydra finds `cfg_pretrain.yaml` and the `arch/` group."""


def check_overrides(overrides: list[str], config_name: str = "cfg_pretrain") -> None:
    """Compose the config as `@hydra.main` will, turning Hydra's errors into one-line `ConfigError`s.

    Hydra reports a bad override (`arch=foo`, `lrr=1`) with a multi-line message and exit
    status 1; calling this first gives the project's single line and status 2 instead.
    """
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            compose(config_name, overrides=overrides)
    except MissingConfigException as error:
        group, _, name = (error.missing_cfg_file or "").rpartition("/")
        options = ", ".join(error.options or [])
        raise ConfigError(f"unknown {group or 'config'} '{name}'; choose one of: {options}") from None
    except OverrideParseException as error:
        lines = str(error).splitlines()
        first = lines[1] if lines[0].startswith("Error parsing override") and len(lines) > 1 else lines[0]
        culprit = next((o for o in overrides if not _parses(o)), None)
        where = f"override '{culprit}'" if culprit else "the command line"
        raise ConfigError(f"cannot parse {where} ({first}); write overrides as key=value") from None
    except HydraException as error:
        appended = re.match(r"Could not append to config. An item is already at '([^']+)'", str(error))
        if appended:
            given = next((o for o in overrides if o.lstrip("+").split("=")[0] == appended.group(1)), "")
            raise ConfigError(f"'{appended.group(1)}' is already a config key, so it takes no '+': write "
                              f"{given.lstrip('+')}") from None
        match = re.match(r"Could not override '([^']+)'", str(error))
        if match is None or "not in struct" not in str(error.__cause__):
            raise ConfigError(str(error).splitlines()[0]) from None
        key = match.group(1)
        if key in PLUS_KEYS:
            given = next((o for o in overrides if o.split("=")[0] == key), f"{key}=...")
            raise ConfigError(f"'{key}' is not in the YAML on purpose and is set with a '+': write +{given}") from None
        for old, new in MOVED_KEYS.items():
            if key == old or key.startswith(old + "."):
                raise ConfigError(f"'{old}' is now '{new}' (data settings live with the data): "
                                  f"write {new + key[len(old):]}=...") from None
        groups = {path.name for path in CONFIG_DIR.iterdir() if path.is_dir()}
        hint = _close_key(key, [o for o in overrides if o.split("=")[0] in groups], config_name)
        raise ConfigError(f"unknown config key '{key}'; check the spelling (known keys are in config/*.yaml){hint}") from None


def _parses(override: str) -> bool:
    try:
        OverridesParser.create().parse_overrides([override])
    except HydraException:
        return False
    return True


def _close_key(key: str, group_overrides: list[str], config_name: str) -> str:
    """"; did you mean 'x'?" for the closest existing key beside `key`, or ""."""
    parent_path, _, leaf = key.rpartition(".")
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            node = compose(config_name, overrides=group_overrides)
    except HydraException:
        return ""
    for part in parent_path.split(".") if parent_path else []:
        node = node.get(part) if isinstance(node, DictConfig) else None
    if not isinstance(node, DictConfig):
        return ""
    close = difflib.get_close_matches(leaf, [str(name) for name in node.keys()], n=1)
    return f"; did you mean '{parent_path + '.' if parent_path else ''}{close[0]}'?" if close else ""
