"""Process-group set-up and the few collectives the loop needs.

One process per device. Under `torchrun` the environment names the rank and world size;
GPUs use NCCL and CPUs gloo. Without `torchrun` everything runs in one process and no
process group is created: every helper here then degenerates to a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from core.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: its rank, the number of ranks and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and logs."""
        return self.rank == 0


def init_distributed(device_preference: str = "auto") -> DistContext:
    """Pick the device and, under torchrun, join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_preference == "cuda" or (device_preference == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def choose_cpu_threads(requested: int | None) -> tuple[int, str]:
    """(intra-op threads for a CPU run, why). `requested` wins, then OMP_NUM_THREADS; otherwise the cores this
    process may use, shared by the processes of this machine (torchrun's LOCAL_WORLD_SIZE),
    minus the cores other jobs keep busy (the 1-minute load average, read at start)."""
    if requested is not None:
        return requested, "cpu_threads"
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"])), "OMP_NUM_THREADS"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    free = max(1, int(cores - load + 0.5))
    threads = max(1, min(cores, free) // processes)
    return threads, f"{cores} cores, load {load:.1f}, {processes} process(es) here; cpu_threads=N to choose"


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def wrap_ddp(model: torch.nn.Module, context: DistContext) -> torch.nn.parallel.DistributedDataParallel:
    """`model` under DistributedDataParallel, its gradients *summed* over ranks.

    The loss is already normalised by global counts (see `training.loop`), so the sum of
    the ranks' gradients is the global batch's gradient; DDP's default average would
    divide it by the number of processes. Buffers are not broadcast: the only one that
    changes (TRM's puzzle-embedding table) is kept equal on every rank by the sparse
    optimiser, which gathers its rows itself.
    """
    wrapped = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[context.device.index] if context.device.type == "cuda" else None,
        broadcast_buffers=False, gradient_as_bucket_view=True,
    )
    wrapped.register_comm_hook(None, _sum_gradients)
    return wrapped


def _sum_gradients(_state, bucket):  # no annotations: DDP checks them as objects, and they are strings here
    """DDP communication hook: all-reduce a gradient bucket (a `dist.GradBucket`) with SUM."""
    work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


def broadcast_object(value, src: int = 0):
    """Rank `src`'s value of a picklable object, on every rank."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_batch_first(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0 (equal shapes on every rank)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_gather_objects(value) -> list:
    """Every rank's picklable `value`, in rank order (`[value]` in a single process)."""
    if not is_distributed():
        return [value]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, value)
    return everyone


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def destroy() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
