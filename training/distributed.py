"""Process-group set-up and the few collectives the loop needs.

One process per device. Under `torchrun` the environment names the rank and world size;
GPUs use NCCL and CPUs gloo. Without `torchrun` everything runs in one process and no
process group is created: every helper here then degenerates to a no-op.
"""

from __future__ import annotations

import inspect
import os
import time
from dataclasses import dataclass
from pathlib import Path

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
    process may use, minus those other jobs keep busy *now* (`busy_cores_now`), shared by the processes of this
    machine (torchrun's LOCAL_WORLD_SIZE)."""
    if requested is not None:
        return requested, "cpu_threads"
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"])), "OMP_NUM_THREADS"
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    busy, source = busy_cores_now(cpus)
    threads = threads_for(len(cpus), busy, processes)
    return threads, f"{len(cpus)} cores, {busy:.1f} busy ({source}), {processes} process(es) here; cpu_threads=N to choose"


def threads_for(cores: int, busy: float, processes: int) -> int:
    """The free cores (rounded), shared by `processes`; at least 1."""
    free = max(1, int(cores - busy + 0.5))
    return max(1, min(cores, free) // processes)


CPU_SAMPLE_SECONDS = 0.15
"""How long `busy_cores_now` watches the CPUs: long enough to average over scheduler ticks, short at start-up."""


def busy_cores_now(cpus: list[int], read_stat=None, sleep=time.sleep) -> tuple[float, str]:
    """(cores kept busy by other processes now, where that figure came from).

    Linux: the CPU time the kernel counts on `cpus` (this process's cores, /proc/stat) over
    `CPU_SAMPLE_SECONDS`, while this process sleeps. Not the load average: it lags by minutes,
    so a run started right after a dataset build would still count the finished build.
    Without /proc (macOS), the 1-minute load average, the best figure there is.
    """
    read_stat = read_stat or _read_proc_stat
    before = read_stat()
    if before is not None:
        sleep(CPU_SAMPLE_SECONDS)
        after = read_stat()
        busy = sum(_busy_fraction(before.get(cpu), after.get(cpu)) for cpu in cpus)
        return busy, f"CPU time over the last {CPU_SAMPLE_SECONDS:g} s"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return load, "1-minute load average"


def _read_proc_stat() -> dict[int, tuple[int, int]] | None:
    """Per CPU number: (idle, total) time in ticks from /proc/stat; None where there is no /proc/stat."""
    try:
        text = Path("/proc/stat").read_text(encoding="ascii")
    except OSError:
        return None
    return parse_proc_stat(text)


def parse_proc_stat(text: str) -> dict[int, tuple[int, int]]:
    """The `cpuN` lines of /proc/stat as {N: (idle + iowait ticks, all ticks)}; guest time is
    already inside user time, so the first eight columns are the total."""
    times = {}
    for line in text.splitlines():
        name, *columns = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(column) for column in columns[:8]]
            times[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
    return times


def _busy_fraction(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float:
    """Share of the interval one CPU was not idle (0 when unknown or no tick passed)."""
    if before is None or after is None or after[1] <= before[1]:
        return 0.0
    idle, total = after[0] - before[0], after[1] - before[1]
    return min(1.0, max(0.0, 1.0 - idle / total))


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum of `tensor` over ranks, in place, and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def wrap_ddp(model: torch.nn.Module, context: DistContext) -> torch.nn.parallel.DistributedDataParallel:
    """`model` under DistributedDataParallel, its gradients *summed* over ranks.

    The loss is already normalised by global counts (see `training.loop`), so the sum of
    the ranks' gradients is the global batch's gradient; DDP's default average would
    divide it by the number of processes. Buffers are not broadcast before each forward: the only one that
    changes (TRM's puzzle-embedding table) is kept equal on every rank by the sparse
    optimiser, which gathers its rows itself.
    """
    wrapped = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[context.device.index] if context.device.type == "cuda" else None,
        gradient_as_bucket_view=True, **_no_buffer_sync_in_forward(),
    )
    wrapped.register_comm_hook(None, _sum_gradients)
    return wrapped


def _no_buffer_sync_in_forward() -> dict[str, bool]:
    """DDP's keyword for "do not broadcast buffers before each forward". torch 2.13 renamed it
    `forward_sync_buffers` (and warns on the old `broadcast_buffers`); the new one still copies
    rank 0's buffers once at start, which changes nothing here: every rank builds or restores
    the same ones."""
    parameters = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in parameters else {"broadcast_buffers": False}


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
