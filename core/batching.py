"""How a global batch is shared: the one place with the split arithmetic.

A run names `global_batch_size`, the examples of one optimiser step summed over every
process. Each of the `world_size` processes takes a contiguous slice of
`global_batch_size // world_size` rows, `rank * local : (rank + 1) * local`.
"""

from __future__ import annotations

from typing import TypeVar

from core.errors import ConfigError

Array = TypeVar("Array")


def local_batch_size(global_batch_size: int, world_size: int) -> int:
    """Rows per process; `ConfigError` unless `global_batch_size` splits evenly."""
    if global_batch_size <= 0:
        raise ConfigError(f"global_batch_size must be positive, got {global_batch_size}")
    if global_batch_size % world_size:
        raise ConfigError(
            f"global_batch_size ({global_batch_size}) is not divisible by the number of processes "
            f"({world_size}); pick a multiple of {world_size}"
        )
    return global_batch_size // world_size


def rank_rows(global_batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """(start, stop) of this rank's rows in the global batch."""
    local = local_batch_size(global_batch_size, world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    return rank * local, (rank + 1) * local


def rank_slice(global_batch: dict[str, Array], rank: int, world_size: int) -> dict[str, Array]:
    """This rank's contiguous slice of every array of a global batch."""
    size = next(iter(global_batch.values())).shape[0]
    start, stop = rank_rows(size, rank, world_size)
    return {key: value[start:stop] for key, value in global_batch.items()}
