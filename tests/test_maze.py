"""Tests of the maze generator, breadth-first search, dihedral transforms and builder."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from dataset import build_maze_dataset
from dataset.puzzles import maze
from tests.helpers import assert_builder_refuses, run_builder, write_puzzle_csv
from tests.helpers import load_puzzle_arrays as load

build = functools.partial(run_builder, build_maze_dataset.main)


def grid(text: str) -> np.ndarray:
    return np.array([list(line) for line in text.strip("\n").split("\n")], dtype="<U1")


ROOM = grid(
    """
#####
#S  #
#   #
#  G#
#####
"""
)


def assert_label_is_shortest_path(question: np.ndarray, label: np.ndarray) -> int:
    """Check `label` marks a shortest S-G path of `question`; return its length in steps."""
    changed = question != label
    assert (question[changed] == " ").all() and (label[changed] == "o").all()
    start, goal = maze.find_cell(question, "S"), maze.find_cell(question, "G")
    distance, _ = maze.bfs(question, start)
    # The marked cells plus S and G form a chain: walking from S, each step reaches a
    # neighbour not yet visited, ending at G after distance[G] steps.
    on_path = changed | (question == "S") | (question == "G")
    assert on_path.sum() == distance[goal] + 1
    cell, visited = start, {start}
    while cell != goal:
        nxt = [
            (cell[0] + dr, cell[1] + dc)
            for dr, dc in maze.STEPS
            if on_path[cell[0] + dr, cell[1] + dc] and (cell[0] + dr, cell[1] + dc) not in visited
        ]
        assert len(nxt) == 1
        cell = nxt[0]
        visited.add(cell)
    assert len(visited) == distance[goal] + 1
    return int(distance[goal])


def test_bfs_distances_and_path_counts():
    distance, num_paths = maze.bfs(ROOM, (1, 1))
    assert distance[3, 3] == 4 and distance[0, 0] == -1 and distance[1, 3] == 2
    assert num_paths[1, 2] == 1 and num_paths[2, 2] == 2 and num_paths[3, 3] == 2  # 6 paths, capped
    label, length, count = maze.solve_maze(ROOM)
    assert length == 4 and count == 2 and (label == "o").sum() == 3
    walled = ROOM.copy()
    walled[2, 1:4] = "#"
    with pytest.raises(ValueError, match="cannot be reached"):
        maze.solve_maze(walled)


def test_generated_mazes_have_unique_long_shortest_paths():
    lengths = []
    for index in range(6):
        question, label = maze.generate_maze_at(index, keys=(0, 1), size=20, min_path_length=45)
        assert set(np.unique(question)) <= set("# SG") and (question == "S").sum() == 1
        assert (question[[0, -1], :] == "#").all() and (question[:, [0, -1]] == "#").all()
        lengths.append(assert_label_is_shortest_path(question, label))
        assert maze.solve_maze(question)[2] == 1  # a single shortest path: the label is determined
        assert (label == "o").sum() + 1 == lengths[-1]
    assert min(lengths) >= 45


def test_dihedral_transforms_are_the_8_symmetries_and_keep_labels():
    asymmetric = np.arange(16).reshape(4, 4)
    transforms = [maze.dihedral(asymmetric, index) for index in range(8)]
    assert len({t.tobytes() for t in transforms}) == 8
    np.testing.assert_array_equal(transforms[0], asymmetric)
    np.testing.assert_array_equal(transforms[4], asymmetric.T)
    question, label = maze.generate_maze_at(0, keys=(3,), size=12, min_path_length=20)
    for index in range(8):
        moved_question, moved_label = maze.dihedral(question, index), maze.dihedral(label, index)
        assert_label_is_shortest_path(moved_question, moved_label)
        np.testing.assert_array_equal(maze.solve_maze(moved_question)[0], moved_label)


def test_encode_decode_round_trip():
    tokens = maze.encode(ROOM)
    assert tokens.shape == (25,) and tokens[0] == 1 and tokens[6] == 3 and tokens[18] == 4 and tokens[7] == 2
    np.testing.assert_array_equal(maze.decode(tokens, 5), ROOM)
    with pytest.raises(ValueError, match="may only hold"):
        maze.encode(grid("#x\n##"))




def test_generated_dataset_with_aug_is_reproducible(tmp_path):
    flags = ["--generate", 5, "--test-size", 3, "--size", 10, "--aug", "--seed", 2]
    assert build(*flags, "--num-workers", 1, "--output-dir", tmp_path / "a") == 0
    assert build(*flags, "--num-workers", 2, "--output-dir", tmp_path / "b") == 0
    train = load(tmp_path / "a", "train")
    assert train["inputs"].shape == (40, 100)
    np.testing.assert_array_equal(train["group_indices"], np.arange(0, 41, 8))
    metadata = json.loads((tmp_path / "a" / "train" / "dataset.json").read_text())
    assert metadata["vocab_size"] == 6 and metadata["seq_len"] == 100 and metadata["total_groups"] == 5
    for inputs, labels in zip(train["inputs"], train["labels"]):
        length = assert_label_is_shortest_path(maze.decode(inputs, 10), maze.decode(labels, 10))
        assert length >= maze.default_min_path_length(10) == 12
    for group in range(5):  # the 8 copies of a group are the dihedral images of its first maze
        first = maze.decode(train["inputs"][8 * group], 10)
        for index in range(8):
            np.testing.assert_array_equal(maze.decode(train["inputs"][8 * group + index], 10), maze.dihedral(first, index))
    assert load(tmp_path / "a", "test")["inputs"].shape == (3, 100)  # no augmentation on test
    for split in ("train", "test"):  # worker count does not change the data
        for name in ("inputs", "labels"):
            file = f"{split}/all__{name}.npy"
            assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_csv_round_trip_and_strict(tmp_path, capsys):
    pairs = [maze.generate_maze_at(index, keys=(4,), size=8, min_path_length=6) for index in range(3)]
    rows = [["gen", "".join(q.ravel()), "".join(a.ravel()), "0"] for q, a in pairs]
    for split, chosen in (("train", rows[:2] + [["gen", "#" * 64, "#" * 63 + "o", "0"]]), ("test", rows[2:])):
        write_puzzle_csv(tmp_path / "src" / f"{split}.csv", chosen)
    assert build("--source-dir", tmp_path / "src", "--size", 8, "--output-dir", tmp_path / "out") == 0
    assert "skipped 1 malformed rows" in capsys.readouterr().err
    decoded = ["".join(maze.decode(row, 8).ravel()) for row in load(tmp_path / "out", "train")["labels"]]
    assert decoded == [row[2] for row in rows[:2]]
    status = build("--source-dir", tmp_path / "src", "--size", 8, "--output-dir", tmp_path / "strict", "--strict")
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "train.csv line 4" in err[0] and not (tmp_path / "strict").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "exactly one of --source-dir"),
        (["--source-dir", "{tmp}"], "train.csv not found"),
        (["--source-dir", "{tmp}", "--min-path-length", 5], "--generate only"),
        (["--generate", 2, "--size", 6, "--min-path-length", 500, "--num-workers", 1], "lower --min-path-length"),
        (["--generate", 0], "at least 1"),
    ],
)
def test_cli_errors_exit_2_one_line_no_output(tmp_path, capsys, flags, message):
    assert_builder_refuses(build, flags, message, tmp_path, capsys)
