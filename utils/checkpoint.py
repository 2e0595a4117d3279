"""Complete, atomic checkpoints: `<run_dir>/step_<N>/`.

A checkpoint holds everything needed to continue a run exactly:

    model.safetensors     the TrainModule's state_dict (weights and persistent buffers)
    ema.safetensors       EMA weights, when `ema=True`
    optimizer.pt          optimiser states (tensors and numbers only: loaded with
                          `torch.load(weights_only=True)`, which executes no code)
    carry.safetensors     the step-to-step state of every batch slot, gathered over ranks
    rng.safetensors       every rank's torch RNG states
    train_state.json      step, data-stream position and counters
    config.json           the resolved run configuration
    dataset.json, tokenizer/   copies from the dataset, so exports need nothing else
    manifest.json         file names, sizes and SHA-256 digests, written last

Files are written into a hidden temporary folder, flushed to disk, and the folder is
renamed to `step_<N>` only when complete; a crash mid-save leaves no `step_<N>` behind.
`manifest.json` catches a folder whose files were truncated afterwards (sizes, checked
whenever checkpoints are listed) or damaged in place (digests, checked on load).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dataset.common import UserError

STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class Checkpoint:
    """Everything a checkpoint holds, as loaded into memory."""

    path: Path
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizers: dict[str, Any]
    carry: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]
    train_state: dict[str, Any]
    config: dict[str, Any]


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint, extra_paths: list[Path] = ()) -> Path:
    """Write `checkpoint` to `run_dir/step_<N>` atomically and return that path.

    On a full disk the partial folder is removed, earlier checkpoints stay, and a
    `UserError` says how to resume.
    """
    step = int(checkpoint.train_state["step"])
    final = run_dir / f"step_{step}"
    run_dir.mkdir(parents=True, exist_ok=True)
    # Left by a run that was killed mid-save or mid-replace; never picked up, so drop them.
    for stale in [*run_dir.glob(".step_*.partial-*"), *run_dir.glob(".step_*.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    partial = run_dir / f".step_{step}.partial-{os.getpid()}"
    partial.mkdir()
    try:
        _write_files(partial, checkpoint, extra_paths)
    except BaseException as error:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            previous = find_latest(run_dir)
            hint = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
            raise UserError(f"disk full while saving checkpoint step_{step} in {run_dir}; {hint}; free space and resume") from None
        raise
    _replace_dir(partial, final)
    return final


def _write_files(folder: Path, checkpoint: Checkpoint, extra_paths: list[Path]) -> None:
    save_file(_contiguous(checkpoint.model), folder / "model.safetensors")
    if checkpoint.ema is not None:
        save_file(_contiguous(checkpoint.ema), folder / "ema.safetensors")
    torch.save(checkpoint.optimizers, folder / "optimizer.pt")
    save_file(_contiguous(checkpoint.carry), folder / "carry.safetensors")
    save_file(_contiguous(checkpoint.rng), folder / "rng.safetensors")
    _write_json(folder / "train_state.json", checkpoint.train_state)
    _write_json(folder / "config.json", checkpoint.config)
    for source in extra_paths:
        if source.is_dir():
            shutil.copytree(source, folder / source.name)
        elif source.is_file():
            shutil.copy2(source, folder / source.name)
    manifest = {
        str(path.relative_to(folder)): {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(folder.rglob("*")) if path.is_file()
    }
    _write_json(folder / "manifest.json", manifest)
    for path in folder.rglob("*"):
        if path.is_file():
            _fsync(path)
    _fsync(folder)


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(value, file, indent=2)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _replace_dir(source: Path, target: Path) -> None:
    if target.exists():
        trash = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(trash)
        source.rename(target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        source.rename(target)
    _fsync(target.parent)


def _read_manifest(folder: Path) -> dict[str, dict[str, Any]] | None:
    """File name -> {"size", "sha256"?} (older checkpoints list sizes only), or None if unreadable."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(manifest, dict):
        return None
    return {name: entry if isinstance(entry, dict) else {"size": entry} for name, entry in manifest.items()}


def is_complete(folder: Path) -> bool:
    """Whether `folder` is a checkpoint whose manifest matches the sizes of the files on disk."""
    manifest = _read_manifest(folder)
    if manifest is None:
        return False
    return all(
        (folder / name).is_file() and (folder / name).stat().st_size == entry.get("size") for name, entry in manifest.items()
    )


def damaged_file(folder: Path) -> str | None:
    """The first file of a complete checkpoint whose SHA-256 differs from the manifest's, or None."""
    for name, entry in (_read_manifest(folder) or {}).items():
        if "sha256" in entry and _sha256(folder / name) != entry["sha256"]:
            return name
    return None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The complete `step_<N>` folders of a run, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found) if is_complete(path)]


def find_latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def resolve_checkpoint(spec: str, default_run_dir: Path | None) -> Path:
    """Turn `+load_checkpoint=` (a step folder, a run folder or `latest`) into a step folder."""
    if spec == "latest":
        if default_run_dir is None:
            raise UserError("+load_checkpoint=latest needs the run: pass +run_name=NAME (and +project_name=) or a folder")
        run_dir = default_run_dir
    else:
        run_dir = Path(spec)
        if not run_dir.exists():
            raise UserError(f"checkpoint {spec} does not exist; pass a step_<N> folder, a run folder or 'latest'")
        if (run_dir / "train_state.json").exists() or (run_dir / "manifest.json").exists():
            if not is_complete(run_dir):
                raise UserError(f"checkpoint {run_dir} is incomplete or corrupted; resume from its run folder to use the newest complete one")
            return run_dir
    latest = find_latest(run_dir)
    if latest is None:
        raise UserError(f"no complete checkpoint in {run_dir}; check the path, or start without +load_checkpoint")
    return latest


def load_checkpoint(folder: Path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`; a damaged one raises `UserError`."""
    if not is_complete(folder):
        raise UserError(f"checkpoint {folder} is incomplete or corrupted; resume from an earlier one")
    damaged = damaged_file(folder)
    if damaged is not None:
        raise UserError(f"checkpoint {folder} cannot be read: {damaged} does not match its checksum (corrupted); "
                        "resume from an earlier one")
    try:
        ema_path = folder / "ema.safetensors"
        return Checkpoint(
            path=folder,
            model=load_file(folder / "model.safetensors"),
            ema=load_file(ema_path) if ema_path.exists() else None,
            optimizers=torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True),
            carry=load_file(folder / "carry.safetensors"),
            rng=load_file(folder / "rng.safetensors"),
            train_state=json.loads((folder / "train_state.json").read_text(encoding="utf-8")),
            config=json.loads((folder / "config.json").read_text(encoding="utf-8")),
        )
    except (SafetensorError, RuntimeError, pickle.UnpicklingError, json.JSONDecodeError, UnicodeDecodeError, EOFError) as error:
        raise UserError(f"checkpoint {folder} cannot be read ({type(error).__name__}); resume from an earlier one") from None
