"""The contract between datasets and the training loop.

A data kind (`DataKind`, registered in `dataset.kinds`) is one family of on-disk
datasets: how to read its metadata, its training stream, its evaluation batches, the
`data:` options a run may set for it, and the evaluators its data calls for.

Training data is one endless, deterministic stream of examples (epoch after epoch, each
epoch a fresh seeded permutation) cut into consecutive global batches. Every rank builds
the same global batch and keeps its own slice (`rank * local : (rank + 1) * local`), so
a run gives the same batches whatever the number of processes, and the position in the
stream is a few integers that a checkpoint stores (`state_dict`) to resume exactly.

Batches are dicts of numpy arrays, batch-first; the loop moves them to the device. The
loaders of every family share `open_npy` (reading a stored array) and `trimmed_width`
(cutting a batch's trailing padding) from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel

from core.batching import BatchLayout
from core.errors import UserError

Batch = dict[str, np.ndarray]


class TrainStream(Protocol):
    """An endless stream of this rank's slices of the global training batches."""

    examples_per_epoch: float
    """Examples in one pass over the data; the loop derives the number of steps from it."""

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


class EpochOrder:
    """Which row each position of an endless stream reads: epoch e visits all `num_rows`
    rows in the order of `seeded_rng(seed, e)`'s permutation, epochs back to back, so the
    position alone (no replay) says where a resumed stream is."""

    def __init__(self, seed: int, num_rows: int):
        self.seed = seed
        self.num_rows = num_rows
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        """The visiting order of `epoch` (the last two are kept: a batch can span epochs)."""
        if epoch not in self._permutations:
            self._permutations = {e: p for e, p in self._permutations.items() if e == epoch - 1}
            self._permutations[epoch] = seeded_rng(self.seed, epoch).permutation(self.num_rows)
        return self._permutations[epoch]

    def rows(self, start: int, count: int) -> np.ndarray:
        """Rows at stream positions start..start+count-1."""
        positions = start + np.arange(count, dtype=np.int64)  # (n,)
        epochs, offsets = np.divmod(positions, self.num_rows)
        rows = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            in_epoch = epochs == epoch
            rows[in_epoch] = self._permutation(int(epoch))[offsets[in_epoch]]
        return rows


def trimmed_width(ids: np.ndarray, pad_id: int, multiple: int) -> int:
    """Columns of a batch of token ids (b, L) to keep: up to the last real token of any row,
    rounded up to `multiple` (at most L). Padding is only ever at the end of a sequence."""
    length = ids.shape[1]
    real_columns = np.flatnonzero((ids != pad_id).any(axis=0))  # (k,)
    longest = int(real_columns[-1]) + 1 if len(real_columns) else 1
    return min(length, -(-longest // multiple) * multiple)


def open_npy(path: Path) -> np.ndarray:
    """Memory-map one stored `.npy` array (pickles refused, so reading it runs no code); a
    missing or unreadable file is a `UserError` that says to rebuild the dataset."""
    if not path.is_file():
        raise UserError(f"{path} is missing; the dataset is incomplete, rebuild it")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
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
