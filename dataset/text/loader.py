"""Masked-language-model datasets for the training loop: the training stream and the
evaluation batches (the contract is `dataset.stream`).

Masking is dynamic by default: the stream draws a fresh mask each time it serves a
sequence. The random numbers of the example at stream position p are counter-based, a
function of (seed, key, p) alone (`Masker.draw_keyed`), so a rank draws only its own
rows' and masks are reproducible, exact under resume and the same whatever the number of
processes. Shards are memory-mapped; only the rows of the current batch are read.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core.batching import rank_rows
from core.constants import IGNORE_LABEL_ID
from core.errors import UserError
from dataset.stream import Batch, EpochOrder, EvalBatches, open_npy, padded_width, token_column_padding
from dataset.text.format import EXCLUDED_ROWS_FILE, MLMDatasetMetadata, load_mlm_metadata
from dataset.text.masking import Masker, MaskingConfig, build_masker

TRAIN_MASK_STREAM_KEY = 7
"""Second key of the training masks' draws: draw_keyed(seed, 7, stream positions)."""
EVAL_MASK_STREAM_KEY = 11
"""Second key of the generator behind the (fixed) evaluation masks."""


# ----------------------------------------------------------------------- reading shards


def _companion(shard: Path, kind: str) -> Path:
    """`shard_00000.npy` -> `shard_00000.<kind>.npy`."""
    return shard.with_name(shard.name[: -len(".npy")] + f".{kind}.npy")


class _LazyShards:
    """The shards of one stored array (ids, nsp, masked or labels) of a split, each
    memory-mapped on first use and checked against its expected shape then: start-up
    opens no shard, however many there are."""

    def __init__(self, paths: list[Path], row_shape: tuple[int, ...], rows: list[int] | None):
        self.paths, self.row_shape, self.rows = paths, row_shape, rows
        self._open: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        if index not in self._open:
            rows = None if self.rows is None else self.rows[index]
            self._open[index] = _open_shard(self.paths[index], self.row_shape, rows)
        return self._open[index]


def _open_shard(path: Path, row_shape: tuple[int, ...], rows: int | None) -> np.ndarray:
    """Memory-map a stored array, refusing one whose shape is not (rows, *row_shape)."""
    array = open_npy(path)
    if array.shape[1:] != row_shape or (rows is not None and len(array) != rows):
        raise UserError(f"{path} has shape {array.shape}, not ({rows or 'n'}, *{row_shape}); rebuild the dataset")
    return array


class _SplitShards:
    """The memory-mapped shards of one split of one or more datasets, as one row space.

    The rows of each shard come from dataset.json (`shard_rows`); datasets built before it
    stored them have their id shards opened here to count them."""

    def __init__(self, metadata: MLMDatasetMetadata, split: str):
        self.metadata, self.split = metadata, split
        self._lengths: dict[int, np.ndarray | None] = {}
        shards = [Path(name) for name in metadata.shards[split]]
        shard_rows = None if metadata.shard_rows is None else metadata.shard_rows[split]
        self.ids = _LazyShards(shards, (metadata.seq_len,), shard_rows)
        if shard_rows is None:
            shard_rows = [len(self.ids[index]) for index in range(len(shards))]
        rows_of = shard_rows if len(shard_rows) == len(shards) else None
        self.ids.rows = rows_of
        companions = {"nsp": ((), metadata.nsp), "masked": ((metadata.seq_len,), metadata.static_masking),
                      "labels": ((metadata.seq_len,), metadata.static_masking)}  # fmt: skip
        self.nsp, self.masked, self.labels = (
            _LazyShards([_companion(shard, kind) for shard in shards] if present else [], shape, rows_of)
            for kind, (shape, present) in companions.items()
        )
        self.starts = np.cumsum([0] + list(shard_rows))  # (num_shards + 1,)
        num_stored = int(self.starts[-1])
        if rows_of is None or num_stored != metadata.num_sequences[split]:
            raise UserError(
                f"{split} shards hold {num_stored} sequences in {len(shard_rows)} shards, dataset.json says "
                f"{metadata.num_sequences[split]} in {len(shards)}; the dataset is damaged, rebuild it"
            )
        excluded = _excluded_rows(shards, self.starts)  # (k,) sorted stored rows to skip
        self._skips_before = excluded - np.arange(len(excluded))  # (k,) kept rows before each skipped one
        self.num_rows = num_stored - len(excluded)
        """Rows served: the stored rows less the excluded ones (`dataset.text.parts`)."""

    def stored_rows(self, rows: np.ndarray) -> np.ndarray:
        """Stored row of each served row: the k-th served row is the k-th row not excluded."""
        return rows + np.searchsorted(self._skips_before, rows, side="right")

    def _shard_rows(self, rows: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(shard, where in `rows`, rows inside that shard) for each shard `rows` touch."""
        if len(rows) == 0:
            return []
        shard_of_row = np.searchsorted(self.starts, rows, side="right") - 1  # (n,)
        if len(self.starts) <= 1 << 16:  # a stable sort of 16-bit keys is a radix sort: O(n)
            shard_of_row = shard_of_row.astype(np.uint16)
        by_shard = np.argsort(shard_of_row, kind="stable")  # (n,) grouped by shard
        sorted_shards = shard_of_row[by_shard]
        firsts = np.flatnonzero(sorted_shards[1:] != sorted_shards[:-1]) + 1  # where a new shard starts
        groups = []
        for where in np.split(by_shard, firsts):
            shard = int(shard_of_row[where[0]])
            groups.append((shard, where, rows[where] - self.starts[shard]))
        return groups

    def take(
        self, rows: np.ndarray, keys: tuple[str, ...] = ("ids", "nsp", "masked", "labels")
    ) -> dict[str, np.ndarray]:
        """Rows (global indices) of the stored arrays among `keys` that exist: ids, and
        nsp/masked/labels when present."""
        rows = self.stored_rows(rows)
        arrays = {"ids": self.ids, "nsp": self.nsp, "masked": self.masked, "labels": self.labels}
        groups = self._shard_rows(rows)
        out = {}
        for key in keys:
            shards = arrays[key]
            if not len(shards):
                continue
            result = np.empty((len(rows),) + shards.row_shape, dtype=np.int64)
            for shard, where, inside in groups:
                result[where] = shards[shard][inside]
            out[key] = result
        return out

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        """Real tokens (not padding) of each row (global indices), int64 (n,): read from the
        shard's `.lengths.npy` where the builder wrote one, else counted from its ids."""
        result = np.empty(len(rows), dtype=np.int64)
        for shard, where, inside in self._shard_rows(self.stored_rows(rows)):
            if shard not in self._lengths:
                stored = _companion(self.ids.paths[shard], "lengths")
                num_rows = int(self.starts[shard + 1] - self.starts[shard])
                self._lengths[shard] = _open_shard(stored, (), num_rows) if stored.is_file() else None
            if self._lengths[shard] is None:
                result[where] = (self.ids[shard][inside] != self.metadata.pad_id).sum(axis=1)
            else:
                result[where] = self._lengths[shard][inside]
        return result


def _excluded_rows(shards: list[Path], starts: np.ndarray) -> np.ndarray:
    """The rows (in the row space of `shards`) listed by the `excluded_rows.npy` of each
    dataset folder's split, sorted; one small file per folder at most is read."""
    excluded, first = [], 0
    for folder, group in itertools.groupby(shard.parent for shard in shards):
        stop = first + len(list(group))
        path = folder / EXCLUDED_ROWS_FILE
        if path.is_file():
            rows = np.asarray(open_npy(path), dtype=np.int64)
            num_rows = int(starts[stop] - starts[first])
            if len(rows) and (rows.min() < 0 or rows.max() >= num_rows):
                raise UserError(f"{path} lists rows outside the {num_rows} of {folder}; rerun "
                                "dataset/exclude_duplicate_documents.py on the parts")
            excluded.append(starts[first] + rows)
        first = stop
    return np.unique(np.concatenate(excluded)) if excluded else np.zeros(0, dtype=np.int64)


def _trimmed(batch: Batch, width: int) -> Batch:
    """The batch with its (b, L) arrays cut to their first `width` columns."""
    return {key: value[:, :width] if value.ndim == 2 else value for key, value in batch.items()}


def _model_batch(
    stored: dict[str, np.ndarray], masked: np.ndarray, labels: np.ndarray, meta: MLMDatasetMetadata
) -> Batch:
    """The arrays the model reads, from the original ids and their masked version."""
    ids = stored["ids"]  # (b, L)
    attention_mask = ids != meta.pad_id  # (b, L)
    first_sep = np.argmax(ids == meta.sep_id, axis=1)  # (b,)
    # Segment B starts after the first [SEP]; padding keeps type 0, as Hugging Face tokenizers do.
    after_first_sep = np.arange(ids.shape[1])[None, :] > first_sep[:, None]  # (b, L)
    batch = {
        "input_ids": masked.astype(np.int64),
        "token_type_ids": (after_first_sep & attention_mask).astype(np.int64),
        "attention_mask": attention_mask,
        "labels": labels.astype(np.int64),
    }
    if meta.nsp:
        batch["next_sentence_label"] = stored["nsp"].astype(np.int64)
    return batch


class MLMDataOptions(BaseModel):
    """The `data:` section of a run on MLM datasets (unknown keys refused)."""

    model_config = ConfigDict(extra="forbid")

    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    """How the stream chooses the positions to predict; see `MaskingConfig`."""
    trim_padding_to_multiple: int | None = Field(default=8, gt=0)
    """Training and evaluation batches drop their trailing all-padding columns (as many as
    every row of the global batch has), keeping a multiple of this many; None always serves
    the full sequence length."""


# -------------------------------------------------------------------------- the streams


class MLMTrainStream:
    """The endless, seeded stream of training batches of MLM datasets (a `TrainStream`).

    Epoch e visits every training sequence in the order of `EpochOrder(seed, ...)`;
    global batches are consecutive chunks of that stream, spanning epochs. The state is
    the absolute stream position, so resuming needs no replay. Each rank computes the
    order of, reads and masks only its own rows (masks are keyed by stream position), so
    the result equals `rank_slice` of the single-process batch at a cost that grows with
    the local batch. With `trim_to_multiple`, the columns after this rank's longest
    sequence are dropped (rounded up to the multiple), and no compute is spent on them;
    `column_padding` says how the loop widens the ranks' batches to the widest of the
    step (the width of the global batch, which one process would have served), so that
    no rank reads another's rows.
    """

    def __init__(
        self,
        paths: list[str],
        seed: int,
        global_batch_size: int,
        rank: int,
        world_size: int,
        masking: MaskingConfig,
        trim_to_multiple: int | None = None,
    ):
        self._rows_of_rank = rank_rows(global_batch_size, rank, world_size)
        if trim_to_multiple is not None and trim_to_multiple <= 0:
            raise ValueError(f"trim_to_multiple must be positive or None, got {trim_to_multiple}")
        self.trim_to_multiple = trim_to_multiple
        """Drop trailing all-padding columns of this rank's batch, keeping a multiple of
        this many; None serves the full `seq_len`."""
        self.metadata = load_mlm_metadata(paths)
        self.column_padding = None if trim_to_multiple is None else token_column_padding(self.metadata.pad_id)
        self._train = _SplitShards(self.metadata, "train")
        if self._train.num_rows == 0:
            raise UserError(f"the train split of {paths} has no sequences; rebuild the dataset with more text")
        self._masker = build_masker(paths, self.metadata, masking)
        self.seed = seed
        self.global_batch_size = global_batch_size
        self.rank, self.world_size = rank, world_size
        self.examples_per_epoch = float(self._train.num_rows)
        self._position = 0
        self._order = EpochOrder(seed, self._train.num_rows)

    def next_batch(self) -> Batch:
        """This rank's slice of the next global batch (see the module docstring for the keys)."""
        start = self._position
        first, stop = self._rows_of_rank
        rows = self._order.rows(start + first, stop - first)  # (b,)
        stored = self._train.take(rows)
        if self._masker is None:
            masked, labels = stored["masked"], stored["labels"]
        else:
            positions = start + np.arange(first, stop)  # (b,)
            draws = self._masker.draw_keyed(self.seed, TRAIN_MASK_STREAM_KEY, positions, self.metadata.seq_len)
            masked, labels = self._masker.apply(stored["ids"], draws)
        self._position += self.global_batch_size
        batch = _model_batch(stored, masked, labels, self.metadata)
        if self.trim_to_multiple is None:
            return batch
        longest = int(batch["attention_mask"].sum(axis=1).max())
        return _trimmed(batch, padded_width(longest, self.metadata.seq_len, self.trim_to_multiple))

    def state_dict(self) -> dict[str, int]:
        """Examples served so far (all ranks together), and the dataset size as a check."""
        return {"position": self._position, "num_sequences": self._train.num_rows}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue after the last batch served before `state_dict` was taken."""
        if int(state["num_sequences"]) != self._train.num_rows:
            raise UserError(
                f"the checkpoint's data position is for {state['num_sequences']} training sequences, the "
                f"dataset has {self._train.num_rows}; resume with the same data_paths"
            )
        self._position = int(state["position"])


def iter_mlm_eval_batches(
    paths: list[str],
    global_batch_size: int,
    rank: int,
    world_size: int,
    masking: MaskingConfig,
    seed: int = 0,
    trim_to_multiple: int | None = None,
) -> EvalBatches:
    """The test split once, in order, as ("all", this rank's slice) with a fixed mask.

    The mask of a sequence depends only on `seed` and its row, so every evaluation round
    sees the same masks whatever the batch size and the number of processes. The last global batch is filled with rows
    `[CLS] [SEP]` that carry no label (MLM labels and NSP label -100). With
    `trim_to_multiple`, batches are cut as the training stream cuts them (after the global
    batch's longest sequence, rounded up): the masks and metrics are the same, the padding
    costs nothing.
    """
    rank_rows(global_batch_size, rank, world_size)  # refuses a batch that does not split
    if trim_to_multiple is not None and trim_to_multiple <= 0:
        raise ValueError(f"trim_to_multiple must be positive or None, got {trim_to_multiple}")
    metadata = load_mlm_metadata(paths)
    test = _SplitShards(metadata, "test")
    masker = build_masker(paths, metadata, masking)
    batches = _eval_batches(test, masker, metadata, global_batch_size, rank, world_size, seed)
    if trim_to_multiple is None:
        return batches
    return _trimmed_eval_batches(batches, test, global_batch_size, trim_to_multiple)


def _trimmed_eval_batches(batches: EvalBatches, test: _SplitShards, global_batch_size: int,
                          trim_to_multiple: int) -> EvalBatches:
    """`batches` (the k-th starting at test row k * global_batch_size) cut to the width of
    their global batch's longest sequence, rounded up to `trim_to_multiple`: the same on
    every rank. Filler rows are `[CLS] [SEP]`, never longer than a real sequence."""
    for start, (set_name, batch) in zip(range(0, test.num_rows, global_batch_size), batches):
        rows = np.arange(start, min(start + global_batch_size, test.num_rows))  # (B',) the real rows
        longest = int(test.lengths(rows).max())
        yield set_name, _trimmed(batch, padded_width(longest, test.metadata.seq_len, trim_to_multiple))


def _eval_batches(
    test: _SplitShards,
    masker: Masker | None,
    metadata: MLMDatasetMetadata,
    global_batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
) -> EvalBatches:
    """The generator behind `iter_mlm_eval_batches` (arguments already checked)."""
    first, stop = rank_rows(global_batch_size, rank, world_size)
    for start in range(0, test.num_rows, global_batch_size):
        rows = start + np.arange(first, stop)  # (b,) this rank's rows, some past the end
        real = rows < test.num_rows
        stored = _with_padding_rows(test.take(rows[real]), int((~real).sum()), metadata)
        if masker is None:
            masked, labels = stored["masked"], stored["labels"]
        else:
            draws = masker.draw_keyed(seed, EVAL_MASK_STREAM_KEY, rows, metadata.seq_len)
            masked, labels = masker.apply(stored["ids"], draws)
        yield "all", _model_batch(stored, masked, labels, metadata)


def _with_padding_rows(stored: dict[str, np.ndarray], count: int, meta: MLMDatasetMetadata) -> dict[str, np.ndarray]:
    """Append `count` label-free rows `[CLS] [SEP] [PAD]...` to the stored arrays."""
    if count == 0:
        return stored
    pad_ids = np.full((count, meta.seq_len), meta.pad_id, dtype=np.int64)
    pad_ids[:, 0], pad_ids[:, 1] = meta.cls_id, meta.sep_id
    extra = {
        "ids": pad_ids,
        "nsp": np.full(count, IGNORE_LABEL_ID, dtype=np.int64),
        "masked": pad_ids,
        "labels": np.full((count, meta.seq_len), IGNORE_LABEL_ID, dtype=np.int64),
    }
    return {key: np.concatenate([value, extra[key]]) for key, value in stored.items()}
