"""Tests of the Sudoku solver, generator, augmentation and dataset builder."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dataset import build_sudoku_dataset
from dataset.puzzles import sudoku
from dataset.stream import seeded_rng
from tests.helpers import assert_builder_refuses, run_builder, write_puzzle_csv
from tests.helpers import load_puzzle_arrays as load

build = functools.partial(run_builder, build_sudoku_dataset.main)

REPO = Path(__file__).resolve().parents[1]
# Arto Inkala's "hardest Sudoku" and its published solution.
INKALA = "800000000003600000070090200050007000000045700000100030001000068008500010090000400"
INKALA_SOLUTION = "812753649943682175675491283154237896369845721287169534521974368438526917796318452"


def board(text: str) -> list[int]:
    return [int(char) for char in text.replace(".", "0")]


def naive_count(cells: list[int], limit: int = 2) -> int:
    """Reference counter: plain backtracking in cell order, checking peers directly."""
    try:
        index = cells.index(0)
    except ValueError:
        return 1
    row, col = divmod(index, 9)
    box_row, box_col = row // 3 * 3, col // 3 * 3
    used = set(cells[row * 9 : row * 9 + 9]) | set(cells[col::9])
    used |= {cells[(box_row + r) * 9 + box_col + c] for r in range(3) for c in range(3)}
    found = 0
    for digit in range(1, 10):
        if digit not in used:
            cells[index] = digit
            found += naive_count(cells, limit - found)
            cells[index] = 0
            if found >= limit:
                break
    return found


def test_solver_solves_known_puzzle():
    assert sudoku.solve(board(INKALA)) == board(INKALA_SOLUTION)
    assert sudoku.count_solutions(board(INKALA)) == 1
    assert sudoku.solve(board(INKALA_SOLUTION)) == board(INKALA_SOLUTION)
    clashing = board(INKALA)
    clashing[1] = 8  # two 8s in the first row
    assert sudoku.count_solutions(clashing) == 0 and sudoku.solve(clashing) is None


def test_solution_counts_match_naive_backtracking():
    rng = seeded_rng(0)
    counts = []
    for trial in range(12):
        cells = sudoku.random_solution(rng)
        for cell in rng.permutation(81)[: 30 + 2 * trial]:
            cells[cell] = 0
        counts.append(sudoku.count_solutions(cells, limit=3))
        assert counts[-1] == naive_count(cells[:], limit=3)
    assert 1 in counts and 3 in counts  # both unique and ambiguous boards were compared


def test_generated_puzzles_unique_with_givens_in_range():
    for index in range(8):
        puzzle, solution = sudoku.generate_puzzle_at(index, keys=(1, 2), min_givens=20, max_givens=28)
        num_givens = int((puzzle > 0).sum())
        assert 20 <= num_givens <= 28
        assert sudoku.count_solutions(puzzle.tolist()) == 1
        assert sudoku.solve(puzzle.tolist()) == solution.tolist()
        assert sudoku.is_valid_solution(solution)
        assert ((puzzle == 0) | (puzzle == solution)).all()


def test_augmentation_keeps_valid_consistent_pairs():
    puzzle, solution = np.array(board(INKALA)), np.array(board(INKALA_SOLUTION))
    copies, solved = sudoku.augment_boards(puzzle, solution, 50, seeded_rng(4))
    assert sudoku.is_valid_solution(solved).all()
    assert ((copies == 0) | (copies == solved)).all()  # givens map to the answer's digits
    assert ((copies > 0).sum(axis=1) == (puzzle > 0).sum()).all()
    assert len({row.tobytes() for row in solved}) == 50
    for copy, answer in zip(copies[:3], solved[:3]):
        assert sudoku.solve(copy.tolist()) == answer.tolist()  # still unique and the same map




def test_generated_dataset_layout_and_reproducibility(tmp_path, capsys):
    flags = ["--generate", 6, "--test-size", 3, "--num-aug", 4, "--seed", 5, "--num-workers", 1]
    assert build(*flags, "--output-dir", tmp_path / "a") == 0
    assert build(*flags, "--output-dir", tmp_path / "b") == 0
    train = load(tmp_path / "a", "train")
    assert train["inputs"].shape == (30, 81) and train["inputs"].dtype == np.int32
    np.testing.assert_array_equal(train["group_indices"], np.arange(0, 31, 5))
    np.testing.assert_array_equal(train["puzzle_indices"], np.arange(31))
    assert (train["puzzle_identifiers"] == 0).all()
    digits, answers = train["inputs"] - 1, train["labels"] - 1
    assert sudoku.is_valid_solution(answers).all() and ((digits == 0) | (digits == answers)).all()
    # Each group starts with the generated original, unique with the default 17..30 givens.
    for original in digits[::5]:
        assert 17 <= (original > 0).sum() <= 30 and sudoku.count_solutions(original.tolist()) == 1
    metadata = json.loads((tmp_path / "a" / "train" / "dataset.json").read_text())
    assert metadata["total_groups"] == 6 and metadata["total_puzzles"] == 30 and metadata["vocab_size"] == 11
    assert json.loads((tmp_path / "a" / "identifiers.json").read_text()) == ["<blank>"]
    assert load(tmp_path / "a", "test")["inputs"].shape == (3, 81)
    for split in ("train", "test"):
        for name in ("inputs", "labels", "group_indices"):
            file = f"{split}/all__{name}.npy"
            assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_csv_round_trip_and_malformed_rows(tmp_path, capsys):
    rng = seeded_rng(9)
    pairs = [sudoku.generate_puzzle(rng, 24, 30) for _ in range(4)]
    good = [["gen", "".join(map(str, p)).replace("0", "."), "".join(map(str, s)), str(i)] for i, (p, s) in enumerate(pairs)]
    bad = [["gen", "123", "456", "0"], ["gen", good[0][1], good[1][2], "0"]]  # too short; wrong answer
    write_puzzle_csv(tmp_path / "src" / "train.csv", good[:3] + bad)
    write_puzzle_csv(tmp_path / "src" / "test.csv", good[3:])
    assert build("--source-dir", tmp_path / "src", "--output-dir", tmp_path / "out") == 0
    assert "skipped 2 malformed rows" in capsys.readouterr().err
    decoded = ["".join(str(token - 1) for token in row).replace("0", ".") for row in load(tmp_path / "out", "train")["inputs"]]
    assert decoded == [row[1] for row in good[:3]]
    answers = ["".join(str(token - 1) for token in row) for row in load(tmp_path / "out", "test")["labels"]]
    assert answers == [good[3][2]]
    # --min-difficulty keeps ratings >= 1 (rows 1 and 2).
    assert build("--source-dir", tmp_path / "src", "--output-dir", tmp_path / "hard", "--min-difficulty", 1) == 0
    assert load(tmp_path / "hard", "train")["inputs"].shape[0] == 2
    capsys.readouterr()
    # --strict names the file and the line of the first bad row (header = line 1).
    status = build("--source-dir", tmp_path / "src", "--output-dir", tmp_path / "strict", "--strict")
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "train.csv line 5" in err[0]
    assert not (tmp_path / "strict").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "exactly one of --source-dir"),
        (["--source-dir", "{tmp}/nowhere"], "is not a folder"),
        (["--source-dir", "{tmp}"], "train.csv not found"),
        (["--generate", 3, "--min-givens", 12], "--min-givens"),
        (["--generate", 3, "--min-difficulty", 5], "--min-difficulty"),
        (["--generate", 3, "--subsample-size", 9, "--num-workers", 1], "exceeds"),
    ],
)
def test_cli_errors_exit_2_one_line_no_output(tmp_path, capsys, flags, message):
    assert_builder_refuses(build, flags, message, tmp_path, capsys)


def test_script_refuses_existing_output(tmp_path):
    (tmp_path / "out").mkdir()
    for command in (["dataset/build_sudoku_dataset.py"], ["-m", "dataset.build_sudoku_dataset"]):
        result = subprocess.run(
            [sys.executable, *command, "--generate", "2", "--output-dir", str(tmp_path / "out")],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and "already exists" in result.stderr
