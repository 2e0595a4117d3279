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
from pathlib import Path

import numpy as np

from core.errors import UserError, run_cli
from dataset.puzzles import maze
from dataset.puzzles.builder import SingleExampleBuilder, check_positive, generate_pairs, read_puzzle_csv

VOCAB_SIZE = len(maze.CHARSET) + 1
NUM_DIHEDRAL = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of this builder beside the common ones (`dataset.puzzles.builder`)."""
    parser.add_argument("--aug", action="store_true", help="add the 8 dihedral transforms of each train maze")
    parser.add_argument("--size", type=int, default=30, help="side of the square maze")
    parser.add_argument(
        "--min-path-length", type=int, help="generated mazes: fewest steps from S to G (default 110 * size**2 / 900)"
    )


def check_args(args: argparse.Namespace) -> None:
    """Refuse contradictory or out-of-range flags of this builder with a one-line fix."""
    check_positive(args, "min_path_length")
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
    rows.report_skipped(path)
    return grids_of(rows.questions, args.size), grids_of(rows.answers, args.size)


def generated_split(args: argparse.Namespace, count: int, key: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """`count` generated (questions, labels), [count, size, size] character grids each."""
    min_path_length = args.min_path_length or maze.default_min_path_length(args.size)
    make_one = functools.partial(
        maze.generate_maze_at, keys=(args.seed, key), size=args.size, min_path_length=min_path_length
    )
    return generate_pairs(make_one, count, args.num_workers, f"generating {name} mazes")


def with_dihedral(questions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each maze followed by its 7 other rotations/reflections: [8 n, size, size] each."""
    transforms = [
        np.stack([np.stack([maze.dihedral(grid, index) for index in range(NUM_DIHEDRAL)]) for grid in grids])
        for grids in (questions, labels)
    ]  # each (n, 8, size, size)
    return tuple(grids.reshape(-1, *grids.shape[2:]) for grids in transforms)


def encode_split(args: argparse.Namespace, split: str, questions: np.ndarray, labels: np.ndarray):
    """Tokens of a split; with --aug each train maze is followed by its 7 other transforms."""
    copies = NUM_DIHEDRAL if args.aug and split == "train" else 1
    if copies > 1:
        questions, labels = with_dihedral(questions, labels)
    return maze.encode(questions), maze.encode(labels), copies


BUILDER = SingleExampleBuilder(
    noun="mazes", description=__doc__.split("\n")[0], default_output="data/maze-30x30-hard-1k", vocab_size=VOCAB_SIZE,
    add_arguments=add_arguments, check_args=check_args, read_split_csv=read_split_csv,
    generated_split=generated_split, encode_split=encode_split,
)
main = BUILDER.main


if __name__ == "__main__":
    run_cli(main)
