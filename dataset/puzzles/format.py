"""The on-disk format of puzzle datasets (TRM: Sudoku, Maze, ARC), and its one writer.

The layout is that of the public TRM code, so that folders built by its builders load
unchanged:

    <root>/identifiers.json                 identifier id -> puzzle name
    <root>/test_puzzles.json                (ARC only) original test puzzles
    <root>/<split>/dataset.json             `PuzzleDatasetMetadata`
    <root>/<split>/<set>__inputs.npy        int [num_examples, seq_len]
    <root>/<split>/<set>__labels.npy        int [num_examples, seq_len]
    <root>/<split>/<set>__puzzle_identifiers.npy   int [num_puzzles]
    <root>/<split>/<set>__puzzle_indices.npy       int [num_puzzles + 1], puzzle -> examples
    <root>/<split>/<set>__group_indices.npy        int [num_groups + 1], group -> puzzles

A group is one original puzzle; each augmented copy of it is a puzzle of that group.
Builders write a split with `PuzzleSplitWriter` (whole groups at a time, so memory stays
bounded however many augmented copies there are), inside `core.files.atomic_folder`, so
an interrupted build never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from core.errors import UserError
from core.files import read_once, write_json

PUZZLE_ARRAY_FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")


class PuzzleDatasetMetadata(BaseModel):
    """`dataset.json` of one split of a puzzle dataset (field names as in TRM's code)."""

    model_config = ConfigDict(extra="ignore")

    pad_id: int
    """Input token used for padding (0 in every TRM dataset)."""
    ignore_label_id: int | None
    """Label value that means "no label" on disk; mapped to -100 when loading."""
    blank_identifier_id: int
    """Puzzle identifier used for padded rows (0)."""
    vocab_size: int
    """Number of input/output tokens, pad included."""
    seq_len: int
    """Tokens per example."""
    num_puzzle_identifiers: int
    """Size of the puzzle-embedding table (identifier 0 is the blank one)."""
    total_groups: int
    """Number of original puzzles in this split."""
    mean_puzzle_examples: float
    """Mean number of examples per puzzle (sets the number of steps per epoch)."""
    total_puzzles: int
    """Number of puzzles (augmented copies included) in this split."""
    sets: list[str]
    """Set names present in the split, normally `["all"]`."""


class NpyRowWriter:
    """Append rows to a `.npy` file of known final shape without holding it in memory."""

    def __init__(self, path: Path, num_rows: int, row_len: int, dtype=np.uint8):
        self.path, self.num_rows, self.row_len, self.dtype = path, int(num_rows), int(row_len), np.dtype(dtype)
        self.rows_written = 0
        self.file = open(path, "wb", buffering=1 << 22)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.num_rows, self.row_len)}
        np.lib.format.write_array_header_1_0(self.file, header)

    def write(self, rows: np.ndarray) -> None:
        """Append a (n, row_len) block."""
        if rows.shape[1:] != (self.row_len,) or self.rows_written + rows.shape[0] > self.num_rows:
            raise ValueError(f"{self.path.name}: block {rows.shape} does not fit ({self.rows_written}/{self.num_rows} rows written)")
        self.file.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows_written += rows.shape[0]

    def close(self) -> None:
        """Close the file; it must hold exactly the announced number of rows."""
        self.file.close()
        if self.rows_written != self.num_rows:
            raise RuntimeError(f"{self.path.name}: wrote {self.rows_written} rows, announced {self.num_rows}")


class PuzzleSplitWriter:
    """Writes one set of one split, whole groups at a time, then `dataset.json`.

    The sizes are announced up front so that inputs and labels stream straight into
    their `.npy` files; the small index arrays are kept in memory until `finish`.
    """

    def __init__(self, split_dir: Path, num_examples: int, num_puzzles: int, num_groups: int, seq_len: int,
                 dtype=np.uint8, set_name: str = "all"):
        split_dir.mkdir(parents=True, exist_ok=True)
        self.split_dir, self.set_name, self.seq_len = split_dir, set_name, seq_len
        self.inputs = NpyRowWriter(split_dir / f"{set_name}__inputs.npy", num_examples, seq_len, dtype)
        self.labels = NpyRowWriter(split_dir / f"{set_name}__labels.npy", num_examples, seq_len, dtype)
        self.puzzle_identifiers = np.zeros(num_puzzles, dtype=np.int32)
        self.puzzle_indices = np.zeros(num_puzzles + 1, dtype=np.int64)
        self.group_indices = np.zeros(num_groups + 1, dtype=np.int64)
        self.num_puzzles = self.num_groups = 0

    def add_groups(self, inputs: np.ndarray, labels: np.ndarray, identifiers: np.ndarray,
                   examples_per_puzzle: np.ndarray, puzzles_per_group: np.ndarray) -> None:
        """Append whole groups: examples (n, seq_len) in order; per puzzle its identifier and
        number of examples; per group its number of puzzles."""
        identifiers, examples_per_puzzle = np.asarray(identifiers), np.asarray(examples_per_puzzle)
        puzzles_per_group = np.asarray(puzzles_per_group)
        if examples_per_puzzle.sum() != len(inputs) or puzzles_per_group.sum() != len(identifiers):
            raise ValueError("examples_per_puzzle must add up to the examples, puzzles_per_group to the puzzles")
        self.inputs.write(inputs)
        self.labels.write(labels)
        p, g = self.num_puzzles, self.num_groups
        self.puzzle_identifiers[p : p + len(identifiers)] = identifiers
        self.puzzle_indices[p + 1 : p + 1 + len(identifiers)] = self.puzzle_indices[p] + np.cumsum(examples_per_puzzle)
        self.group_indices[g + 1 : g + 1 + len(puzzles_per_group)] = p + np.cumsum(puzzles_per_group)
        self.num_puzzles += len(identifiers)
        self.num_groups += len(puzzles_per_group)

    def finish(self, pad_id: int, ignore_label_id: int | None, vocab_size: int, num_puzzle_identifiers: int,
               blank_identifier_id: int = 0) -> PuzzleDatasetMetadata:
        """Close the big arrays, save the index arrays and `dataset.json`; return the metadata."""
        self.inputs.close()
        self.labels.close()
        if self.num_puzzles != len(self.puzzle_identifiers) or self.num_groups != len(self.group_indices) - 1:
            raise RuntimeError(f"{self.split_dir.name}: puzzle or group count differs from the plan")
        for name in ("puzzle_identifiers", "puzzle_indices", "group_indices"):
            np.save(self.split_dir / f"{self.set_name}__{name}.npy", getattr(self, name))
        metadata = PuzzleDatasetMetadata(
            pad_id=pad_id,
            ignore_label_id=ignore_label_id,
            blank_identifier_id=blank_identifier_id,
            vocab_size=vocab_size,
            seq_len=self.seq_len,
            num_puzzle_identifiers=num_puzzle_identifiers,
            total_groups=self.num_groups,
            mean_puzzle_examples=self.inputs.num_rows / max(self.num_puzzles, 1),
            total_puzzles=self.num_puzzles,
            sets=[self.set_name],
        )
        write_json(self.split_dir / "dataset.json", metadata.model_dump())
        return metadata


def write_single_example_split(split_dir: Path, inputs: np.ndarray, labels: np.ndarray, puzzles_per_group: int,
                               vocab_size: int) -> PuzzleDatasetMetadata:
    """Write a split where each puzzle is one example and all identifiers are 0 (Sudoku, Maze).

    Rows are grouped in order: rows [g * puzzles_per_group, (g + 1) * puzzles_per_group)
    are the copies of original puzzle g. Token 0 is padding and never a label.
    """
    num_puzzles, seq_len = inputs.shape
    if num_puzzles % puzzles_per_group:
        raise ValueError("rows must come in whole groups")
    num_groups = num_puzzles // puzzles_per_group
    writer = PuzzleSplitWriter(split_dir, num_puzzles, num_puzzles, num_groups, seq_len, np.int32)
    writer.add_groups(inputs, labels, np.zeros(num_puzzles, dtype=np.int32), np.ones(num_puzzles, dtype=np.int64),
                      np.full(num_groups, puzzles_per_group, dtype=np.int64))
    return writer.finish(pad_id=0, ignore_label_id=0, vocab_size=vocab_size, num_puzzle_identifiers=1)


def read_puzzle_metadata(split_dir: str | os.PathLike) -> PuzzleDatasetMetadata:
    """Read and validate `<split_dir>/dataset.json`."""
    path = Path(split_dir) / "dataset.json"
    if not path.is_file():
        raise UserError(f"{path} not found: is {Path(split_dir).parent} a dataset built by dataset/build_*.py?")
    return PuzzleDatasetMetadata.model_validate(json.loads(read_once(path)))
