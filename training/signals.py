"""A run survives what happens to its terminal.

- Graceful stop on SIGTERM / SIGINT (what schedulers and spot instances send) and SIGHUP
  (an SSH session that drops, a terminal window closed without nohup or tmux). The
  handler only raises a flag; the training loop finishes the step in progress, agrees
  with the other ranks that it should stop, writes a checkpoint and exits cleanly. A
  second signal of the same kind restores the default behaviour, so pressing Ctrl-C twice
  still kills a stuck run.
- Output that can no longer be written (a closed terminal gives EIO, a pipe whose reader
  went away gives EPIPE) is dropped instead of raising: `tolerate_lost_output` wraps
  stdout and stderr, so neither training, nor the save, nor `metrics.jsonl` stops for it.
"""

from __future__ import annotations

import errno
import signal
import sys


class StopRequest:
    """Remembers whether a stop signal arrived since `install()`."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.signal_name is not None

    def install(self) -> None:
        """Catch SIGTERM, SIGINT and SIGHUP (main thread only)."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        """Restore the handlers that were there before."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame) -> None:
        if self.requested:
            signal.signal(signum, signal.SIG_DFL)
        self.signal_name = signal.Signals(signum).name


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
