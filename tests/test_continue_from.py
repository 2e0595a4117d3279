"""`+continue_from`: BERT's phase 2 starts from phase 1's weights and LAMB moments, on a
dataset of another length built with the same tokenizer, with a fresh step, schedule
and data position; another vocabulary, other shapes or another optimiser are refused."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from core.errors import ConfigError, UserError
from dataset import build_text_mlm_dataset
from pretrain import launch
from tests.helpers import TINY_BERT, compose_config, make_mlm_dataset
from training.build import setup
from training.checkpoint import find_latest
from training.config import PretrainConfig, validate
from training.distributed import DistContext
from training.metrics import read_metrics

PHASE = TINY_BERT + ["optimizer=lamb", "global_batch_size=8", "epochs=2", "eval_interval=null", "lr=1e-2"]
PHASE_1_STEPS = 3


@pytest.fixture(scope="module")
def phase_1(tmp_path_factory):
    """(phase-1 run folder, phase-2 dataset: length 64 with phase 1's tokenizer, root)."""
    root = tmp_path_factory.mktemp("phases")
    short = make_mlm_dataset(root / "short", max_seq_length=32)
    launch(compose_config(PHASE + [f"data_paths=[{short}]", f"max_steps={PHASE_1_STEPS}",
                                   f"+checkpoint_path={root / 'phase1'}"]))
    build_text_mlm_dataset.main(["--input-files", str(root / "short.txt"), "--output-dir", str(root / "long"),
                                 "--tokenizer", str(short / "tokenizer"), "--max-seq-length", "64",
                                 "--test-split", "0.3"])
    return root / "phase1", root / "long", root


def _setup(overrides: list[str]):
    config = validate(PretrainConfig, compose_config(PHASE + overrides))
    return setup(config, DistContext(0, 1, 0, torch.device("cpu")))


def test_phase_2_carries_weights_and_moments_and_starts_step_schedule_and_data_afresh(phase_1, tmp_path):
    phase1, long, _ = phase_1
    saved = find_latest(phase1)
    # Phase 2 changes the weight decay: this run's settings, not phase 1's, must rule.
    phase2 = [f"data_paths=[{long}]", "weight_decay=0.02", "lr_warmup_steps=4", "total_steps=6"]
    state, ctx, restored = _setup(phase2 + [f"+continue_from={phase1}", f"+checkpoint_path={tmp_path / 'p2'}"])
    fresh, _, _ = _setup(phase2 + [f"+checkpoint_path={tmp_path / 'fresh'}"])
    assert restored is None and state.step == 0
    assert state.stream_state == fresh.stream_state and state.total_steps == fresh.total_steps == 6
    weights = load_file(saved / "model.safetensors")
    for name, tensor in state.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    moments = torch.load(saved / "optimizer.pt", weights_only=True)["weights"]["state"]
    loaded = state.optimizer.state_dict()["state"]
    assert sorted(loaded) == sorted(moments) and len(loaded) == len(list(state.model.parameters()))
    for index, tensors in moments.items():
        assert set(tensors) == {"step", "exp_avg", "exp_avg_sq"}
        for key, tensor in tensors.items():
            assert torch.equal(loaded[index][key], tensor), (index, key)
        assert loaded[index]["step"].item() == PHASE_1_STEPS
    assert [group["weight_decay"] for group in state.optimizer.param_groups] == [0.02, 0.0]

    # Trained, the run counts from step 1 under a fresh warm-up, and the bias-correction
    # counters go on from phase 1's.
    launch(compose_config(PHASE + phase2 + [f"+continue_from={phase1}", f"+checkpoint_path={tmp_path / 'p2'}",
                                            "max_steps=2"]))
    records = [r for r in read_metrics(tmp_path / "p2") if "train/lr" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert [r["train/lr"] for r in records] == pytest.approx([1e-2 * 1 / 4, 1e-2 * 2 / 4])
    after = torch.load(tmp_path / "p2" / "step_2" / "optimizer.pt", weights_only=True)["weights"]["state"]
    assert all(tensors["step"].item() == PHASE_1_STEPS + 2 for tensors in after.values())


def test_phase_2_on_another_vocabulary_is_refused(phase_1):
    phase1, _, root = phase_1
    text = root / "other.txt"
    text.write_text("\n".join(["one two three four five six seven", "eight nine ten eleven twelve", ""] * 20))
    build_text_mlm_dataset.main(["--input-files", str(text), "--output-dir", str(root / "other"), "--tokenizer",
                                 "whitespace", "--vocab-size", "40", "--max-seq-length", "32", "--test-split", "0.3"])
    with pytest.raises(UserError, match=r"^\+continue_from: the dataset's vocabulary differs from the one .*phase1"
                                        r"/step_3 was trained with; rebuild the dataset with --tokenizer .*tokenizer$"):
        launch(compose_config(PHASE + [f"data_paths=[{root / 'other'}]", f"+continue_from={phase1}",
                                       f"+checkpoint_path={root / 'refused'}"]))
    assert not (root / "refused").exists()


@pytest.mark.parametrize("override, message", [
    ("arch.hidden_size=64", r"does not fit this model \(.*size mismatch"),
    ("optimizer=adamw", r"was trained with optimizer=lamb, this run uses optimizer=adamw; use optimizer=lamb"),
])
def test_phase_2_with_other_shapes_or_another_optimizer_is_refused(phase_1, override, message):
    phase1, long, root = phase_1
    with pytest.raises(UserError, match=message) as refused:
        launch(compose_config(PHASE + [f"data_paths=[{long}]", override, f"+continue_from={phase1}",
                                       f"+checkpoint_path={root / 'refused'}"]))
    assert "\n" not in str(refused.value)


def test_continue_from_and_init_from_together_are_refused(phase_1):
    phase1, long, _ = phase_1
    with pytest.raises(ConfigError, match=r"\+init_from and \+continue_from each name starting weights; keep one"):
        validate(PretrainConfig, compose_config(PHASE + [f"data_paths=[{long}]", f"+continue_from={phase1}",
                                                         f"+init_from={phase1}"]))
