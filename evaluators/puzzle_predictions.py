"""Writes the model's answers to Sudoku and Maze test puzzles, for people to look at.

Opt-in (`evaluators="[{name: puzzle_predictions}]"`; `max_puzzles` sets how many): after
each evaluation, `predictions/<set>.json` in the run folder holds the first `max_puzzles`
test puzzles of each set with their input, true answer and predicted answer as token ids,
and the dataset's `vocab_size`; `python -m utils.render_predictions` turns it into text
grids with the wrong cells marked. It reports no metric (the loop's `exact_accuracy` is
the score).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from core.constants import IGNORE_LABEL_ID
from dataset.puzzles.format import PuzzleDatasetMetadata
from evaluators.base import EvaluatorOptions
from evaluators.gather import gather_records, write_predictions


class PuzzlePredictionsConfig(EvaluatorOptions):
    """Options of the `puzzle_predictions` evaluator (unknown keys are refused)."""

    max_puzzles: int = Field(default=100, ge=1)
    """Test puzzles written per set (the first ones, in the dataset's order)."""


class PuzzlePredictionsEvaluator:
    """Keeps (input, label, prediction) of the first test rows; writes them on rank 0."""

    required_outputs = ("preds",)

    def __init__(self, data_path: str, config: PuzzlePredictionsConfig | None = None):
        self.config = config or PuzzlePredictionsConfig()
        metadata_file = Path(data_path) / "test" / "dataset.json"
        self.vocab_size = PuzzleDatasetMetadata.model_validate_json(metadata_file.read_text(encoding="utf-8")).vocab_size
        self.records: dict[str, dict[tuple[int, int], tuple[list, list, list]]] = {}
        self.batches: dict[str, int] = {}
        self.local_size = 0

    def begin(self) -> None:
        """Forget the previous round."""
        self.records, self.batches = {}, {}

    def update(self, set_name: str, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        """Keep the real rows of this rank's slice while they can still be among the first `max_puzzles`."""
        index = self.batches.get(set_name, 0)
        self.batches[set_name] = index + 1
        inputs, labels, preds = batch["inputs"].numpy(), batch["labels"].numpy(), outputs["preds"].numpy()
        self.local_size = len(inputs)  # (b,) rows per rank, the same in every batch
        if index * len(inputs) >= self.config.max_puzzles:
            return  # every row of this batch comes after the first max_puzzles on any number of ranks
        target = self.records.setdefault(set_name, {})
        for position in np.flatnonzero((labels != IGNORE_LABEL_ID).any(axis=1)):
            target[(index, int(position))] = (inputs[position].tolist(), labels[position].tolist(),
                                              preds[position].tolist())

    def finish(self, run_dir: Path | None, rank: int, world_size: int) -> dict[str, float] | None:
        """Number the rows as the dataset does, gather them, write `predictions/<set>.json` on rank 0."""
        numbered = {set_name: {self._row(key, rank, world_size): record for key, record in rows.items()}
                    for set_name, rows in self.records.items()}
        merged = gather_records(numbered, world_size)
        if rank != 0:
            return None
        for set_name, rows in merged.items():
            first = sorted(row for row in rows if row < self.config.max_puzzles)
            puzzles = [{"row": row, "inputs": rows[row][0], "labels": rows[row][1], "preds": rows[row][2]}
                       for row in first]
            if run_dir is not None:
                write_predictions(run_dir, f"{set_name}.json",
                                  json.dumps({"vocab_size": self.vocab_size, "puzzles": puzzles}))
        return {}

    def _row(self, key: tuple[int, int], rank: int, world_size: int) -> int:
        """The dataset row of (batch index, position) on this rank: each global batch is the
        ranks' equal slices in rank order (`dataset.puzzles.loader`)."""
        batch_index, position = key
        return (batch_index * world_size + rank) * self.local_size + position
