"""Checkpoints are complete, atomic, and refuse damaged folders."""

import errno
import json

import pytest
import torch

from core.errors import UserError
from training import checkpoint as ckpt


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
