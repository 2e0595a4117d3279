"""Tests of the puzzle-dataset loader: the train stream and the evaluation batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import UserError
from dataset.puzzles.format import PuzzleSplitWriter
from dataset.puzzles.loader import PuzzleTrainStream, iter_puzzle_eval_batches, load_puzzle_metadata
from dataset.stream import seeded_rng

SEQ_LEN = 4


def write_split(split_dir, groups: list[list[int]], num_identifiers: int = 1, seq_len: int = SEQ_LEN) -> None:
    """A split whose groups hold puzzles of the given example counts.

    Example i has inputs [i, i, i, i] + 1 and labels [i + 1, 0, i + 1, i + 1] (0 is the
    ignore label); puzzle p gets identifier p % num_identifiers.
    """
    examples_per_puzzle = [count for group in groups for count in group]
    num_examples = sum(examples_per_puzzle)
    inputs = np.repeat(np.arange(num_examples)[:, None] + 1, seq_len, axis=1)
    labels = inputs.copy()
    labels[:, 1] = 0
    writer = PuzzleSplitWriter(split_dir, num_examples, len(examples_per_puzzle), len(groups), seq_len, np.int32)
    writer.add_groups(inputs, labels, np.arange(len(examples_per_puzzle)) % num_identifiers, examples_per_puzzle,
                      [len(group) for group in groups])
    writer.finish(pad_id=0, ignore_label_id=0, vocab_size=1000, num_puzzle_identifiers=num_identifiers)


def make_dataset(root, train_groups, test_groups=((1,),), **kwargs) -> str:
    write_split(root / "train", [list(group) for group in train_groups], **kwargs)
    write_split(root / "test", [list(group) for group in test_groups], **kwargs)
    return str(root)


def example_ids(batch) -> np.ndarray:
    return batch["inputs"][:, 0] - 1


def take(stream, num_batches):
    return [stream.next_batch() for _ in range(num_batches)]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for batch_a, batch_b in zip(first, second):
        assert batch_a.keys() == batch_b.keys()
        for key in batch_a:
            np.testing.assert_array_equal(batch_a[key], batch_b[key])


@pytest.fixture
def mixed_dataset(tmp_path):
    """19 groups of 1..3 puzzles with 1..4 examples each."""
    rng = np.random.default_rng(5)
    groups = [list(rng.integers(1, 5, size=rng.integers(1, 4))) for _ in range(19)]
    return make_dataset(tmp_path / "mixed", groups, num_identifiers=3), groups


def test_same_seed_same_batches_and_other_seed_differs(mixed_dataset):
    path, _ = mixed_dataset
    first = take(PuzzleTrainStream([path], seed=3, global_batch_size=8, rank=0, world_size=1), 12)
    second = take(PuzzleTrainStream([path], seed=3, global_batch_size=8, rank=0, world_size=1), 12)
    assert_same_batches(first, second)
    other = take(PuzzleTrainStream([path], seed=4, global_batch_size=8, rank=0, world_size=1), 12)
    assert any((a["inputs"] != b["inputs"]).any() for a, b in zip(first, other))


def test_batch_arrays_types_labels_and_noise(mixed_dataset):
    path, _ = mixed_dataset
    stream = PuzzleTrainStream([path], seed=3, global_batch_size=8, rank=0, world_size=1)
    for index in range(3):
        batch = stream.next_batch()
        assert batch["inputs"].dtype == np.int32 and batch["inputs"].shape == (8, SEQ_LEN)
        assert batch["labels"].dtype == np.int32 and batch["puzzle_identifiers"].dtype == np.int32
        # Label column 1 was the ignore label 0 on disk; the others equal the inputs.
        assert (batch["labels"][:, 1] == -100).all()
        np.testing.assert_array_equal(batch["labels"][:, [0, 2, 3]], batch["inputs"][:, [0, 2, 3]])
        expected_noise = seeded_rng(3, 1_000_003, index).random((8, 2), dtype=np.float32)
        np.testing.assert_array_equal(batch["noise"], expected_noise)
        assert batch["noise"].dtype == np.float32


@pytest.mark.parametrize("batches_before", [1, 3, 7])
def test_resume_continues_exactly(mixed_dataset, batches_before):
    path, _ = mixed_dataset
    uninterrupted = PuzzleTrainStream([path], seed=1, global_batch_size=6, rank=0, world_size=1)
    take(uninterrupted, batches_before)
    state = json.loads(json.dumps(uninterrupted.state_dict()))
    assert state["num_batches"] == batches_before
    expected = take(uninterrupted, 9)
    resumed = PuzzleTrainStream([path], seed=1, global_batch_size=6, rank=0, world_size=1)
    resumed.load_state_dict(state)
    assert_same_batches(take(resumed, 9), expected)


def test_ranks_slices_concatenate_to_single_process_batch(mixed_dataset):
    path, _ = mixed_dataset
    single = take(PuzzleTrainStream([path], seed=2, global_batch_size=8, rank=0, world_size=1), 10)
    ranks = [take(PuzzleTrainStream([path], seed=2, global_batch_size=8, rank=r, world_size=2), 10) for r in range(2)]
    for step, full in enumerate(single):
        for key in full:
            joined = np.concatenate([ranks[0][step][key], ranks[1][step][key]])
            np.testing.assert_array_equal(joined, full[key])


def test_one_example_puzzles_each_epoch_is_a_permutation(tmp_path):
    num_groups = 37
    path = make_dataset(tmp_path / "single", [[1]] * num_groups)
    stream = PuzzleTrainStream([path], seed=0, global_batch_size=8, rank=0, world_size=1)
    assert stream.examples_per_epoch == num_groups
    seen = np.concatenate([example_ids(batch) for batch in take(stream, 10)])  # 80 examples, 2+ epochs
    epoch0, epoch1 = seen[:num_groups], seen[num_groups : 2 * num_groups]
    assert sorted(epoch0) == list(range(num_groups)) and sorted(epoch1) == list(range(num_groups))
    assert (epoch0 != epoch1).any()
    np.testing.assert_array_equal(epoch0, seeded_rng(0, 0).permutation(num_groups))


def test_multi_puzzle_groups_one_puzzle_per_group_all_examples(mixed_dataset):
    path, groups = mixed_dataset
    counts = [count for group in groups for count in group]
    starts = np.concatenate([[0], np.cumsum(counts)])
    puzzle_of_example = np.repeat(np.arange(len(counts)), counts)
    group_of_puzzle = np.repeat(np.arange(len(groups)), [len(group) for group in groups])
    stream = PuzzleTrainStream([path], seed=7, global_batch_size=5, rank=0, world_size=1)
    assert stream.examples_per_epoch == pytest.approx(len(groups) * np.mean(counts))
    seen = np.concatenate([example_ids(batch) for batch in take(stream, 40)])
    position = 0
    for _ in range(2):  # two epochs: each is len(groups) runs of one whole puzzle
        runs, length = epoch_runs(seen[position:], puzzle_of_example, starts, counts, len(groups))
        visited_groups = [group_of_puzzle[puzzle_of_example[run[0]]] for run in runs]
        assert sorted(visited_groups) == list(range(len(groups)))
        position += length
    assert position <= len(seen)


def epoch_runs(seen, puzzle_of_example, starts, counts, num_groups):
    """Split a stream into `num_groups` puzzle runs, checking each is a whole puzzle in order."""
    runs, position = [], 0
    for _ in range(num_groups):
        puzzle = puzzle_of_example[seen[position]]
        run = seen[position : position + counts[puzzle]]
        np.testing.assert_array_equal(run, np.arange(starts[puzzle], starts[puzzle + 1]))
        runs.append(run)
        position += counts[puzzle]
    return runs, position


def test_eval_batches_cover_each_example_once_with_padding(tmp_path):
    path = make_dataset(tmp_path / "eval", [[1]], test_groups=[[2, 1], [3], [1, 1, 2]], num_identifiers=2)
    num_examples = 10
    per_rank = [list(iter_puzzle_eval_batches([path], 4, rank, 2)) for rank in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 3  # ceil(10 / 4)
    rows = []
    for step in range(3):
        for rank in range(2):
            set_name, batch = per_rank[rank][step]
            assert set_name == "all" and "noise" not in batch and batch["inputs"].shape == (2, SEQ_LEN)
            rows.extend(zip(batch["inputs"][:, 0], batch["labels"][:, 0], batch["puzzle_identifiers"]))
    real = [row for row in rows if row[0] != 0]
    padding = [row for row in rows if row[0] == 0]
    assert sorted(int(row[0]) - 1 for row in real) == list(range(num_examples))
    assert [int(row[0]) - 1 for row in real] == list(range(num_examples))  # in order
    assert len(padding) == 12 - num_examples and all(row[1] == -100 and row[2] == 0 for row in padding)
    # Identifiers follow puzzles: puzzle p has identifier p % 2, examples in puzzle order.
    puzzle_of_example = np.repeat(np.arange(6), [2, 1, 3, 1, 1, 2])
    np.testing.assert_array_equal([row[2] for row in real], puzzle_of_example % 2)


def test_several_paths_pool_groups_and_offset_identifiers(tmp_path):
    first = make_dataset(tmp_path / "a", [[1]] * 5, num_identifiers=2)
    second = make_dataset(tmp_path / "b", [[1]] * 3, num_identifiers=3)
    metadata = load_puzzle_metadata([first, second], "train")
    assert metadata.total_groups == 8 and metadata.num_puzzle_identifiers == 5 and metadata.sets == ["all0", "all1"]
    stream = PuzzleTrainStream([first, second], seed=0, global_batch_size=8, rank=0, world_size=1)
    batch = stream.next_batch()
    from_second = batch["puzzle_identifiers"] >= 2
    assert from_second.sum() == 3  # one epoch: every group once
    # Second folder's puzzles p = 0, 1, 2 have identifiers p % 3 + 2 and example ids p.
    np.testing.assert_array_equal(np.sort(batch["puzzle_identifiers"][from_second]), [2, 3, 4])
    np.testing.assert_array_equal(batch["puzzle_identifiers"][from_second] - 2, example_ids(batch)[from_second])
    names = [name for name, _ in iter_puzzle_eval_batches([first, second], 2, 0, 1)]
    assert names == ["all0", "all1"]


def test_user_errors(tmp_path):
    good = make_dataset(tmp_path / "good", [[1]] * 4)
    other = make_dataset(tmp_path / "long", [[1]] * 4, seq_len=SEQ_LEN + 1)
    with pytest.raises(UserError, match="not found"):
        load_puzzle_metadata([str(tmp_path / "missing")], "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="dataset.json"):
        load_puzzle_metadata([str(tmp_path / "empty")], "train")
    with pytest.raises(UserError, match=f"{good}.*{other}.*seq_len"):
        load_puzzle_metadata([good, other], "train")
    with pytest.raises(UserError, match="multiple"):
        PuzzleTrainStream([good], seed=0, global_batch_size=6, rank=0, world_size=4)
