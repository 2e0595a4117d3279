"""Graceful stop on SIGTERM / SIGINT (what schedulers and spot instances send).

The handler only raises a flag; the training loop finishes the step in progress, agrees
with the other ranks that it should stop, writes a checkpoint and exits cleanly. A second
signal of the same kind restores the default behaviour, so pressing Ctrl-C twice still
kills a stuck run.
"""

from __future__ import annotations

import signal


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
        """Catch SIGTERM and SIGINT (main thread only)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
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
