"""On-disk formats shared by the dataset builders and the loaders.

Puzzle datasets (TRM: Sudoku, Maze, ARC) use the layout of the public TRM code, so that
folders built by its builders load unchanged:

    <root>/identifiers.json                 identifier id -> puzzle name
    <root>/test_puzzles.json                (ARC only) original test puzzles
    <root>/<split>/dataset.json             `PuzzleDatasetMetadata`
    <root>/<split>/<set>__inputs.npy        int [num_examples, seq_len]
    <root>/<split>/<set>__labels.npy        int [num_examples, seq_len]
    <root>/<split>/<set>__puzzle_identifiers.npy   int [num_puzzles]
    <root>/<split>/<set>__puzzle_indices.npy       int [num_puzzles + 1], puzzle -> examples
    <root>/<split>/<set>__group_indices.npy        int [num_groups + 1], group -> puzzles

A group is one original puzzle; each augmented copy of it is a puzzle of that group.
Builders write into a temporary folder and rename it at the end (`atomic_output_dir`),
so an interrupted build never leaves a folder that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

IGNORE_LABEL_ID = -100
"""Label value that the losses skip (PyTorch's cross-entropy convention)."""

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


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit status 2, no traceback."""


def run_cli(main) -> None:
    """Run `main()`; turn `UserError` into one line on stderr and exit status 2."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted: nothing was written to the output folder", file=sys.stderr)
        raise SystemExit(130) from None


@contextlib.contextmanager
def atomic_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `output_dir`; rename it to `output_dir` on success.

    Refuses an existing `output_dir` unless `overwrite`, in which case the old folder is
    replaced only after the new one is complete. On any error the temporary folder is
    removed and `output_dir` is left as it was.
    """
    final = Path(output_dir)
    if final.exists() and not overwrite:
        raise UserError(f"output folder {final} already exists; choose another --output-dir or pass --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    temporary.chmod(0o755)  # mkdtemp makes it private; a dataset folder is meant to be shared
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(trash)
        temporary.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        temporary.rename(final)


def write_json(path: str | os.PathLike, value) -> None:
    """Write `value` as indented JSON."""
    with open(path, "w", encoding="utf-8") as file:
        json.dump(value, file, indent=2)


def write_puzzle_split(
    split_dir: str | os.PathLike,
    metadata: PuzzleDatasetMetadata,
    arrays_by_set: dict[str, dict[str, np.ndarray]],
) -> None:
    """Write one split: `dataset.json` and the five arrays of each set."""
    split_dir = Path(split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    for set_name, arrays in arrays_by_set.items():
        missing = set(PUZZLE_ARRAY_FIELDS) - set(arrays)
        if missing:
            raise ValueError(f"set {set_name!r} lacks arrays {sorted(missing)}")
        for field_name in PUZZLE_ARRAY_FIELDS:
            np.save(split_dir / f"{set_name}__{field_name}.npy", np.asarray(arrays[field_name]))
    write_json(split_dir / "dataset.json", metadata.model_dump())


def read_puzzle_metadata(split_dir: str | os.PathLike) -> PuzzleDatasetMetadata:
    """Read and validate `<split_dir>/dataset.json`."""
    path = Path(split_dir) / "dataset.json"
    if not path.is_file():
        raise UserError(f"{path} not found: is {Path(split_dir).parent} a dataset built by dataset/build_*.py?")
    with open(path, encoding="utf-8") as file:
        return PuzzleDatasetMetadata.model_validate(json.load(file))
