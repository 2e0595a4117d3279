"""The training loop end to end on CPU: learning, exact resume, 1 vs 2 processes."""

from __future__ import annotations

import pytest

from pretrain import launch
from tests.helpers import TINY_TRM, compose_config, make_puzzle_dataset, run_one_and_two_processes, step_values
from training.checkpoint import find_latest, list_checkpoints
from training.metrics import read_metrics


def _train(data, run_dir, *extra):
    raw = compose_config(TINY_TRM + [f"data_paths=[{data}]", f"+checkpoint_path={run_dir}", *extra])
    launch(raw)
    return read_metrics(run_dir)


def test_tiny_trm_learns(tmp_path):
    data = make_puzzle_dataset(tmp_path / "data")
    records = _train(data, tmp_path / "run", "global_batch_size=16", "epochs=30", "eval_interval=30", "lr=3e-3")
    losses = list(step_values(records, "train/lm_loss").values())
    assert len(losses) == 90
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    final_eval = [r for r in records if "all/exact_accuracy" in r][-1]
    assert 0.0 <= final_eval["all/accuracy"] <= 1.0 and final_eval["all/lm_loss"] < first
    assert find_latest(tmp_path / "run").name == "step_90"


def test_resume_gives_the_same_losses(tmp_path):
    data = make_puzzle_dataset(tmp_path / "data")
    common = ["global_batch_size=16", "epochs=8", "eval_interval=4", "lr=1e-3", "ema=True"]
    straight = step_values(_train(data, tmp_path / "a", *common), "train/lm_loss")
    _train(data, tmp_path / "b", *common, "max_steps=10")
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step_10"]
    # A run killed after its checkpoint logged steps that the resumed run will log again.
    with open(tmp_path / "b" / "metrics.jsonl", "a") as file:
        file.write('{"step": 11, "time": 0, "train/lm_loss": 999.0}\n')
    records = _train(data, tmp_path / "b", *common, f"+load_checkpoint={tmp_path / 'b'}")
    train_steps = [r["step"] for r in records if "train/lm_loss" in r]
    assert train_steps == list(range(1, 25))  # each step once, the stale record dropped
    resumed = step_values(records, "train/lm_loss")
    for step in range(11, 25):
        assert resumed[step] == pytest.approx(straight[step], abs=1e-6), step


@pytest.mark.multiprocess
def test_two_processes_match_one(tmp_path):
    data = make_puzzle_dataset(tmp_path / "data")
    args = TINY_TRM + [f"data_paths=[{data}]", "global_batch_size=16", "epochs=4", "eval_interval=4", "lr=1e-3"]
    one_dir, two_dir = run_one_and_two_processes(args, tmp_path, port=29517)
    one, two = read_metrics(one_dir), read_metrics(two_dir)
    losses_one, losses_two = step_values(one, "train/lm_loss"), step_values(two, "train/lm_loss")
    assert sorted(losses_one) == sorted(losses_two) == list(range(1, 13))
    for step in losses_one:
        assert losses_two[step] == pytest.approx(losses_one[step], rel=1e-4, abs=1e-5), step
    eval_one = [r for r in one if "all/lm_loss" in r][-1]
    eval_two = [r for r in two if "all/lm_loss" in r][-1]
    assert eval_two["all/lm_loss"] == pytest.approx(eval_one["all/lm_loss"], rel=1e-4)


def test_update_one_already_gets_its_warmup_share(tmp_path, monkeypatch):
    """Update k of the warm-up uses lr * k / warmup (TRM's schedule), logged as such."""
    from training import optim

    used = []
    original = optim.AdamAtan2.step

    def recording_step(self, closure=None):
        used.append(self.param_groups[0]["lr"])
        return original(self, closure)

    monkeypatch.setattr(optim.AdamAtan2, "step", recording_step)
    data = make_puzzle_dataset(tmp_path / "data")
    records = _train(data, tmp_path / "run", "global_batch_size=16", "epochs=2", "eval_interval=2", "lr=1e-3",
                     "lr_warmup_steps=4")
    assert used == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    logged = {r["step"]: r["train/lr"] for r in records if "train/lr" in r}
    assert logged == pytest.approx({1: 2.5e-4, 2: 5e-4, 3: 7.5e-4, 4: 1e-3, 5: 1e-3, 6: 1e-3})


@pytest.mark.parametrize("clip_norm", [0.0, 100.0, 0.5])
def test_gradients_are_clipped_only_above_the_limit(clip_norm):
    import torch

    from training.loop import gradient_norm

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[1].bias.requires_grad_(False)  # a parameter without a gradient takes no part
    grads = [torch.arange(p.numel(), dtype=torch.float32).view_as(p) / 7 for p in model.parameters() if p.requires_grad]
    for param, grad in zip([p for p in model.parameters() if p.requires_grad], grads):
        param.grad = grad.clone()
    expected_norm = torch.cat([g.flatten() for g in grads]).norm().item()  # sqrt(sum of squares) = 3.67
    storages = [p.grad.data_ptr() for p in model.parameters() if p.grad is not None]
    norm = gradient_norm(model, clip_norm)
    assert norm.item() == pytest.approx(expected_norm, rel=1e-6)
    scale = clip_norm / expected_norm if 0 < clip_norm < expected_norm else 1.0
    after = [p.grad for p in model.parameters() if p.grad is not None]
    assert [g.data_ptr() for g in after] == storages
    for grad, original in zip(after, grads):
        assert torch.allclose(grad, original * scale, rtol=1e-6, atol=0), clip_norm
    assert torch.cat([g.flatten() for g in after]).norm().item() == pytest.approx(min(expected_norm, clip_norm or 1e9),
                                                                                rel=1e-5)
