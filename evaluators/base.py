"""The contract between evaluators and the evaluation loop.

After the built-in metrics, the loop can run evaluators over the test split: it calls
`begin()`, then `update()` for every evaluation batch on every rank (with the outputs of
the final step, moved to CPU), then `finish()` on every rank. `finish` gathers what it
needs across ranks itself (through `torch.distributed` when initialised, so it works in a
single process too), writes its files into `run_dir` on rank 0, and returns its metrics
on rank 0 (None elsewhere). Metric names are logged as given (e.g. `ARC/pass@2`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch


class Evaluator(Protocol):
    """One evaluation procedure over the test split."""

    required_outputs: tuple[str, ...]
    """Keys of `StepOutput.outputs` that `update` reads."""

    def begin(self) -> None:
        """Forget everything from a previous round (unless configured to aggregate)."""

    def update(self, set_name: str, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        """Record one evaluation batch (this rank's slice; padded rows included)."""

    def finish(self, run_dir: Path | None, rank: int, world_size: int) -> dict[str, float] | None:
        """Gather across ranks, write files on rank 0, return metrics on rank 0."""
