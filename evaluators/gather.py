"""Helpers the evaluators share: gathering objects and per-row records over ranks, and
writing prediction files atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist

from core.files import write_text


def gather_objects(value: Any, world_size: int) -> list[Any]:
    """Every rank's picklable `value`, in rank order (`[value]` outside a process group;
    all ranks must call it when distributed)."""
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        parts: list[Any] = [None] * world_size
        dist.all_gather_object(parts, value)
        return parts
    return [value]


def gather_records(records: dict[str, dict[int, Any]], world_size: int) -> dict[str, dict[int, Any]]:
    """Every rank's `{set: {row: record}}` merged (all ranks must call it when distributed).

    Rows are disjoint across ranks (each rank holds its slice of each global batch), so
    merging is a union; the result does not depend on the number of processes.
    """
    merged: dict[str, dict[int, Any]] = {}
    for part in gather_objects(records, world_size):
        for set_name, rows in part.items():
            merged.setdefault(set_name, {}).update(rows)
    return merged


def write_predictions(run_dir: Path, name: str, text: str) -> Path:
    """Write `<run_dir>/predictions/<name>` atomically; returns its path."""
    path = Path(run_dir) / "predictions" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text)
    return path
