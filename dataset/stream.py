"""The contract between datasets and the training loop.

Training data is one endless, deterministic stream of examples (epoch after epoch, each
epoch a fresh seeded permutation) cut into consecutive global batches. Every rank builds
the same global batch and keeps its own slice (`rank * local : (rank + 1) * local`), so
a run gives the same batches whatever the number of processes, and the position in the
stream is a few integers that a checkpoint stores (`state_dict`) to resume exactly.

Batches are dicts of numpy arrays, batch-first; the loop moves them to the device.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

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


def rank_slice(global_batch: Batch, rank: int, world_size: int) -> Batch:
    """This rank's contiguous slice of every array of a global batch."""
    size = next(iter(global_batch.values())).shape[0]
    if size % world_size:
        raise ValueError(f"global batch of {size} does not split over {world_size} ranks")
    local = size // world_size
    return {key: value[rank * local : (rank + 1) * local] for key, value in global_batch.items()}


def seeded_rng(*keys: int) -> np.random.Generator:
    """A numpy generator determined by integer keys (seed, epoch, position, ...)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in keys])))
