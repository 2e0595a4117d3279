"""The contract between evaluators and the evaluation loop, and the skeleton the
fine-tuning evaluators share.

After the built-in metrics, the loop can run evaluators over the test split: it calls
`begin()`, then `update()` for every evaluation batch on every rank (with the outputs of
the final step, moved to CPU), then `finish()` on every rank. `finish` gathers what it
needs across ranks itself (through `torch.distributed` when initialised, so it works in a
single process too), writes its files into `run_dir` on rank 0, and returns its metrics
on rank 0 (None elsewhere). Metric names are logged as given (e.g. `ARC/pass@2`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from dataset.tasks.format import load_task_metadata
from evaluators.gather import gather_records, write_predictions


class EvaluatorOptions(BaseModel):
    """Base of every evaluator's options: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


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


class FineTuningEvaluator:
    """The skeleton of the fine-tuning evaluators (classification, NER, SQuAD): a record of
    every real row on every rank, gathered and scored set by set on rank 0, each set's
    predictions written into the run folder.

    A subclass says what to keep of a row (`row_records`) and how to score one set's
    gathered records (`score_set`).
    """

    required_outputs: tuple[str, ...] = ()

    def __init__(self, data_path: str):
        self.root = Path(data_path)
        self.metadata = load_task_metadata([data_path])
        self.records: dict[str, dict[int, Any]] = {}
        """{set: {dataset row: record}} of this rank."""

    def begin(self) -> None:
        """Forget the previous round."""
        self.records = {}

    def update(self, set_name: str, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        """Record every real row of the batch (padding rows have `row_index` -1)."""
        row_index = batch["row_index"].numpy()  # (B,)
        positions = np.flatnonzero(row_index >= 0)
        rows = row_index[positions].tolist()
        records = self.row_records(set_name, rows, positions, batch, outputs)
        self.records.setdefault(set_name, {}).update(zip(rows, records))

    def finish(self, run_dir: Path | None, rank: int, world_size: int) -> dict[str, float] | None:
        """Gather, score each evaluation set, write its predictions on rank 0."""
        records = gather_records(self.records, world_size)
        if rank != 0:
            return None
        metrics = {}
        for set_name in self.metadata.eval_sets:
            scores, files = self.score_set(set_name, records.get(set_name, {}))
            metrics.update({f"{set_name}/{key}": value for key, value in scores.items()})
            if run_dir is not None:
                for name, text in files.items():
                    write_predictions(run_dir, name, text)
        return metrics

    def row_records(self, set_name: str, rows: list[int], positions: np.ndarray, batch: dict[str, torch.Tensor],
                    outputs: dict[str, torch.Tensor]) -> list[Any]:
        """What to keep of each real row: dataset rows `rows` stand at batch `positions`."""
        raise NotImplementedError

    def score_set(self, set_name: str, rows: dict[int, Any]) -> tuple[dict[str, float], dict[str, str]]:
        """(metrics, {prediction file under `predictions/`: its text}) of one set's gathered records."""
        raise NotImplementedError
