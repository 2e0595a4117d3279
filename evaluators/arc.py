"""ARC evaluation by voting over augmented copies (TRM's procedure, `ARC/pass@K`).

Every test input is seen once per augmented copy. Each prediction is decoded (cropped to
the grid bounded by the end markers), brought back to the original orientation and
colours, and counts as one vote, weighted by nothing but carrying its halting probability.
The distinct predictions of a test input are ranked by number of votes, then by mean
halting probability; pass@K says whether the right grid is among the first K. Scores are
averaged over a puzzle's test inputs, then over all test puzzles (a puzzle without any
prediction scores 0). The first `submission_K` ranked grids go to `submission.json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from pydantic import Field, field_validator

from core.errors import UserError
from dataset.puzzles import arc
from evaluators.base import EvaluatorOptions
from evaluators.gather import gather_objects

FALLBACK_GRID = [[0]]
"""Submitted when a test input has fewer ranked predictions than attempts."""

VoteKey = tuple[str, int]
"""(original puzzle id, index of the test input in `test_puzzles.json`)."""
Votes = dict[VoteKey, dict[str, list]]
"""key -> grid hash -> [grid (uint8 array), vote count, sum of halting probabilities]."""


class ARCEvaluatorConfig(EvaluatorOptions):
    """Options of the `arc` evaluator (unknown keys are refused)."""

    aggregated_voting: bool = False
    """Keep votes across evaluation rounds (TRM's behaviour); by default each round starts empty."""
    pass_Ks: list[int] = Field(default_factory=lambda: [1, 2, 5, 10, 100, 1000])
    """The K of each reported `ARC/pass@K`."""
    submission_K: int = Field(default=2, ge=1)
    """Attempts per test input written to `submission.json` (Kaggle scores 2)."""

    @field_validator("pass_Ks")
    @classmethod
    def _positive_ks(cls, pass_ks: list[int]) -> list[int]:
        if not pass_ks or any(k < 1 for k in pass_ks):
            raise ValueError(f"pass_Ks must be a non-empty list of integers >= 1, got {pass_ks}")
        return pass_ks


def merge_votes(parts: list[Votes]) -> Votes:
    """Add up votes recorded separately (one dict per rank); inputs are not modified."""
    merged: Votes = {}
    for votes in parts:
        for key, predictions in votes.items():
            target = merged.setdefault(key, {})
            for digest, (grid, count, halt_sum) in predictions.items():
                if digest in target:
                    target[digest][1] += count
                    target[digest][2] += halt_sum
                else:
                    target[digest] = [grid, count, halt_sum]
    return merged


def rank_predictions(predictions: dict[str, list]) -> list[tuple[str, np.ndarray]]:
    """(hash, grid) by vote count, then mean halting probability, both descending.

    Full ties are ordered by hash so that the result does not depend on gathering order.
    """
    order = sorted(predictions.items(), key=lambda item: (-item[1][1], -item[1][2] / item[1][1], item[0]))
    return [(digest, grid) for digest, (grid, _, _) in order]


class ARCEvaluator:
    """Votes on decoded, de-augmented predictions; see the module docstring."""

    required_outputs = ("preds", "q_halt_logits", "puzzle_identifiers", "inputs")

    def __init__(self, data_path: str | os.PathLike, config: ARCEvaluatorConfig | None = None):
        self.config = config or ARCEvaluatorConfig()
        root = Path(data_path)
        for name in ("identifiers.json", "test_puzzles.json"):
            if not (root / name).is_file():
                raise UserError(f"{root / name} not found: the arc evaluator needs a dataset built by dataset/build_arc_dataset.py")
        with open(root / "identifiers.json", encoding="utf-8") as file:
            self.identifiers: list[str] = json.load(file)
        with open(root / "test_puzzles.json", encoding="utf-8") as file:
            self.test_puzzles: dict[str, dict] = json.load(file)
        # Per puzzle: hash of each test input -> the test indices with that input.
        self.input_indices: dict[str, dict[str, list[int]]] = {}
        self.output_hashes: dict[str, list[str | None]] = {}
        for puzzle_id, puzzle in self.test_puzzles.items():
            by_hash = self.input_indices.setdefault(puzzle_id, {})
            for index, pair in enumerate(puzzle["test"]):
                by_hash.setdefault(arc.grid_hash(arc.to_grid(pair["input"])), []).append(index)
            self.output_hashes[puzzle_id] = [
                None if pair.get("output") is None else arc.grid_hash(arc.to_grid(pair["output"])) for pair in puzzle["test"]
            ]
        self.votes: Votes = {}
        # Cache: identifier -> (puzzle id, transform id, inverse colour mapping).
        self.augmentations: dict[int, tuple[str, int, np.ndarray]] = {}

    def begin(self) -> None:
        """Start a round: forget earlier votes unless `aggregated_voting`."""
        if not self.config.aggregated_voting:
            self.votes = {}

    def update(self, set_name: str, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        """Record a vote for every non-padded row (all sets are voted on together).

        `inputs` and `puzzle_identifiers` are read from `outputs` when the model passes
        them through, from `batch` otherwise (both hold the same rows).
        """
        def column(key: str) -> np.ndarray:
            source = outputs if key in outputs else batch
            if key not in source:
                raise KeyError(f"the arc evaluator needs {key!r} in the step outputs or the batch")
            return source[key].detach().cpu().float().numpy() if key == "q_halt_logits" else source[key].detach().cpu().numpy()

        preds, inputs = column("preds"), column("inputs")  # (B, 900) each
        identifiers = column("puzzle_identifiers")  # (B,)
        halt_probs = 1.0 / (1.0 + np.exp(-column("q_halt_logits").reshape(-1)))  # (B,)
        rows = np.flatnonzero(identifiers != 0)
        input_shapes, pred_shapes = arc.crop_shapes(inputs[rows]), arc.crop_shapes(preds[rows])  # (R, 2) each
        for row, input_shape, pred_shape in zip(rows, input_shapes, pred_shapes):
            input_grid = arc.crop_grid(inputs[row], input_shape)
            pred_grid = arc.crop_grid(preds[row], pred_shape)
            self.record(int(identifiers[row]), input_grid, pred_grid, float(halt_probs[row]))

    def record(self, identifier: int, input_grid: np.ndarray, pred_grid: np.ndarray, halt_prob: float) -> None:
        """One vote: undo the augmentation of both grids and file the prediction under its test input."""
        if identifier not in self.augmentations:
            self.augmentations[identifier] = self.parse_identifier(identifier)
        puzzle_id, k, inverse_mapping = self.augmentations[identifier]
        input_grid = inverse_mapping[arc.inverse_dihedral_transform(input_grid, k)]
        indices = self.input_indices[puzzle_id].get(arc.grid_hash(input_grid))
        if indices is None:
            raise ValueError(f"an input of puzzle {puzzle_id} (identifier {identifier}) matches none of its test inputs")
        if pred_grid.size == 0:
            return  # no colour at the top-left: nothing to vote for
        grid = np.ascontiguousarray(inverse_mapping[arc.inverse_dihedral_transform(pred_grid, k)])
        digest = arc.grid_hash(grid)
        for index in indices:
            entry = self.votes.setdefault((puzzle_id, index), {}).setdefault(digest, [grid, 0, 0.0])
            entry[1] += 1
            entry[2] += halt_prob

    def parse_identifier(self, identifier: int) -> tuple[str, int, np.ndarray]:
        """(original puzzle id, transform id, inverse colour mapping) of an identifier."""
        if not 0 < identifier < len(self.identifiers):
            raise ValueError(f"puzzle identifier {identifier} is outside identifiers.json (size {len(self.identifiers)})")
        puzzle_id, k, mapping = arc.parse_augmented_name(self.identifiers[identifier])
        if puzzle_id not in self.test_puzzles:
            raise ValueError(f"puzzle {puzzle_id} (identifier {identifier}) is not in test_puzzles.json: is the data path right?")
        return puzzle_id, k, np.argsort(mapping).astype(np.uint8)

    def gather(self, world_size: int) -> Votes:
        """Every rank's votes added up (all ranks must call it when distributed)."""
        return merge_votes(gather_objects(self.votes, world_size))

    def finish(self, run_dir: Path | None, rank: int, world_size: int) -> dict[str, float] | None:
        """Gather votes, score pass@K, write `submission.json` on rank 0."""
        votes = self.gather(world_size)
        if rank != 0:
            return None
        ranked = {key: rank_predictions(predictions) for key, predictions in votes.items()}
        if run_dir is not None:
            self.write_submission(Path(run_dir), ranked)
        return self.pass_at_k(ranked)

    def pass_at_k(self, ranked: dict[VoteKey, list[tuple[str, np.ndarray]]]) -> dict[str, float]:
        """Mean over puzzles of the fraction of test inputs solved within K attempts."""
        totals = dict.fromkeys(self.config.pass_Ks, 0.0)
        for puzzle_id, output_hashes in self.output_hashes.items():
            for k in self.config.pass_Ks:
                solved = sum(
                    target is not None and any(digest == target for digest, _ in ranked.get((puzzle_id, index), [])[:k])
                    for index, target in enumerate(output_hashes)
                )
                totals[k] += solved / len(output_hashes)
        num_puzzles = max(len(self.output_hashes), 1)
        return {f"ARC/pass@{k}": total / num_puzzles for k, total in totals.items()}

    def write_submission(self, run_dir: Path, ranked: dict[VoteKey, list[tuple[str, np.ndarray]]]) -> None:
        """Kaggle format, every test puzzle and input present; written atomically."""
        submission = {}
        for puzzle_id, puzzle in self.test_puzzles.items():
            attempts = []
            for index in range(len(puzzle["test"])):
                grids = [grid.tolist() for _, grid in ranked.get((puzzle_id, index), [])[: self.config.submission_K]]
                grids += [FALLBACK_GRID] * (self.config.submission_K - len(grids))
                attempts.append({f"attempt_{n + 1}": grid for n, grid in enumerate(grids)})
            submission[puzzle_id] = attempts
        run_dir.mkdir(parents=True, exist_ok=True)
        temporary = run_dir / f".submission.json.tmp-{os.getpid()}"
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(submission, file)
        temporary.replace(run_dir / "submission.json")
