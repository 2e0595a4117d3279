"""Puzzle datasets (Sudoku, Maze, ARC) for the training loop.

Loading (the contract is `dataset.stream`):
- `load_puzzle_metadata(paths, split)`: the merged `dataset.json` of one or more folders.
- `PuzzleTrainStream`: the endless, seeded stream of training batches. Epoch `e` visits
  the groups (original puzzles) in a permutation drawn from `seeded_rng(seed, e)`, takes
  one random puzzle (augmented copy) of each group and emits all its examples in order.
  Global batches are consecutive chunks of that stream, so a batch can span two groups
  or two epochs and nothing is dropped (TRM drops the last incomplete batch of an epoch
  instead; here epochs run into each other, which keeps batches full and the position a
  few integers).
- `iter_puzzle_eval_batches(...)`: every test example once, in order, per set.

Several dataset folders can be combined: their groups are pooled, their puzzle
identifiers offset by the identifier counts of the folders before them, and with more
than one folder the set names get the folder's index appended (`all0`, `all1`).

Arrays are opened with `np.load(mmap_mode="r", allow_pickle=False)`: large splits are
never read whole, and loading a file cannot run code.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from core.batching import local_batch_size, rank_rows, rank_slice
from core.constants import IGNORE_LABEL_ID
from core.errors import UserError
from dataset.puzzles.format import PUZZLE_ARRAY_FIELDS, PuzzleDatasetMetadata, read_puzzle_metadata
from dataset.stream import Batch, EvalBatches, seeded_rng


class PuzzleDataOptions(BaseModel):
    """The `data:` section of a run on puzzle datasets: nothing to set (unknown keys refused)."""

    model_config = ConfigDict(extra="forbid")


NOISE_STREAM_KEY = 1_000_003
"""Second key of `seeded_rng(seed, NOISE_STREAM_KEY, batch_index)`, the per-batch noise."""


# ----------------------------------------------------------------------------- loading


@dataclass
class _PuzzleSet:
    """The arrays of one set of one folder, identifiers already offset."""

    name: str
    inputs: np.ndarray
    labels: np.ndarray
    puzzle_identifiers: np.ndarray
    puzzle_indices: np.ndarray
    group_indices: np.ndarray
    ignore_label_id: int | None


def _split_metadata(paths: Sequence[str], split: str) -> list[PuzzleDatasetMetadata]:
    """`dataset.json` of `split` in each folder, with user-facing errors."""
    if not paths:
        raise UserError("no dataset folder given; set data_paths to one or more built dataset folders")
    metadatas = []
    for path in paths:
        if not Path(path).is_dir():
            raise UserError(f"dataset folder {path} not found; build it with dataset/build_*_dataset.py or fix the path")
        if (Path(path) / "dataset.json").is_file() and not (Path(path) / split / "dataset.json").is_file():
            raise UserError(f"{path} is a text (MLM) dataset, for arch=bert; this arch needs a puzzle dataset "
                            "built by dataset/build_{sudoku,maze,arc}_dataset.py")
        metadatas.append(read_puzzle_metadata(Path(path) / split))
    return metadatas


def _merge_metadata(paths: Sequence[str], metadatas: list[PuzzleDatasetMetadata]) -> PuzzleDatasetMetadata:
    """One metadata for several folders (counts added, identifiers concatenated)."""
    first = metadatas[0]
    for path, metadata in zip(paths[1:], metadatas[1:]):
        for field in ("seq_len", "vocab_size", "pad_id"):
            if getattr(metadata, field) != getattr(first, field):
                raise UserError(
                    f"datasets {paths[0]} and {path} differ in {field} "
                    f"({getattr(first, field)} vs {getattr(metadata, field)}); combine only datasets of one kind"
                )
    total_puzzles = sum(metadata.total_puzzles for metadata in metadatas)
    weighted_examples = sum(metadata.mean_puzzle_examples * metadata.total_puzzles for metadata in metadatas)
    return first.model_copy(
        update=dict(
            num_puzzle_identifiers=sum(metadata.num_puzzle_identifiers for metadata in metadatas),
            total_groups=sum(metadata.total_groups for metadata in metadatas),
            total_puzzles=total_puzzles,
            mean_puzzle_examples=weighted_examples / total_puzzles if total_puzzles else 0.0,
            sets=[name for index, metadata in enumerate(metadatas) for name in _set_names(metadata, index, len(paths))],
        )
    )


def _set_names(metadata: PuzzleDatasetMetadata, path_index: int, num_paths: int) -> list[str]:
    """Set names as seen by the loop: unchanged for one folder, suffixed by its index otherwise."""
    return list(metadata.sets) if num_paths == 1 else [f"{name}{path_index}" for name in metadata.sets]


def load_puzzle_metadata(paths: list[str], split: str) -> PuzzleDatasetMetadata:
    """The metadata of `split` ("train" or "test") of one or more dataset folders, merged."""
    return _merge_metadata(paths, _split_metadata(paths, split))


def _load_split(paths: Sequence[str], split: str) -> tuple[PuzzleDatasetMetadata, list[_PuzzleSet]]:
    """Merged metadata and the memory-mapped arrays of every set of every folder."""
    metadatas = _split_metadata(paths, split)
    merged = _merge_metadata(paths, metadatas)
    sets, identifier_offset = [], 0
    for index, (path, metadata) in enumerate(zip(paths, metadatas)):
        split_dir = Path(path) / split
        for set_name, loop_name in zip(metadata.sets, _set_names(metadata, index, len(paths))):
            arrays = {}
            for field in PUZZLE_ARRAY_FIELDS:
                file = split_dir / f"{set_name}__{field}.npy"
                if not file.is_file():
                    raise UserError(f"{file} missing: {path} is incomplete; rebuild it with dataset/build_*_dataset.py")
                arrays[field] = _load_array(file, path)
            _check_consistent(arrays, metadata.seq_len, split_dir, set_name)
            sets.append(
                _PuzzleSet(
                    name=loop_name,
                    inputs=arrays["inputs"],
                    labels=arrays["labels"],
                    puzzle_identifiers=np.asarray(arrays["puzzle_identifiers"], dtype=np.int64) + identifier_offset,
                    puzzle_indices=np.asarray(arrays["puzzle_indices"], dtype=np.int64),
                    group_indices=np.asarray(arrays["group_indices"], dtype=np.int64),
                    ignore_label_id=metadata.ignore_label_id,
                )
            )
        identifier_offset += metadata.num_puzzle_identifiers
    return merged, sets


def _load_array(file: Path, dataset_path: str) -> np.ndarray:
    """Memory-map one `.npy` file; pickled objects are refused, so reading it runs no code."""
    try:
        return np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise UserError(f"{file} cannot be read ({error}); rebuild {dataset_path} with dataset/build_*_dataset.py") from None


def _check_consistent(arrays: dict[str, np.ndarray], seq_len: int, split_dir: Path, set_name: str) -> None:
    """Refuse arrays whose shapes and offsets disagree (a corrupt or half-copied folder)."""
    inputs, puzzle_indices, group_indices = arrays["inputs"], arrays["puzzle_indices"], arrays["group_indices"]
    problems = []
    if inputs.ndim != 2 or inputs.shape[1] != seq_len or arrays["labels"].shape != inputs.shape:
        problems.append(f"inputs/labels shapes {inputs.shape}/{arrays['labels'].shape} do not match seq_len {seq_len}")
    if len(puzzle_indices) != len(arrays["puzzle_identifiers"]) + 1 or puzzle_indices[-1] != len(inputs):
        problems.append("puzzle_indices do not match the puzzles and examples")
    if group_indices[-1] != len(arrays["puzzle_identifiers"]):
        problems.append("group_indices do not match the puzzles")
    if problems:
        raise UserError(f"{split_dir} set {set_name!r} is corrupt ({'; '.join(problems)}); rebuild it")


def _gather(puzzle_set: _PuzzleSet, example_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and labels (int32, labels with ignore_label_id -> -100) of some example rows."""
    inputs = np.asarray(puzzle_set.inputs[example_rows], dtype=np.int32)  # (n, L)
    labels = np.asarray(puzzle_set.labels[example_rows], dtype=np.int32)  # (n, L)
    if puzzle_set.ignore_label_id is not None:
        labels[labels == puzzle_set.ignore_label_id] = IGNORE_LABEL_ID
    return inputs, labels


@dataclass
class _EpochPlan:
    """What one epoch visits: per position in the group permutation, the chosen puzzle."""

    epoch: int
    puzzles: np.ndarray
    """Global puzzle index chosen at each position (int64 [total_groups])."""
    example_offsets: np.ndarray
    """Examples emitted before each position, and the epoch total last (int64 [total_groups + 1])."""


class PuzzleTrainStream:
    """The endless, seeded stream of training batches of puzzle datasets (a `TrainStream`).

    Every rank computes the same global batch indices and gathers only its own slice; the
    position (epoch, position in the permutation, offset inside the current puzzle,
    batches produced) is all `state_dict` needs to continue exactly.
    """

    def __init__(self, paths: list[str], seed: int, global_batch_size: int, rank: int, world_size: int):
        rank_rows(global_batch_size, rank, world_size)  # refuses a batch that does not split
        self.metadata, self._sets = _load_split(paths, "train")
        self.seed = seed
        self.global_batch_size = global_batch_size
        self.rank, self.world_size = rank, world_size
        self.examples_per_epoch = self.metadata.total_groups * self.metadata.mean_puzzle_examples
        self.column_padding = None  # puzzles always have their full width
        self._index_groups()
        if self._puzzle_num_examples.sum() == 0 or len(self._group_first_puzzle) == 0:
            raise UserError(f"the train split of {paths} has no examples; rebuild the dataset")
        self._epoch, self._position, self._offset, self._num_batches = 0, 0, 0, 0
        self._plan: _EpochPlan | None = None

    def _index_groups(self) -> None:
        """Pool the groups, puzzles and examples of all sets into global index arrays."""
        num_examples = [len(puzzle_set.inputs) for puzzle_set in self._sets]
        num_puzzles = [len(puzzle_set.puzzle_identifiers) for puzzle_set in self._sets]
        self._set_example_offsets = np.cumsum([0] + num_examples)
        puzzle_offsets = np.cumsum([0] + num_puzzles)
        self._group_first_puzzle = np.concatenate(
            [s.group_indices[:-1] + offset for s, offset in zip(self._sets, puzzle_offsets)]
        )
        self._group_num_puzzles = np.concatenate([np.diff(s.group_indices) for s in self._sets])
        self._puzzle_first_example = np.concatenate(
            [s.puzzle_indices[:-1] + offset for s, offset in zip(self._sets, self._set_example_offsets)]
        )
        self._puzzle_num_examples = np.concatenate([np.diff(s.puzzle_indices) for s in self._sets])
        self._puzzle_identifiers = np.concatenate([s.puzzle_identifiers for s in self._sets])

    def _epoch_plan(self, epoch: int) -> _EpochPlan:
        """The group order and puzzle choices of `epoch`, computed once per epoch."""
        if self._plan is None or self._plan.epoch != epoch:
            rng = seeded_rng(self.seed, epoch)
            order = rng.permutation(len(self._group_first_puzzle))  # (G,)
            # One uniform choice per position, drawn together: position p's puzzle depends
            # only on (seed, epoch, p), so a resumed stream needs no replay.
            choice = rng.integers(0, self._group_num_puzzles[order])  # (G,)
            puzzles = self._group_first_puzzle[order] + choice
            offsets = np.concatenate([[0], np.cumsum(self._puzzle_num_examples[puzzles])])
            self._plan = _EpochPlan(epoch=epoch, puzzles=puzzles, example_offsets=offsets)
        return self._plan

    def _take(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Advance the position by `count` examples; return their example rows and puzzles."""
        rows, puzzles = [], []
        while count:
            plan = self._epoch_plan(self._epoch)
            start = plan.example_offsets[self._position] + self._offset
            stop = min(start + count, plan.example_offsets[-1])
            in_epoch = np.arange(start, stop)  # (n,)
            positions = np.searchsorted(plan.example_offsets, in_epoch, side="right") - 1
            puzzle = plan.puzzles[positions]
            rows.append(self._puzzle_first_example[puzzle] + in_epoch - plan.example_offsets[positions])
            puzzles.append(puzzle)
            count -= stop - start
            if stop == plan.example_offsets[-1]:
                self._epoch, self._position, self._offset = self._epoch + 1, 0, 0
            else:
                self._position = int(np.searchsorted(plan.example_offsets, stop, side="right") - 1)
                self._offset = int(stop - plan.example_offsets[self._position])
        return np.concatenate(rows), np.concatenate(puzzles)

    def next_batch(self) -> Batch:
        """This rank's slice of the next global batch: inputs, labels, puzzle_identifiers, noise."""
        rows, puzzles = self._take(self.global_batch_size)  # (B,), (B,)
        noise = seeded_rng(self.seed, NOISE_STREAM_KEY, self._num_batches).random(
            (self.global_batch_size, 2), dtype=np.float32
        )  # (B, 2)
        self._num_batches += 1
        # Slice the indices first so each rank reads only its own rows.
        local = rank_slice({"rows": rows, "puzzles": puzzles, "noise": noise}, self.rank, self.world_size)
        inputs, labels = self._gather_rows(local["rows"])
        return {
            "inputs": inputs,
            "labels": labels,
            "puzzle_identifiers": self._puzzle_identifiers[local["puzzles"]].astype(np.int32),
            "noise": local["noise"],
        }

    def _gather_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and labels of global example rows, read from whichever set holds them."""
        if len(self._sets) == 1:
            return _gather(self._sets[0], rows)
        inputs = np.empty((len(rows), self.metadata.seq_len), dtype=np.int32)
        labels = np.empty_like(inputs)
        owner = np.searchsorted(self._set_example_offsets, rows, side="right") - 1
        for index, puzzle_set in enumerate(self._sets):
            mine = owner == index
            if mine.any():
                inputs[mine], labels[mine] = _gather(puzzle_set, rows[mine] - self._set_example_offsets[index])
        return inputs, labels

    def state_dict(self) -> dict[str, int]:
        """Position after the last batch returned."""
        return {
            "epoch": self._epoch,
            "position": self._position,
            "offset": self._offset,
            "num_batches": self._num_batches,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a position returned by `state_dict` (of a stream over the same data)."""
        expected = {"epoch", "position", "offset", "num_batches"}
        if set(state) != expected:
            raise ValueError(f"stream state needs keys {sorted(expected)}, got {sorted(state)}")
        epoch, position, offset = int(state["epoch"]), int(state["position"]), int(state["offset"])
        plan = self._epoch_plan(epoch)
        in_range = 0 <= position < len(plan.puzzles) and 0 <= offset
        if not in_range or (offset and offset >= self._puzzle_num_examples[plan.puzzles[position]]):
            raise ValueError(f"stream state {state} does not fit this dataset; was it saved with other data?")
        self._epoch, self._position, self._offset = epoch, position, offset
        self._num_batches = int(state["num_batches"])


def iter_puzzle_eval_batches(paths: list[str], global_batch_size: int, rank: int, world_size: int) -> EvalBatches:
    """(set name, this rank's slice of a global batch) over every test example once, in order.

    The last global batch of each set is padded with pad_id inputs, -100 labels and the
    blank identifier; every rank yields the same number of batches.
    """
    rank_rows(global_batch_size, rank, world_size)  # refuses a batch that does not split
    metadata, sets = _load_split(paths, "test")
    return _eval_batches(metadata, sets, global_batch_size, rank, world_size)


def _eval_batches(
    metadata: PuzzleDatasetMetadata, sets: list[_PuzzleSet], global_batch_size: int, rank: int, world_size: int
) -> Iterator[tuple[str, Batch]]:
    local_size = local_batch_size(global_batch_size, world_size)
    for puzzle_set in sets:
        num_examples = len(puzzle_set.inputs)
        example_identifiers = np.repeat(puzzle_set.puzzle_identifiers, np.diff(puzzle_set.puzzle_indices))
        for batch_start in range(0, num_examples, global_batch_size):
            rows = batch_start + rank * local_size + np.arange(local_size)  # (b,)
            real = rows < num_examples
            inputs = np.full((local_size, metadata.seq_len), metadata.pad_id, dtype=np.int32)
            labels = np.full((local_size, metadata.seq_len), IGNORE_LABEL_ID, dtype=np.int32)
            identifiers = np.full(local_size, metadata.blank_identifier_id, dtype=np.int32)
            inputs[real], labels[real] = _gather(puzzle_set, rows[real])
            identifiers[real] = example_identifiers[rows[real]]
            yield puzzle_set.name, {"inputs": inputs, "labels": labels, "puzzle_identifiers": identifiers}
