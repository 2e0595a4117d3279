"""What the puzzle builders share: CSV reading, parallel generation, subsampling, and the
command-line skeleton of the single-example builders (Sudoku, Maze).

A single-example builder (`SingleExampleBuilder`) reads `train.csv`/`test.csv` from
`--source-dir` or generates puzzles offline (`--generate N`), picks random subsets
(`--subsample-size`, `--test-size`), augments the training split, and writes each puzzle
as one example with identifier 0. Only what differs (row checks, generator, encoding,
augmentation) is written in `dataset/build_<name>_dataset.py`.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.cli import argument_parser
from core.errors import UserError
from core.files import atomic_folder, write_json
from dataset.puzzles.format import write_single_example_split
from dataset.stream import seeded_rng

CSV_COLUMNS = ("source", "question", "answer", "rating")


@dataclass
class CsvPuzzles:
    """Valid rows of a `source,question,answer,rating` CSV file."""

    questions: list[str]
    answers: list[str]
    ratings: list[float]
    line_numbers: list[int]
    """Line of each kept row in the file (for error messages)."""
    num_skipped: int
    """Malformed rows left out."""

    def report_skipped(self, path: Path) -> None:
        """Say on stderr how many malformed rows of `path` were left out, if any."""
        if self.num_skipped:
            print(f"{path}: skipped {self.num_skipped} malformed rows (use --strict to fail instead)", file=sys.stderr)

    def keep(self, mask: np.ndarray, problem: str, path: Path, strict: bool) -> CsvPuzzles:
        """The rows where `mask` is true; the others are skipped, or fail with `strict`."""
        bad = np.flatnonzero(~mask)
        if len(bad) and strict:
            raise UserError(f"{path} line {self.line_numbers[bad[0]]}: {problem} (drop --strict to skip such rows)")
        kept = np.flatnonzero(mask).tolist()
        return CsvPuzzles(
            questions=[self.questions[index] for index in kept],
            answers=[self.answers[index] for index in kept],
            ratings=[self.ratings[index] for index in kept],
            line_numbers=[self.line_numbers[index] for index in kept],
            num_skipped=self.num_skipped + len(bad),
        )


def read_puzzle_csv(path: Path, row_problem: Callable[[str, str], str | None], strict: bool) -> CsvPuzzles:
    """Read a Sudoku-Extreme / Maze-Hard style CSV, checking each row with `row_problem`.

    `row_problem(question, answer)` returns what is wrong with a row, or None. Malformed
    rows (a bad rating included) are skipped and counted, or with `strict` raise a
    `UserError` naming the file and line.
    """
    if not path.is_file():
        raise UserError(f"{path} not found; --source-dir must hold train.csv and test.csv")
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        try:
            return _read_csv_rows(path, reader, row_problem, strict)
        except UnicodeDecodeError as error:
            raise UserError(f"{path} is not UTF-8 text ({error.reason}); is it a binary file? "
                            "convert text with iconv -t utf-8") from None
        except csv.Error as error:  # e.g. a field over the csv module's size limit: not a puzzle file
            raise UserError(f"{path} line {reader.line_num}: cannot be read as CSV ({error}); is it the right file?") from None


def _read_csv_rows(path: Path, reader, row_problem: Callable[[str, str], str | None], strict: bool) -> CsvPuzzles:
    result = CsvPuzzles([], [], [], [], 0)
    header = next(reader, None)
    if header is None:
        raise UserError(f"{path} is empty; it needs the header {','.join(CSV_COLUMNS)} and one puzzle per line")
    if tuple(column.strip() for column in header[:4]) != CSV_COLUMNS:
        raise UserError(f"{path}: the first line must be the header {','.join(CSV_COLUMNS)}")
    for row in reader:
        problem = _csv_row_problem(row, row_problem)
        if problem is None:
            result.questions.append(row[1])
            result.answers.append(row[2])
            result.ratings.append(float(row[3]))
            result.line_numbers.append(reader.line_num)
        elif strict:
            raise UserError(f"{path} line {reader.line_num}: {problem} (drop --strict to skip such rows)")
        else:
            result.num_skipped += 1
    return result


def _csv_row_problem(row: list[str], row_problem: Callable[[str, str], str | None]) -> str | None:
    if len(row) < 4:
        return f"expected 4 columns, found {len(row)}"
    try:
        float(row[3])
    except ValueError:
        return f"rating {row[3]!r} is not a number"
    return row_problem(row[1], row[2])


def generate_pairs(make_one: Callable[[int], tuple[np.ndarray, np.ndarray]], count: int, num_workers: int,
                   description: str) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(questions, answers) of `count` generated puzzles, `make_one(i)` making the i-th pair,
    over `num_workers` processes with a progress bar; each stacked into one array.

    `make_one` must be picklable (a module-level function or a functools.partial of one)
    and seed itself from its index, so the result does not depend on `num_workers`. A
    `ValueError` of the generator (options it cannot meet) becomes a `UserError`.
    """
    if num_workers < 1:
        raise UserError(f"--num-workers must be at least 1, got {num_workers}")
    try:
        pairs = _generate(make_one, count, num_workers, description)
    except ValueError as error:
        raise UserError(str(error)) from None
    return np.stack([pair[0] for pair in pairs]), np.stack([pair[1] for pair in pairs])


def _generate(make_one: Callable[[int], object], count: int, num_workers: int, description: str) -> list:
    """[make_one(i) for i in range(count)] over `num_workers` processes, with a progress bar."""
    with tqdm(total=count, desc=description, unit="puzzle") as progress:
        if num_workers == 1:
            results = []
            for index in range(count):
                results.append(make_one(index))
                progress.update()
            return results
        with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
            results = []
            for result in pool.imap(make_one, range(count), chunksize=max(1, min(64, count // (8 * num_workers)))):
                results.append(result)
                progress.update()
            return results


SUBSAMPLE_KEY, TEST_SUBSAMPLE_KEY, GENERATE_TRAIN_KEY, GENERATE_TEST_KEY = 1, 2, 10, 11
"""Seed-stream keys of the Sudoku and Maze builders (fixed: they make builds reproducible)."""


def subsample(questions: np.ndarray, labels: np.ndarray, size: int | None, rng, flag: str) -> tuple[np.ndarray, np.ndarray]:
    """`size` random rows (in their original order), or all rows when `size` is None."""
    if size is None:
        return questions, labels
    if size > len(questions):
        raise UserError(f"{flag} {size} exceeds the {len(questions)} examples available; lower it")
    chosen = np.sort(rng.choice(len(questions), size=size, replace=False))
    return questions[chosen], labels[chosen]


def load_csv_or_generated_splits(args, generated_split, read_split_csv) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(questions, labels) of each split before augmentation, for the Sudoku and Maze builders.

    `generated_split(args, count, key, name)` makes puzzles offline (`--generate`);
    `read_split_csv(args, name)` reads `<name>.csv` from `--source-dir`. `--subsample-size`
    and `--test-size` then pick random subsets, seeded by `--seed`.
    """
    if args.generate is not None:
        train = generated_split(args, args.generate, GENERATE_TRAIN_KEY, "train")
        test = generated_split(args, args.test_size or 1000, GENERATE_TEST_KEY, "test")
    else:
        train = read_split_csv(args, "train")
        test_rng = seeded_rng(args.seed, TEST_SUBSAMPLE_KEY)
        test = subsample(*read_split_csv(args, "test"), args.test_size, test_rng, "--test-size")
    train = subsample(*train, args.subsample_size, seeded_rng(args.seed, SUBSAMPLE_KEY), "--subsample-size")
    return {"train": train, "test": test}


Splits = dict[str, tuple[np.ndarray, np.ndarray]]
"""split name -> (questions, answers) before encoding and augmentation."""


@dataclass(frozen=True)
class SingleExampleBuilder:
    """A single-example puzzle builder: what it adds to the shared skeleton, and its `main`."""

    noun: str
    """What one puzzle is called in messages and help (`puzzles`, `mazes`)."""
    description: str
    """First line of `--help`."""
    default_output: str
    """`--output-dir` default (TRM's folder name)."""
    vocab_size: int
    """Tokens, pad (0) included."""
    add_arguments: Callable[[argparse.ArgumentParser], None]
    """Adds the builder's own flags."""
    check_args: Callable[[argparse.Namespace], None]
    """Refuses bad values of its own flags with a `UserError`."""
    read_split_csv: Callable[[argparse.Namespace, str], tuple[np.ndarray, np.ndarray]]
    """(args, split) -> valid (questions, answers) of `<source-dir>/<split>.csv`."""
    generated_split: Callable[[argparse.Namespace, int, int, str], tuple[np.ndarray, np.ndarray]]
    """(args, count, seed key, split) -> `count` generated (questions, answers)."""
    encode_split: Callable[[argparse.Namespace, str, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, int]]
    """(args, split, questions, answers) -> token inputs, token labels (augmented copies
    following each original) and the number of copies per original puzzle."""

    def parse_args(self, argv: list[str] | None = None) -> argparse.Namespace:
        """The common flags (TRM's plus offline generation) and the builder's own, checked."""
        parser = argument_parser(self.description)
        noun = self.noun
        parser.add_argument("--source-dir", help="folder with train.csv and test.csv (source,question,answer,rating)")
        parser.add_argument("--output-dir", default=self.default_output, help="dataset folder to write")
        parser.add_argument("--subsample-size", type=int, help=f"keep this many random train {noun}")
        parser.add_argument("--generate", type=int, help=f"generate this many train {noun} instead of reading CSVs")
        parser.add_argument("--test-size", type=int, help=f"test {noun} (generated: default 1000; CSV: subsample)")
        parser.add_argument("--seed", type=int, default=0, help="seed of subsampling, augmentation and generation")
        parser.add_argument("--num-workers", type=int, default=os.cpu_count() or 1, help="generation processes")
        parser.add_argument("--strict", action="store_true", help="fail on a malformed CSV row instead of skipping it")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
        self.add_arguments(parser)
        args = parser.parse_args(argv)
        self._check_common_args(args)
        self.check_args(args)
        return args

    def _check_common_args(self, args: argparse.Namespace) -> None:
        if (args.source_dir is None) == (args.generate is None):
            raise UserError(f"give exactly one of --source-dir DIR (CSV files) or --generate N (offline {self.noun})")
        if args.source_dir is not None and not Path(args.source_dir).is_dir():
            raise UserError(f"--source-dir {args.source_dir} is not a folder; point it at the folder with train.csv")
        for flag in ("subsample_size", "generate", "test_size"):
            check_positive(args, flag)

    def main(self, argv: list[str] | None = None) -> None:
        """Read or generate, subsample, encode and augment, then write the dataset folder atomically."""
        args = self.parse_args(argv)
        if Path(args.output_dir).exists() and not args.overwrite:
            # Checked before the slow part too; atomic_folder checks again when writing.
            raise UserError(f"output folder {args.output_dir} already exists; choose another --output-dir or pass --overwrite")
        splits = load_csv_or_generated_splits(args, self.generated_split, self.read_split_csv)
        with atomic_folder(args.output_dir, overwrite=args.overwrite) as output:
            for split, (questions, answers) in splits.items():
                if len(questions) == 0:
                    raise UserError(f"no valid {split} {self.noun} in the input; check {split}.csv")
                inputs, labels, copies = self.encode_split(args, split, questions, answers)
                metadata = write_single_example_split(output / split, inputs, labels, copies, self.vocab_size)
                print(f"{split}: {metadata.total_groups} {self.noun}, {metadata.total_puzzles} with augmentations")
            write_json(output / "identifiers.json", ["<blank>"])


def check_positive(args: argparse.Namespace, flag: str) -> None:
    """`UserError` when the optional count `--<flag>` is given and below 1."""
    value = getattr(args, flag)
    if value is not None and value < 1:
        raise UserError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
