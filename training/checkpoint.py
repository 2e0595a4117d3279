"""Complete, atomic checkpoints: `<run_dir>/step_<N>/`, and how a run's state goes in and out.

Words: the run folder (`run_dir`) holds a run; a checkpoint is one of its `step_<N>`
folders (`step_dir`). Two levels, each a pair: `write_checkpoint`/`read_checkpoint` move a
`Checkpoint` (tensors and JSON in memory) to and from a step folder;
`save_train_state`/`restore_train_state` turn a run's `TrainState` into one and back.

`save_train_state(state, ctx)` and `restore_train_state(state, ctx, step_dir)` sit side by side with each stateful
part's pair (model, optimisers, EMA, carry, RNG, step and data position), so what is
saved and what is restored can be read together.

A checkpoint holds everything needed to continue a run exactly:

    model.safetensors     the TrainModule's state_dict (weights and persistent buffers)
    ema.safetensors       EMA weights, when `ema=True`
    optimizer.pt          optimiser states (tensors and numbers only: loaded with
                          `torch.load(weights_only=True)`, which executes no code)
    carry.safetensors     the step-to-step state of every batch slot, gathered over ranks
    rng.safetensors       every rank's torch RNG states
    train_state.json      step, data-stream position and counters, and the metrics of
                          the evaluation just before the save (`eval_metrics`)
    config.json           the resolved run configuration
    dataset.json, tokenizer/   copies from the dataset, so exports need nothing else
    manifest.json         file names, sizes and SHA-256 digests, written last

Files are written into a hidden temporary folder, flushed to disk, and the folder is
renamed to `step_<N>` only when complete; a crash mid-save leaves no `step_<N>` behind.
`manifest.json` catches a folder whose files were truncated afterwards (sizes, checked
whenever checkpoints are listed) or damaged in place (digests, checked on load).

`checkpoint_keep_last` / `checkpoint_keep_best` bound the disk a run takes:
`prune_checkpoints` deletes the others once a new checkpoint is written and verified.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.errors import UserError
from core.files import atomic_folder, read_once, write_json
from training import distributed
from training.config import CheckpointSettings
from training.ema import EMA
from training.state import RunContext, TrainState

STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class Checkpoint:
    """Everything a checkpoint holds, in memory."""

    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizers: dict[str, Any]
    carry: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]
    train_state: dict[str, Any]
    config: dict[str, Any]


def write_checkpoint(run_dir: Path, checkpoint: Checkpoint, extra_paths: list[Path] = ()) -> Path:
    """Write `checkpoint` to `run_dir/step_<N>` atomically and return that step folder.

    On a full disk the partial folder is removed, earlier checkpoints stay, and a
    `UserError` says how to resume.
    """
    step = int(checkpoint.train_state["step"])
    final = run_dir / f"step_{step}"
    run_dir.mkdir(parents=True, exist_ok=True)
    # Left by a run that was killed mid-save or mid-replace; never picked up, so drop them.
    for stale in [*run_dir.glob(".step_*.partial-*"), *run_dir.glob(".step_*.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    try:
        with atomic_folder(final, overwrite=True, tag="partial", durable=True) as partial:
            _write_files(partial, checkpoint, extra_paths)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        previous = find_latest(run_dir)
        hint = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise UserError(f"disk full while saving checkpoint step_{step} in {run_dir}; {hint}; free space and resume") from None
    return final


def _write_files(folder: Path, checkpoint: Checkpoint, extra_paths: list[Path]) -> None:
    save_file(_contiguous(checkpoint.model), folder / "model.safetensors")
    if checkpoint.ema is not None:
        save_file(_contiguous(checkpoint.ema), folder / "ema.safetensors")
    torch.save(checkpoint.optimizers, folder / "optimizer.pt")
    save_file(_contiguous(checkpoint.carry), folder / "carry.safetensors")
    save_file(_contiguous(checkpoint.rng), folder / "rng.safetensors")
    write_json(folder / "train_state.json", checkpoint.train_state)
    write_json(folder / "config.json", checkpoint.config)
    for source in extra_paths:
        if source.is_dir():
            shutil.copytree(source, folder / source.name)
        elif source.is_file():  # the bytes the run read at start-up, not a second read
            (folder / source.name).write_bytes(read_once(source))
    manifest = {
        str(path.relative_to(folder)): {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(folder.rglob("*")) if path.is_file()
    }
    write_json(folder / "manifest.json", manifest)


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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


def read_checkpoint(folder: Path) -> Checkpoint:
    """Read a step folder written by `write_checkpoint`; a damaged one raises `UserError`."""
    if not is_complete(folder):
        raise UserError(f"checkpoint {folder} is incomplete or corrupted; resume from an earlier one")
    damaged = damaged_file(folder)
    if damaged is not None:
        raise UserError(f"checkpoint {folder} cannot be read: {damaged} does not match its checksum (corrupted); "
                        "resume from an earlier one")
    try:
        ema_path = folder / "ema.safetensors"
        return Checkpoint(
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


# ------------------------------------------------------------- a run's state in and out


def save_train_state(state: TrainState, ctx: RunContext, eval_metrics: dict[str, float] | None = None) -> Path | None:
    """Write the current step's checkpoint into the run folder, with the metrics of the
    evaluation just before it, then delete the ones `checkpoint_keep_last` lets go (a
    collective; rank 0 writes and gets the step folder, the other ranks None)."""
    carry = gather_carry(state.carry)
    rng = rng_states(ctx)
    step_dir = None
    if ctx.dist.is_main:
        checkpoint = Checkpoint(
            model=state.model.state_dict(), ema=state.ema.state_dict() if state.ema else None,
            optimizers=optimizer_states(state), carry=carry, rng=rng, config=ctx.resolved_config(),
            train_state={**train_counters(state, ctx), "eval_metrics": eval_metrics or {}},
        )
        step_dir = write_checkpoint(ctx.run_dir, checkpoint, _dataset_files(ctx.config.data_paths[0]))
    distributed.barrier()
    retention = ctx.config.checkpointing
    check_best_metric(retention, eval_metrics, ctx.run_dir)  # every rank has the same metrics: all stop alike
    if step_dir is not None:
        prune_checkpoints(ctx.run_dir, step_dir, retention)
    return step_dir


def restore_train_state(state: TrainState, ctx: RunContext, step_dir: Path) -> None:
    """Load a step folder into `state`: weights, optimiser, EMA, carry, data position, RNG."""
    checkpoint = read_checkpoint(step_dir)
    saved_arch = checkpoint.train_state.get("arch")
    if saved_arch != ctx.arch_config.name:
        raise UserError(f"checkpoint {step_dir} was written by arch={saved_arch}, not arch={ctx.arch_config.name}; "
                        f"use arch={saved_arch} or another checkpoint")
    load_model_state(state, ctx, checkpoint.model, step_dir)
    load_optimizer_states(state, checkpoint.optimizers)
    load_ema_state(state, ctx, checkpoint.ema)
    if not ctx.config.eval_only:  # evaluation needs neither the carry nor the training data's position
        load_carry(state, ctx, checkpoint.carry)
    load_train_counters(state, checkpoint.train_state, with_stream=not ctx.config.eval_only)
    load_rng_states(ctx, checkpoint.rng)


# ------------------------------------------------------------- which checkpoints stay


def prune_checkpoints(run_dir: Path, newest: Path, retention: CheckpointSettings) -> list[Path]:
    """Delete the complete checkpoints of `run_dir` that are neither among the newest
    `retention.keep_last`, nor `newest`, nor the best by `retention.keep_best`; return them.

    Runs only after `newest` is written and its digests verified, so a save killed midway
    (it never becomes a `step_<N>` folder) or a damaged one leaves every older checkpoint
    in place; `find_latest` (what `resume=auto` and `+load_checkpoint=RUN` pick) is among
    the newest, so it is never deleted. A folder is first renamed to a hidden
    `.step_<N>.old-*` (one atomic step), then removed; `write_checkpoint` clears leftovers.
    """
    if retention.keep_last is None:
        return []
    if not is_complete(newest) or damaged_file(newest) is not None:
        print(f"warning: the new checkpoint {newest} does not match its manifest; no older checkpoint is deleted",
              flush=True)
        return []
    checkpoints = list_checkpoints(run_dir)
    keep = {newest, *checkpoints[-retention.keep_last:]}
    if retention.keep_best:
        best = best_checkpoint(checkpoints, retention.keep_best, retention.best_mode)
        keep |= {best[0]} if best else set()
    removed = [path for path in checkpoints if path not in keep]
    for path in removed:
        trash = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    return removed


def best_checkpoint(checkpoints: list[Path], metric: str, mode: str) -> tuple[Path, float] | None:
    """The checkpoint (and its value) with the lowest (`mode="min"`) or highest `metric` among
    those whose evaluation logged it (`train_state.json`'s `eval_metrics`), the oldest on a tie."""
    scored = []
    for path in checkpoints:
        saved = json.loads((path / "train_state.json").read_text(encoding="utf-8")).get("eval_metrics") or {}
        value = saved.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            scored.append((path, float(value)))
    if not scored:
        return None
    pick = min if mode == "min" else max
    return pick(scored, key=lambda item: item[1])


def check_best_metric(retention: CheckpointSettings, eval_metrics: dict[str, float] | None, run_dir: Path) -> None:
    """Refuse a `checkpoint_keep_best` that the run's evaluation does not log (after the save,
    so the step is kept)."""
    if not retention.keep_best or not eval_metrics or retention.keep_best in eval_metrics:
        return
    close = difflib.get_close_matches(retention.keep_best, list(eval_metrics), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UserError(f"checkpoint_keep_best={retention.keep_best} is not an eval metric of this run ({hint}it logs "
                    f"{', '.join(sorted(eval_metrics))}); this step is saved: resume with +load_checkpoint={run_dir} "
                    "and the right name")


def _dataset_files(data_path: str) -> list[Path]:
    """Dataset files a checkpoint keeps a copy of (metadata and tokenizer), when present."""
    root = Path(data_path)
    return [path for path in (root / "dataset.json", root / "tokenizer") if path.exists()]


def load_model_state(state: TrainState, ctx: RunContext, tensors: dict[str, torch.Tensor], step_dir: Path) -> None:
    """The weights and persistent buffers (saved as `state.model.state_dict()`)."""
    try:
        state.model.load_state_dict({name: tensor.to(ctx.dist.device) for name, tensor in tensors.items()})
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()
        raise UserError(f"checkpoint {step_dir} does not fit this model ({first}); "
                        "use the arch.* settings of the run that wrote it") from None


def optimizer_states(state: TrainState) -> dict[str, Any]:
    """The weights optimiser's state (the sparse sign-SGD is stateless)."""
    return {"weights": state.optimizer.state_dict()} if state.optimizer is not None else {}


def load_optimizer_states(state: TrainState, saved: dict[str, Any]) -> None:
    """Counterpart of `optimizer_states`."""
    if state.optimizer is not None and "weights" in saved:
        state.optimizer.load_state_dict(saved["weights"])


def load_ema_state(state: TrainState, ctx: RunContext, saved: dict[str, torch.Tensor] | None) -> None:
    """The EMA weights (saved as `state.ema.state_dict()`); a run that turns EMA on starts it here."""
    if state.ema is None:
        return
    if saved is None:
        state.ema = EMA(state.model, ctx.config.ema_rate)
    else:
        state.ema.load_state_dict({name: tensor.to(ctx.dist.device) for name, tensor in saved.items()})


def gather_carry(carry: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Every rank's carry concatenated along the batch (a collective)."""
    if not carry:
        return {}
    gathered = {}
    for name in sorted(carry):
        tensor = carry[name]
        as_bytes = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor
        full = distributed.all_gather_batch_first(as_bytes)
        gathered[name] = full.to(torch.bool) if tensor.dtype == torch.bool else full
    return gathered


def load_carry(state: TrainState, ctx: RunContext, saved: dict[str, torch.Tensor]) -> None:
    """This rank's part of a saved global carry, unless the global batch size changed."""
    if not saved:
        return
    saved_batch = next(iter(saved.values())).shape[0]
    if saved_batch != ctx.layout.global_batch_size:
        if ctx.dist.is_main:
            print(f"note: global_batch_size changed ({saved_batch} -> {ctx.layout.global_batch_size}); "
                  "every slot starts a fresh example")
        return
    start, stop = ctx.layout.rows
    state.carry = {name: tensor[start:stop].to(ctx.dist.device) for name, tensor in saved.items()}


def train_counters(state: TrainState, ctx: RunContext) -> dict[str, Any]:
    """Step, data position and counters (`train_state.json`)."""
    return {
        "step": state.step, "total_steps": state.total_steps, "stream": state.stream_state,
        "nonfinite_total": state.nonfinite_total, "tokens_seen": state.tokens_seen, "world_size": ctx.dist.world_size,
        "time": time.time(), "arch": ctx.arch_config.name,
    }


def load_train_counters(state: TrainState, saved: dict[str, Any], with_stream: bool = True) -> None:
    """Counterpart of `train_counters`: the stream continues after the last trained batch."""
    if with_stream:
        state.stream.load_state_dict(saved["stream"])
        state.stream_state = state.stream.state_dict()
    state.step = int(saved["step"])
    state.nonfinite_total = int(saved.get("nonfinite_total", 0))
    state.tokens_seen = int(saved.get("tokens_seen", 0))


def rng_states(ctx: RunContext) -> dict[str, torch.Tensor]:
    """Every rank's torch RNG states, keyed `rank<r>.cpu` / `rank<r>.cuda` (a collective)."""
    local = {"cpu": torch.get_rng_state()}
    if ctx.dist.device.type == "cuda":
        local["cuda"] = torch.cuda.get_rng_state(ctx.dist.device)
    everyone = distributed.all_gather_objects(local)
    return {f"rank{rank}.{kind}": tensor for rank, states in enumerate(everyone) for kind, tensor in states.items()}


def load_rng_states(ctx: RunContext, saved: dict[str, torch.Tensor]) -> None:
    """Set this rank's RNG states from a checkpoint (missing ranks keep their seeds)."""
    prefix = f"rank{ctx.dist.rank}."
    if prefix + "cpu" in saved:
        torch.set_rng_state(saved[prefix + "cpu"])
    if ctx.dist.device.type == "cuda" and prefix + "cuda" in saved:
        torch.cuda.set_rng_state(saved[prefix + "cuda"], ctx.dist.device)
