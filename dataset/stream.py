"""The contract between datasets and the training loop.

A data kind (`DataKind`, registered in `dataset.kinds`) is one family of on-disk
datasets: how to read its metadata, its training stream, its evaluation batches, the
`data:` options a run may set for it, and the evaluators its data calls for.

Training data is one endless, deterministic stream of examples (epoch after epoch, each
epoch a fresh seeded permutation, `EpochOrder`) cut into consecutive global batches. Each
rank serves its own slice of every global batch (`rank * local : (rank + 1) * local`),
computed from the stream positions of its rows alone, so a run gives the same batches
whatever the number of processes, and the position in the stream is a few integers that
a checkpoint stores (`state_dict`) to resume exactly.

Batches are dicts of numpy arrays, batch-first; the loop moves them to the device. The
loaders of every family share `open_npy` (reading a stored array), `trimmed_width`
(cutting a batch's trailing padding) and `token_column_padding` (what fills it back) from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel

from core.batching import BatchLayout
from core.constants import IGNORE_LABEL_ID
from core.errors import UserError

Batch = dict[str, np.ndarray]


class TrainStream(Protocol):
    """An endless stream of this rank's slices of the global training batches."""

    examples_per_epoch: float
    """Examples in one pass over the data; the loop derives the number of steps from it."""
    column_padding: dict[str, int] | None
    """None when every rank's batch of a step has the same width. Otherwise each rank's
    (b, width) arrays are cut after its own rows' longest (a cost that grows with the local
    batch only), and this says what each of them holds past the end of a row, by key; the
    loop widens every rank's batch to the widest (one all-reduce of one number a step), so
    each rank trains on exactly its slice of the single-process batch."""

    def next_batch(self) -> Batch:
        """Return this rank's slice of the next global batch."""

    def state_dict(self) -> dict[str, int]:
        """Position in the stream after the last batch returned (JSON-serialisable ints)."""

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a position returned by `state_dict`."""


EvalBatches = Iterator[tuple[str, Batch]]
"""(set name, this rank's slice of a global evaluation batch), in order, once over the data.

Every rank yields the same number of batches of the same shape; the last global batch is
padded with rows that carry no label, so evaluators and metrics skip them."""


class FeistelPermutation:
    """A keyed permutation of 0..num_rows-1 evaluated one position at a time, in O(1) memory.

    A Feistel network over `bits`-bit numbers (the smallest power of two >= num_rows) is a
    bijection for any round function; numbers that land outside 0..num_rows-1 are sent
    through the network again (cycle-walking), which keeps it a bijection of 0..num_rows-1
    and, the domain being < 2 num_rows, costs fewer than two passes on average. Each round
    swaps an unbalanced split (top t bits, bottom bits - t) and mixes the bottom part into
    the top with SplitMix64 keyed by the round's 64-bit key. Four rounds of a pseudorandom
    round function make a pseudorandom permutation (Luby-Rackoff, for halves that differ
    by at most a bit as here), so where a row lands, and where its neighbours on disk
    land, look like a uniform shuffle's: tests/test_epoch_order.py checks both against the
    formulas of a random permutation, where two rounds fail by hundreds of standard
    deviations and three already pass (four leave a margin).
    """

    def __init__(self, num_rows: int, round_keys: np.ndarray):
        if num_rows < 1:
            raise ValueError(f"num_rows must be positive, got {num_rows}")
        self.num_rows = num_rows
        self.bits = max(2, (num_rows - 1).bit_length())
        self.round_keys = np.asarray(round_keys, dtype=np.uint64)
        # Round r keeps the top `widths[r]` bits; the next round's top is this round's bottom.
        self.widths = [self.bits // 2 if r % 2 == 0 else self.bits - self.bits // 2 for r in range(len(round_keys))]

    def _rounds(self, x: np.ndarray, inverse: bool) -> np.ndarray:
        """One pass of the network (or of its inverse) over uint64 numbers < 2**bits, in
        place on `x` (a fresh array) with two temporaries a round."""
        rounds = list(zip(self.round_keys, self.widths))
        for key, top in reversed(rounds) if inverse else rounds:
            top_shift, bottom_shift, out_shift = np.uint64(top), np.uint64(self.bits - top), np.uint64(64 - top)
            if inverse:  # x = (lo << top) | (hi ^ F(lo))  ->  (hi << bottom) | lo
                kept = x & np.uint64((1 << top) - 1)  # hi ^ F(lo)
                x >>= top_shift  # lo
            else:  # x = (hi << bottom) | lo  ->  (lo << top) | (hi ^ F(lo))
                kept = x >> bottom_shift  # hi
                x &= np.uint64((1 << (self.bits - top)) - 1)  # lo
            mixed = _mix64_in_place(x ^ key)
            mixed >>= out_shift  # F(lo): the top `top` bits of the mix
            kept ^= mixed
            if inverse:
                kept <<= bottom_shift
            else:
                x <<= top_shift
            x |= kept
        return x

    def _walk(self, values: np.ndarray, inverse: bool) -> np.ndarray:
        values = np.asarray(values, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() >= self.num_rows):
            raise ValueError(f"values outside 0..{self.num_rows - 1}")
        x = self._rounds(values.astype(np.uint64), inverse)  # (n,)
        outside = np.flatnonzero(x >= np.uint64(self.num_rows))  # (k,) still to walk
        while outside.size:
            x[outside] = self._rounds(x[outside], inverse)
            outside = outside[x[outside] >= np.uint64(self.num_rows)]
        return x.astype(np.int64)

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """The row at each position (int64, same shape)."""
        return self._walk(positions, inverse=False)

    def inverse(self, rows: np.ndarray) -> np.ndarray:
        """The position of each row (int64, same shape): `inverse(self(p)) == p`."""
        return self._walk(rows, inverse=True)


class EpochOrder:
    """Which row each position of an endless stream reads: epoch e visits all `num_rows`
    rows in an order that is a function of (seed, e) alone, epochs back to back, so the
    position alone (no replay) says where a resumed stream is, and any rank can compute
    the rows of its own positions without the others'.

    Up to `EXACT_BELOW` rows the order is `seeded_rng(seed, e)`'s permutation, kept in
    memory (<= 0.5 MB an epoch; the last two epochs are kept, a batch can span them): a
    uniform shuffle. Above, it is a `FeistelPermutation` keyed by (seed, e), evaluated per
    position: memory stays O(batch) at any size and an epoch starts without any work.
    Small Feistel networks (a few bits a half) reach only a skewed subset of the
    permutations, which is why small datasets keep the exact shuffle; from 2**16 rows on
    (8+ bits a half) the network passes the same statistical tests as a uniform shuffle
    (tests/test_epoch_order.py), and SGD needs no more than that: each row once an epoch,
    and no relation between a row's place in the files and its place in the order, its
    batch-mates, or its place in other epochs.
    """

    EXACT_BELOW = 1 << 16
    """Datasets with fewer rows get the exact (materialised) permutation."""
    NUM_ROUNDS = 4

    def __init__(self, seed: int, num_rows: int):
        self.seed = seed
        self.num_rows = num_rows
        self._epochs: dict[int, np.ndarray | FeistelPermutation] = {}

    def _epoch_order(self, epoch: int) -> np.ndarray | FeistelPermutation:
        """The visiting order of `epoch` (the last two are kept: a batch can span epochs)."""
        if epoch not in self._epochs:
            self._epochs = {e: order for e, order in self._epochs.items() if e == epoch - 1}
            rng = seeded_rng(self.seed, epoch)
            if self.num_rows < self.EXACT_BELOW:
                self._epochs[epoch] = rng.permutation(self.num_rows)
            else:
                keys = rng.integers(0, 2**64, size=self.NUM_ROUNDS, dtype=np.uint64)
                self._epochs[epoch] = FeistelPermutation(self.num_rows, keys)
        return self._epochs[epoch]

    def rows(self, start: int, count: int) -> np.ndarray:
        """Rows at stream positions start..start+count-1."""
        rows = np.empty(count, dtype=np.int64)
        done = 0
        while done < count:  # one epoch's part at a time
            epoch, offset = divmod(start + done, self.num_rows)
            size = min(count - done, self.num_rows - offset)
            order = self._epoch_order(epoch)
            if isinstance(order, FeistelPermutation):
                rows[done : done + size] = order(np.arange(offset, offset + size, dtype=np.int64))
            else:
                rows[done : done + size] = order[offset : offset + size]
            done += size
        return rows


def mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective scramble of uint64 values (wraps modulo 2**64),
    the counter-based randomness behind the epoch order and the per-row masks."""
    return _mix64_in_place(np.array(values, dtype=np.uint64))


def _mix64_in_place(z: np.ndarray) -> np.ndarray:
    """`mix64` of a uint64 array that may be overwritten (returned)."""
    with np.errstate(over="ignore"):
        z += np.uint64(0x9E3779B97F4A7C15)
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def padded_width(longest: int, length: int, multiple: int) -> int:
    """Columns to keep for rows of at most `longest` real tokens: `longest` rounded up to
    `multiple`, at least one multiple, at most the stored length `length`."""
    return min(length, -(-max(longest, 1) // multiple) * multiple)


def token_column_padding(pad_id: int) -> dict[str, int]:
    """What the (b, width) arrays of a tokenised batch hold past the end of a row: the pad
    id, no attention, segment 0, no label (a `TrainStream.column_padding`)."""
    return {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0, "labels": IGNORE_LABEL_ID}


def trimmed_width(ids: np.ndarray, pad_id: int, multiple: int) -> int:
    """Columns of a batch of token ids (b, L) to keep: up to the last real token of any row,
    rounded up to `multiple` (at most L). Padding is only ever at the end of a sequence."""
    real_columns = np.flatnonzero((ids != pad_id).any(axis=0))  # (k,)
    return padded_width(int(real_columns[-1]) + 1 if len(real_columns) else 1, ids.shape[1], multiple)


def open_npy(path: Path) -> np.ndarray:
    """Memory-map one stored `.npy` array (pickles refused, so reading it runs no code); a
    missing or unreadable file is a `UserError` that says to rebuild the dataset."""
    if not path.is_file():
        raise UserError(f"{path} is missing; the dataset is incomplete, rebuild it")
    try:
        # A plain view of the mapping: indexing an np.memmap costs ~10x more per call.
        return np.load(path, mmap_mode="r", allow_pickle=False).view(np.ndarray)
    except (ValueError, OSError, EOFError) as error:
        raise UserError(f"{path} cannot be read ({error}); rebuild the dataset") from None


def seeded_rng(*keys: int) -> np.random.Generator:
    """A numpy generator determined by integer keys (seed, epoch, position, ...)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in keys])))


@dataclass(frozen=True)
class DataKind:
    """How the training engine reads one family of on-disk datasets."""

    name: str
    options_class: type[BaseModel]
    """Pydantic model of the run's `data:` section for this kind (unknown keys refused)."""
    load_metadata: Callable[[list[str]], Any]
    """Training-split metadata of the dataset folders (it sizes the model)."""
    train_stream: Callable[[list[str], Any, int, BatchLayout], TrainStream]
    """(paths, options, seed, batch layout) -> this rank's stream."""
    eval_batches: Callable[[list[str], Any, int, BatchLayout], EvalBatches]
    """(paths, options, seed, batch layout) -> the test split once."""
    default_evaluators: Callable[[list[str]], list[dict[str, Any]]]
    """Evaluator specs a run on these folders gets when it names none."""
    resolve_paths: Callable[[list[str]], list[str]] = list
    """`data_paths` as given -> the dataset folders they name (e.g. a folder of parts or a
    glob expanded, in a fixed order); by default, the entries themselves."""
