"""Build a Sudoku dataset for TRM from Sudoku-Extreme CSV files or from generated puzzles.

The TRM recipe (1000 base puzzles, 1000 augmented copies each):

    python dataset/build_sudoku_dataset.py --source-dir data/raw/sudoku-extreme \\
        --output-dir data/sudoku-extreme-1k-aug-1000 --subsample-size 1000 --num-aug 1000

Offline, without the Hugging Face files (2000 train + 200 test puzzles):

    python dataset/build_sudoku_dataset.py --generate 2000 --test-size 200 --num-aug 1000 \\
        --output-dir data/sudoku-gen-2k-aug-1000

Generated puzzles have exactly one solution (checked by counting solutions up to 2).
Their difficulty is set by the number of givens: each puzzle aims at a target drawn
uniformly in [--min-givens, --max-givens], but blanking clues of a random grid in random
order stops at a minimal puzzle of about 21-28 givens, so targets below that give
puzzles at their minimum. With the defaults (17..30), the 2000 train puzzles of seed 0
had 21..30 givens, mean 25.8 (21: 2, 22: 26, 23: 175, 24: 405, 25: 495, 26: 294,
27: 180, 28: 153, 29: 129, 30: 141); they took 43 s of CPU time (about 22 s on 2 cores).
That is easier than Sudoku-Extreme, whose puzzles are selected by a solver's backtracks.

Tokens: 0 pad, 1 blank, 2..10 digits 1..9; labels are the solution tokens. Augmentation
(train only): digit relabelling, transposition, band/row and stack/column shuffles.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np

from core.errors import UserError, run_cli
from dataset.puzzles import sudoku
from dataset.puzzles.builder import SingleExampleBuilder, generate_pairs, read_puzzle_csv
from dataset.stream import seeded_rng

VOCAB_SIZE = 11
QUESTION_CHARS = frozenset(".0123456789")
ANSWER_CHARS = frozenset("123456789")
# Second key of seeded_rng(seed, key, ...) for augmentation; the split keys (1, 2, 10, 11)
# are in dataset.puzzles.builder, so no two random decisions share draws.
AUGMENT_KEY = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of this builder beside the common ones (`dataset.puzzles.builder`)."""
    parser.add_argument("--min-difficulty", type=int, help="keep CSV puzzles with rating >= this")
    parser.add_argument("--num-aug", type=int, default=0, help="augmented copies per train puzzle")
    parser.add_argument("--min-givens", type=int, default=17, help="generated puzzles: fewest givens aimed at")
    parser.add_argument("--max-givens", type=int, default=30, help="generated puzzles: most givens allowed")


def check_args(args: argparse.Namespace) -> None:
    """Refuse contradictory or out-of-range flags of this builder with a one-line fix."""
    if args.num_aug < 0:
        raise UserError(f"--num-aug must be >= 0, got {args.num_aug}")
    if args.generate is not None:
        if args.min_difficulty is not None:
            raise UserError("--min-difficulty filters CSV ratings; with --generate set --min-givens/--max-givens")
        if args.subsample_size is not None and args.subsample_size > args.generate:
            raise UserError(f"--subsample-size {args.subsample_size} exceeds --generate {args.generate}; lower it")
        if not 17 <= args.min_givens <= args.max_givens <= 81:
            raise UserError("need 17 <= --min-givens <= --max-givens <= 81 (no Sudoku with under 17 givens is unique)")


def sudoku_row_problem(question: str, answer: str) -> str | None:
    """What is wrong with one CSV row's strings, or None (grid consistency is checked later)."""
    if len(question) != 81 or len(answer) != 81:
        return f"question and answer must have 81 characters, found {len(question)} and {len(answer)}"
    if not set(question) <= QUESTION_CHARS:
        return "question may only hold digits and '.'"
    if not set(answer) <= ANSWER_CHARS:
        return "answer may only hold digits 1-9"
    return None


def digits_of(strings: list[str]) -> np.ndarray:
    """uint8 [n, 81] digits (0 blank) of 81-character Sudoku strings."""
    text = "".join(strings).replace(".", "0").encode("ascii")
    return (np.frombuffer(text, dtype=np.uint8) - ord("0")).reshape(len(strings), 81)


def read_split_csv(args: argparse.Namespace, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Valid (puzzles, solutions) digit arrays of `<source-dir>/<split>.csv`, rating-filtered."""
    path = Path(args.source_dir) / f"{split}.csv"
    rows = read_puzzle_csv(path, sudoku_row_problem, args.strict)
    puzzles, solutions = digits_of(rows.questions), digits_of(rows.answers)
    agrees = ((puzzles == 0) | (puzzles == solutions)).all(axis=1)
    valid = agrees & sudoku.is_valid_solution(solutions)
    rows = rows.keep(valid, "answer is not a valid grid completing the question", path, args.strict)
    rows.report_skipped(path)
    puzzles, solutions = digits_of(rows.questions), digits_of(rows.answers)
    if args.min_difficulty is None:
        return puzzles, solutions
    harder = np.asarray(rows.ratings) >= args.min_difficulty
    return puzzles[harder], solutions[harder]


def generated_split(args: argparse.Namespace, count: int, key: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """`count` generated (puzzles, solutions), uint8 [count, 81] each."""
    make_one = functools.partial(
        sudoku.generate_puzzle_at, keys=(args.seed, key), min_givens=args.min_givens, max_givens=args.max_givens
    )
    return generate_pairs(make_one, count, args.num_workers, f"generating {name} puzzles")


def with_augmentations(puzzles: np.ndarray, solutions: np.ndarray, num_aug: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each puzzle followed by its `num_aug` copies, [n * (1 + num_aug), 81] each."""
    if num_aug == 0:
        return puzzles, solutions
    inputs, labels = [], []
    for index, (puzzle, solution) in enumerate(zip(puzzles, solutions)):
        copies = sudoku.augment_boards(puzzle, solution, num_aug, seeded_rng(seed, AUGMENT_KEY, index))
        inputs.append(np.concatenate([puzzle[None], copies[0]]))
        labels.append(np.concatenate([solution[None], copies[1]]))
    return np.concatenate(inputs), np.concatenate(labels)


def encode_split(args: argparse.Namespace, split: str, puzzles: np.ndarray, solutions: np.ndarray):
    """Tokens of a split, train puzzles followed by their `--num-aug` copies."""
    num_aug = args.num_aug if split == "train" else 0
    inputs, labels = with_augmentations(puzzles, solutions, num_aug, args.seed)
    # Digits 0..9 become tokens 1..10, so 0 stays free for padding.
    return inputs.astype(np.int32) + 1, labels.astype(np.int32) + 1, 1 + num_aug


BUILDER = SingleExampleBuilder(
    noun="puzzles", description=__doc__.split("\n")[0], default_output="data/sudoku-extreme-full", vocab_size=VOCAB_SIZE,
    add_arguments=add_arguments, check_args=check_args, read_split_csv=read_split_csv,
    generated_split=generated_split, encode_split=encode_split,
)
main = BUILDER.main


if __name__ == "__main__":
    run_cli(main)
