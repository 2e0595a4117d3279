"""How a global batch is shared: the one place with the split arithmetic.

A run names `global_batch_size`, the examples of one optimiser step summed over every
process. Each of the `world_size` processes takes a contiguous slice of
`global_batch_size // world_size` rows, `rank * local : (rank + 1) * local`, and may cut
it into micro-batches of `micro_batch_size` rows whose gradients add up (accumulation).
`BatchLayout` holds these numbers, computed and checked once per run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from core.errors import ConfigError

Array = TypeVar("Array")


@dataclass(frozen=True)
class BatchLayout:
    """How one optimiser step's examples are laid out over processes and forwards."""

    global_batch_size: int
    """Examples per optimiser step, summed over every process."""
    local_batch_size: int
    """Rows of this process per step (`global_batch_size // world_size`)."""
    micro_batch_size: int
    """Rows per forward on this process (divides `local_batch_size`)."""
    rank: int
    world_size: int

    @classmethod
    def of(cls, global_batch_size: int, rank: int = 0, world_size: int = 1,
           micro_batch_size: int | None = None) -> BatchLayout:
        """The checked layout; `ConfigError` (one line) for sizes that do not split.
        `micro_batch_size` None means one forward per step."""
        local = local_batch_size(global_batch_size, world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        micro = micro_batch_size or local
        if local % micro:
            raise ConfigError(
                f"micro_batch_size ({micro}) must divide each process's share of global_batch_size "
                f"({global_batch_size} / {world_size} processes = {local}); pick a divisor of {local}"
            )
        return cls(global_batch_size, local, micro, rank, world_size)

    @property
    def accumulation_steps(self) -> int:
        """Forwards (micro-batches) per optimiser step on each process."""
        return self.local_batch_size // self.micro_batch_size

    @property
    def rows(self) -> tuple[int, int]:
        """(start, stop) of this rank's rows in the global batch."""
        return self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size


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
    return BatchLayout.of(global_batch_size, rank, world_size).rows


def rank_slice(global_batch: dict[str, Array], rank: int, world_size: int) -> dict[str, Array]:
    """This rank's contiguous slice of every array of a global batch."""
    size = next(iter(global_batch.values())).shape[0]
    start, stop = rank_rows(size, rank, world_size)
    return {key: value[start:stop] for key, value in global_batch.items()}
