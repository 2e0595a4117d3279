"""Feeding the device: batches read ahead in a background thread, so the GPU never waits
for the data stream (numpy slicing, masking) or for the host-to-device copy.

`device_batches(stream, device)` yields `DeviceBatch`es: the numpy batch (for counting),
its tensors on the device, and the stream's state *after that batch*. A checkpoint must
store that state, not the stream's own `state_dict()`, which is ahead by the batches
read in advance; resuming then serves exactly the batch after the last one trained on.

On CUDA a `Prefetcher` thread reads `depth` batches ahead, pins them and starts their
copies on a side CUDA stream; the consumer's stream waits on an event before using them.
Elsewhere (CPU) batches are read synchronously: there is no separate device to overlap
with, and a thread would only compete with the compute for the same cores.

A stream that trims each rank's batch to its own rows (`TrainStream.column_padding`) is
widened to the step's common width by `widened_to_every_rank`, in the loop's thread: it
holds a collective, which must not run in the reading thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from dataset.stream import Batch, TrainStream
from training import distributed


@dataclass
class DeviceBatch:
    """One training batch on its way to the device."""

    host: Batch
    """The numpy batch as the stream returned it (for counting tokens without a sync)."""
    device: dict[str, torch.Tensor]
    """Its tensors on the device; on CUDA, copies issued on a side stream (see `ready`)."""
    stream_state: dict[str, int]
    """The stream's position right after this batch: what a checkpoint must store."""
    ready: torch.cuda.Event | None = None
    """Recorded after the copies; the consuming stream waits on it (CUDA only)."""


def to_device(batch: Batch, device: torch.device, pin: bool) -> dict[str, torch.Tensor]:
    """Numpy arrays -> tensors on `device` (pinned first and copied asynchronously if `pin`)."""
    tensors = {}
    for key, array in batch.items():
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if pin:
            tensor = tensor.pin_memory()
        tensors[key] = tensor.to(device, non_blocking=pin)
    return tensors


class PlainBatches:
    """Read, convert and hand over one batch at a time, in the caller's thread."""

    def __init__(self, stream: TrainStream, device: torch.device):
        self.stream = stream
        self.device = device
        self.last: DeviceBatch | None = None

    def __iter__(self) -> PlainBatches:
        return self

    def __next__(self) -> DeviceBatch:
        host = self.stream.next_batch()
        self.last = DeviceBatch(host, to_device(host, self.device, pin=False), self.stream.state_dict())
        return self.last

    def close(self) -> None:
        """Nothing to stop."""


class Prefetcher:
    """A background thread that keeps `depth` batches read (pinned and copying, on CUDA).

    The thread is the only reader of `stream` while the prefetcher is open (it runs
    ahead: checkpoints use each batch's `stream_state`); `close()` stops it and rewinds
    the stream to just after the last batch handed out. An exception in the thread is raised again by `__next__`. Meant
    for CUDA; on CPU it runs the same read-ahead without copies (used by the tests).
    """

    def __init__(self, stream: TrainStream, device: torch.device, depth: int = 2):
        self.stream = stream
        self.device = device
        self.last: DeviceBatch | None = None
        self._start_state = stream.state_dict()
        self._cuda = device.type == "cuda"
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._copy_stream = torch.cuda.Stream(device) if self._cuda else None
        self._thread = threading.Thread(target=self._run, name="batch-prefetcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            if self._cuda:
                torch.cuda.set_device(self.device)
            while not self._stop.is_set():
                host = self.stream.next_batch()
                state = self.stream.state_dict()
                self._put(self._ship(host, state))
        except Exception as error:  # handed to the consumer, which raises it
            self._put(error)

    def _ship(self, host: Batch, state: dict[str, int]) -> DeviceBatch:
        """Start the batch's copies to the device on the side stream."""
        if not self._cuda:
            return DeviceBatch(host, to_device(host, self.device, pin=False), state)
        with torch.cuda.stream(self._copy_stream):
            tensors = to_device(host, self.device, pin=True)
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        return DeviceBatch(host, tensors, state, ready)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> DeviceBatch:
        item = self._queue.get()
        if isinstance(item, Exception):
            raise item
        self.last = item
        if not self._cuda:
            return item
        consumer = torch.cuda.current_stream(self.device)
        consumer.wait_event(item.ready)
        for tensor in item.device.values():
            # The tensors were allocated on the copy stream; tell the allocator the
            # consumer uses them, so their memory is not reused before it is done.
            tensor.record_stream(consumer)
        return item

    def close(self) -> None:
        """Stop the thread, drop the batches read ahead and rewind the stream to just
        after the last batch handed out, so it can be read or saved again directly."""
        self._stop.set()
        self._thread.join()
        self.stream.load_state_dict(self.last.stream_state if self.last is not None else self._start_state)


def widened(tensors: dict[str, torch.Tensor], width: int, column_padding: dict[str, int]) -> dict[str, torch.Tensor]:
    """`tensors` with each (b, w < width) one padded on the right to `width` columns of
    its key's `column_padding` value (other tensors as they are)."""
    wide = {}
    for key, value in tensors.items():
        if value.ndim != 2 or value.shape[1] >= width:
            wide[key] = value
            continue
        wide[key] = torch.full((value.shape[0], width), column_padding[key], dtype=value.dtype, device=value.device)
        wide[key][:, : value.shape[1]] = value
    return wide


def widened_to_every_rank(item: DeviceBatch, column_padding: dict[str, int] | None,
                          device: torch.device) -> DeviceBatch:
    """`item` with its (b, width) arrays widened to the widest batch any rank holds for this
    step (`TrainStream.column_padding`): one all-reduce of one number with several processes,
    none with one. Call it in the main thread, once per step, in step order: every rank
    must reach the collective at the same point of its program."""
    if column_padding is None or not distributed.is_distributed():
        return item
    local = max(value.shape[1] for value in item.host.values() if value.ndim == 2)
    width = int(distributed.all_reduce_max(torch.tensor(local, device=device)).item())
    if width == local:
        return item
    # The host batch too: the FLOPs of the step are counted on its shape.
    host = widened({key: torch.from_numpy(value) for key, value in item.host.items() if value.ndim == 2}, width,
                   column_padding)
    return replace(item, host={**item.host, **{key: value.numpy() for key, value in host.items()}},
                   device=widened(item.device, width, column_padding))


def device_batches(stream: TrainStream, device: torch.device) -> Iterator[DeviceBatch]:
    """The loop's batches: a `Prefetcher` on CUDA, `PlainBatches` elsewhere (both have `close`)."""
    if device.type == "cuda":
        return Prefetcher(stream, device)
    return PlainBatches(stream, device)
