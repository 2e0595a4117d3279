"""Checkpoints are complete, atomic, and refuse damaged folders."""

import errno
import json
from pathlib import Path

import pytest
import torch

from core.errors import UserError
from training import checkpoint as ckpt
from training.config import CheckpointSettings


def _checkpoint(step: int, value: float = 1.0) -> ckpt.Checkpoint:
    return ckpt.Checkpoint(
        model={"w": torch.full((2, 3), value)},
        ema={"w": torch.full((2, 3), value / 2)},
        optimizers={"weights": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}},
        carry={"halted": torch.tensor([True, False]), "z": torch.randn(2, 4)},
        rng={"rank0.cpu": torch.get_rng_state()},
        train_state={"step": step, "stream": {"epoch": 1, "cursor": 5}},
        config={"arch": {"name": "trm"}},
    )


def test_round_trip(tmp_path):
    original = _checkpoint(7, 2.0)
    path = ckpt.write_checkpoint(tmp_path, original)
    assert path == tmp_path / "step_7" and ckpt.is_complete(path)
    loaded = ckpt.read_checkpoint(path)
    torch.testing.assert_close(loaded.model["w"], original.model["w"])
    torch.testing.assert_close(loaded.ema["w"], original.ema["w"])
    assert loaded.carry["halted"].dtype == torch.bool
    torch.testing.assert_close(loaded.carry["z"], original.carry["z"])
    assert loaded.optimizers["weights"]["state"][0]["step"].item() == 3.0
    assert loaded.train_state["stream"] == {"epoch": 1, "cursor": 5}
    assert torch.equal(loaded.rng["rank0.cpu"], original.rng["rank0.cpu"])


def test_crash_mid_save_leaves_no_checkpoint(tmp_path, monkeypatch):
    ckpt.write_checkpoint(tmp_path, _checkpoint(1))

    def explode(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(ckpt.torch, "save", explode)
    with pytest.raises(RuntimeError):
        ckpt.write_checkpoint(tmp_path, _checkpoint(2))
    assert [p.name for p in tmp_path.iterdir()] == ["step_1"]
    assert ckpt.find_latest(tmp_path) == tmp_path / "step_1"


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.write_checkpoint(tmp_path, _checkpoint(1))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(UserError, match="disk full.*step_1 is intact"):
        ckpt.write_checkpoint(tmp_path, _checkpoint(2))
    assert ckpt.find_latest(tmp_path) == tmp_path / "step_1"
    assert ckpt.read_checkpoint(tmp_path / "step_1").train_state["step"] == 1


def test_truncated_file_is_never_picked_up(tmp_path):
    ckpt.write_checkpoint(tmp_path, _checkpoint(1))
    newest = ckpt.write_checkpoint(tmp_path, _checkpoint(2))
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert not ckpt.is_complete(newest)
    assert ckpt.find_latest(tmp_path) == tmp_path / "step_1"
    assert ckpt.resolve_checkpoint(str(tmp_path), None) == tmp_path / "step_1"
    with pytest.raises(UserError, match="incomplete or corrupted"):
        ckpt.resolve_checkpoint(str(newest), None)
    with pytest.raises(UserError, match="incomplete or corrupted"):
        ckpt.read_checkpoint(newest)


def test_garbage_with_matching_sizes_is_refused(tmp_path):
    path = ckpt.write_checkpoint(tmp_path, _checkpoint(3))
    size = (path / "model.safetensors").stat().st_size
    (path / "model.safetensors").write_bytes(b"\xff" * size)
    with pytest.raises(UserError, match="cannot be read"):
        ckpt.read_checkpoint(path)


def test_resolve_latest_and_missing(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ckpt.resolve_checkpoint(str(tmp_path / "nope"), None)
    with pytest.raises(UserError, match="no complete checkpoint"):
        ckpt.resolve_checkpoint("latest", tmp_path)
    ckpt.write_checkpoint(tmp_path, _checkpoint(5))
    ckpt.write_checkpoint(tmp_path, _checkpoint(10))
    assert ckpt.resolve_checkpoint("latest", tmp_path) == tmp_path / "step_10"
    manifest = json.loads((tmp_path / "step_10" / "manifest.json").read_text())
    assert "model.safetensors" in manifest and "manifest.json" not in manifest


def test_optimizer_file_executes_no_code(tmp_path, capsys):
    path = ckpt.write_checkpoint(tmp_path, _checkpoint(1))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"weights": Evil()}, path / "optimizer.pt")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["optimizer.pt"] = (path / "optimizer.pt").stat().st_size
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="cannot be read"):
        ckpt.read_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out


def _retention(keep_last: int | None, keep_best: str | None = None, best_mode: str | None = None) -> CheckpointSettings:
    return CheckpointSettings(None, None, None, True, keep_last, keep_best, best_mode)


def _scored_checkpoints(folder: Path, losses: dict[int, float]) -> None:
    for step, loss in losses.items():
        checkpoint = _checkpoint(step)
        checkpoint.train_state["eval_metrics"] = {"all/lm_loss": loss, "all/accuracy": 1.0 - loss}
        ckpt.write_checkpoint(folder, checkpoint)


def test_keep_last_and_the_best(tmp_path):
    _scored_checkpoints(tmp_path, {10: 0.9, 20: 0.2, 30: 0.5, 40: 0.4, 50: float("nan")})
    assert ckpt.best_checkpoint(ckpt.list_checkpoints(tmp_path), "all/lm_loss", "min") == (tmp_path / "step_20", 0.2)
    assert ckpt.best_checkpoint(ckpt.list_checkpoints(tmp_path), "all/accuracy", "max")[0] == tmp_path / "step_20"
    assert ckpt.prune_checkpoints(tmp_path, tmp_path / "step_50", _retention(None, "all/lm_loss", "min")) == []
    removed = ckpt.prune_checkpoints(tmp_path, tmp_path / "step_50", _retention(2, "all/lm_loss", "min"))
    assert [path.name for path in removed] == ["step_10", "step_30"]
    assert [path.name for path in ckpt.list_checkpoints(tmp_path)] == ["step_20", "step_40", "step_50"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["step_20", "step_40", "step_50"]  # no leftovers
    ckpt.prune_checkpoints(tmp_path, tmp_path / "step_50", _retention(1))
    assert [path.name for path in ckpt.list_checkpoints(tmp_path)] == ["step_50"]


def test_nothing_is_deleted_when_the_new_checkpoint_does_not_verify(tmp_path, capsys):
    _scored_checkpoints(tmp_path, {1: 0.5, 2: 0.4, 3: 0.3})
    newest = tmp_path / "step_3"
    size = (newest / "model.safetensors").stat().st_size
    (newest / "model.safetensors").write_bytes(b"\0" * size)  # damaged in place: sizes match, digest does not
    assert ckpt.prune_checkpoints(tmp_path, newest, _retention(1)) == []
    assert len(ckpt.list_checkpoints(tmp_path)) == 3
    assert "does not match its manifest; no older checkpoint is deleted" in capsys.readouterr().out


def test_unknown_best_metric_names_the_logged_ones(tmp_path):
    with pytest.raises(UserError, match=r"checkpoint_keep_best=all/lm_los is not an eval metric of this run "
                                        r"\(did you mean 'all/lm_loss'\? it logs all/accuracy, all/lm_loss\)"):
        ckpt.check_best_metric(_retention(2, "all/lm_los", "min"), {"all/lm_loss": 1.0, "all/accuracy": 0.5}, tmp_path)
    ckpt.check_best_metric(_retention(2, "all/lm_los", "min"), {}, tmp_path)  # a save without an evaluation
