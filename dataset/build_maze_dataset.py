"""Build a maze dataset for TRM from Maze-Hard CSV files or from generated mazes.

The TRM recipe (1000 train mazes, no augmentation unless --aug):

    python dataset/build_maze_dataset.py --source-dir data/raw/maze-30x30-hard-1k

Offline, without the Hugging Face files:

    python dataset/build_maze_dataset.py --generate 1000 --test-size 1000 --aug

Generated mazes are trees carved depth-first (see dataset/maze.py), so the start-goal
path is unique; the goal is a random cell at least --min-path-length steps from the
start (default 110 for 30x30 as in Maze-Hard, scaled with the area for other sizes:
round(110 * size**2 / 900)). With the defaults, 200 mazes of seed 0 had paths of
110..160 steps, median 114. Every label is checked by breadth-first search.

Tokens: `# SGo` (wall, open, start, goal, path) -> 1..5, 0 pad; vocab 6; seq_len size**2.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from dataset import maze  # noqa: E402
from dataset.common import UserError, atomic_output_dir, run_cli, write_json, write_puzzle_split  # noqa: E402
from dataset.puzzle_dataset import (  # noqa: E402
    generate_parallel,
    load_csv_or_generated_splits,
    read_puzzle_csv,
    single_example_split,
)

VOCAB_SIZE = len(maze.CHARSET) + 1
NUM_DIHEDRAL = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (TRM's builder flags plus offline generation)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source-dir", help="folder with Maze-Hard train.csv and test.csv")
    parser.add_argument("--output-dir", default="data/maze-30x30-hard-1k", help="dataset folder to write")
    parser.add_argument("--subsample-size", type=int, help="keep this many random train mazes")
    parser.add_argument("--aug", action="store_true", help="add the 8 dihedral transforms of each train maze")
    parser.add_argument("--generate", type=int, help="generate this many train mazes instead of reading CSVs")
    parser.add_argument("--test-size", type=int, help="test mazes (generated: default 1000; CSV: subsample)")
    parser.add_argument("--size", type=int, default=30, help="side of the square maze")
    parser.add_argument(
        "--min-path-length", type=int, help="generated mazes: fewest steps from S to G (default 110 * size**2 / 900)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of subsampling and generation")
    parser.add_argument("--num-workers", type=int, default=os.cpu_count() or 1, help="generation processes")
    parser.add_argument("--strict", action="store_true", help="fail on a malformed CSV row instead of skipping it")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse contradictory or out-of-range flags with a one-line fix."""
    if (args.source_dir is None) == (args.generate is None):
        raise UserError("give exactly one of --source-dir DIR (CSV files) or --generate N (offline mazes)")
    if args.source_dir is not None and not Path(args.source_dir).is_dir():
        raise UserError(f"--source-dir {args.source_dir} is not a folder; point it at the folder with train.csv")
    for flag in ("subsample_size", "generate", "test_size", "min_path_length"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.size < 4:
        raise UserError(f"--size must be at least 4, got {args.size}")
    if args.generate is None and args.min_path_length is not None:
        raise UserError("--min-path-length applies to --generate only; CSV mazes are kept as they are")
    num_inside = (args.size - 2) ** 2
    if args.min_path_length is not None and args.min_path_length >= num_inside:
        raise UserError(
            f"--min-path-length {args.min_path_length} cannot fit in the {num_inside} cells inside the border; "
            "lower --min-path-length"
        )


def maze_row_problem(size: int):
    """A checker of one CSV row's strings for `size` x `size` mazes."""

    def problem(question: str, answer: str) -> str | None:
        if len(question) != size * size or len(answer) != size * size:
            return f"question and answer must have {size * size} characters, found {len(question)} and {len(answer)}"
        if not set(question) <= set("# SG") or not set(answer) <= set(maze.CHARSET):
            return "question may only hold '# SG', answer '# SGo'"
        if question.count("S") != 1 or question.count("G") != 1:
            return "question must hold exactly one S and one G"
        if any(q != a and not (q == " " and a == "o") for q, a in zip(question, answer)):
            return "answer may only differ from the question by open cells marked 'o'"
        return None

    return problem


def grids_of(strings: list[str], size: int) -> np.ndarray:
    """[n, size, size] character grids of maze strings."""
    return np.array([list(text) for text in strings], dtype="<U1").reshape(len(strings), size, size)


def read_split_csv(args: argparse.Namespace, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Valid (questions, labels) grids of `<source-dir>/<split>.csv`."""
    path = Path(args.source_dir) / f"{split}.csv"
    rows = read_puzzle_csv(path, maze_row_problem(args.size), args.strict)
    if rows.num_skipped:
        print(f"{path}: skipped {rows.num_skipped} malformed rows (use --strict to fail instead)", file=sys.stderr)
    return grids_of(rows.questions, args.size), grids_of(rows.answers, args.size)


def generated_split(args: argparse.Namespace, count: int, key: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """`count` generated (questions, labels), [count, size, size] character grids each."""
    min_path_length = args.min_path_length or maze.default_min_path_length(args.size)
    make_one = functools.partial(
        maze.generate_maze_at, keys=(args.seed, key), size=args.size, min_path_length=min_path_length
    )
    try:
        pairs = generate_parallel(make_one, count, args.num_workers, f"generating {name} mazes")
    except ValueError as error:
        raise UserError(str(error)) from None
    return np.stack([pair[0] for pair in pairs]), np.stack([pair[1] for pair in pairs])


def with_dihedral(questions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each maze followed by its 7 other rotations/reflections: [8 n, size, size] each."""
    transforms = [
        np.stack([np.stack([maze.dihedral(grid, index) for index in range(NUM_DIHEDRAL)]) for grid in grids])
        for grids in (questions, labels)
    ]  # each (n, 8, size, size)
    return tuple(grids.reshape(-1, *grids.shape[2:]) for grids in transforms)


def main(argv: list[str] | None = None) -> None:
    """Build the dataset folder described by the flags."""
    args = parse_args(argv)
    check_args(args)
    if Path(args.output_dir).exists() and not args.overwrite:
        # Checked before the slow part too; atomic_output_dir checks again when writing.
        raise UserError(f"output folder {args.output_dir} already exists; choose another --output-dir or pass --overwrite")
    grids = load_csv_or_generated_splits(args, generated_split, read_split_csv)
    with atomic_output_dir(args.output_dir, overwrite=args.overwrite) as output:
        for split, (questions, labels) in grids.items():
            if len(questions) == 0:
                raise UserError(f"no {split} mazes in the input; check the CSV files")
            augment = args.aug and split == "train"
            if augment:
                questions, labels = with_dihedral(questions, labels)
            puzzles_per_group = NUM_DIHEDRAL if augment else 1
            metadata, arrays = single_example_split(
                maze.encode(questions), maze.encode(labels), puzzles_per_group, VOCAB_SIZE
            )
            write_puzzle_split(output / split, metadata, arrays)
            print(f"{split}: {metadata.total_groups} mazes, {metadata.total_puzzles} with augmentations")
        write_json(output / "identifiers.json", ["<blank>"])


if __name__ == "__main__":
    run_cli(main)
