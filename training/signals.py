"""A run survives what happens to its terminal.

- Graceful stop on SIGTERM / SIGINT (what schedulers and spot instances send) and SIGHUP
  (an SSH session that drops, a terminal window closed without nohup or tmux). The
  handler only raises a flag (and says so in one line); the training loop finishes the
  step or the evaluation batch in progress, agrees with the other ranks that it should
  stop, writes a checkpoint and exits cleanly.
- A second signal of the same kind ends the process at once, with exit status
  128 + the signal's number and one line saying that no checkpoint was written. It is
  seen by a watcher thread (through `signal.set_wakeup_fd`), so it works even while the
  main thread is stuck in C code, e.g. a collective waiting for a rank that died, where
  Python-level handlers never get to run.
- Output that can no longer be written (a closed terminal gives EIO, a pipe whose reader
  went away gives EPIPE) is dropped instead of raising: `tolerate_lost_output` wraps
  stdout and stderr, so neither training, nor the save, nor `metrics.jsonl` stops for it.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""The signals that ask a run to stop."""


class StopRequest:
    """Remembers whether a stop signal arrived while installed (`with StopRequest() as stop:`)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._previous_wakeup_fd = -1
        self._watcher: tuple[socket.socket, socket.socket, threading.Thread] | None = None

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.signal_name is not None

    @property
    def exit_status(self) -> int:
        """128 + the signal's number, as a shell reports a process ended by it (SIGTERM's when
        the signal came to another rank)."""
        return 128 + signal.Signals[self.signal_name or "SIGTERM"].value

    def __enter__(self) -> StopRequest:
        self.install()
        return self

    def __exit__(self, *_exception) -> None:
        self.uninstall()

    def install(self) -> None:
        """Catch SIGTERM, SIGINT and SIGHUP, and watch for a second one (main thread only)."""
        reader, writer = socket.socketpair()
        writer.setblocking(False)  # the C-level handler must never block on it
        watcher = threading.Thread(target=self._watch, args=(reader,), name="stop-signals", daemon=True)
        watcher.start()
        self._watcher = (reader, writer, watcher)
        self._previous_wakeup_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        """Restore the handlers that were there before and stop the watcher."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._watcher is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            reader, writer, watcher = self._watcher
            writer.shutdown(socket.SHUT_WR)  # the watcher reads the end of the stream and returns
            watcher.join()
            reader.close()
            writer.close()
            self._watcher = None

    def _handle(self, signum: int, _frame) -> None:
        # Runs in the main thread between two bytecodes; the watcher counts the signals.
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            _write_line(f"{self.signal_name}: stopping after the current step or evaluation batch, then saving a "
                        f"checkpoint; send {self.signal_name} again to stop at once without one")

    def _watch(self, reader: socket.socket) -> None:
        """Read the numbers of the signals as they arrive; end the process on the second of a kind."""
        seen: dict[int, int] = {}
        while received := reader.recv(64):
            for signum in received:
                if signum in STOP_SIGNALS:
                    seen[signum] = seen.get(signum, 0) + 1
                    if seen[signum] >= 2:
                        self._exit_now(signal.Signals(signum))

    @staticmethod
    def _exit_now(signum: signal.Signals) -> None:
        _write_line(f"second {signum.name}: stopped at once; no checkpoint was written "
                    "(the run folder keeps the earlier ones)")
        os._exit(128 + signum.value)


def _write_line(text: str) -> None:
    """Write one line to stderr's file descriptor directly: Python's buffered streams may be
    in the middle of a write of the interrupted code (a reentrant write raises)."""
    try:
        os.write(2, (text + "\n").encode())
    except OSError:
        pass  # nobody reads stderr any more: the stop goes on silently


LOST_OUTPUT_ERRORS = (errno.EPIPE, errno.EIO, errno.ENXIO)
"""Write errors that mean nobody reads this stream any more."""


class TolerantStream:
    """A text stream that stops writing, silently, once its reader is gone."""

    def __init__(self, stream):
        self.stream = stream
        self.lost = False

    def write(self, text: str) -> int:
        """Write `text`, or drop it once the stream is lost."""
        if not self.lost:
            try:
                return self.stream.write(text)
            except OSError as error:
                if error.errno not in LOST_OUTPUT_ERRORS:
                    raise
                self.lost = True
        return len(text)

    def flush(self) -> None:
        """Flush, unless the stream is lost."""
        if not self.lost:
            try:
                self.stream.flush()
            except OSError as error:
                if error.errno not in LOST_OUTPUT_ERRORS:
                    raise
                self.lost = True

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def tolerate_lost_output() -> None:
    """Wrap `sys.stdout` and `sys.stderr` in `TolerantStream`s (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, TolerantStream):
            setattr(sys, name, TolerantStream(stream))
