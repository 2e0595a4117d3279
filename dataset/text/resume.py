"""Resumable MLM builds: a stop (SIGTERM, SIGINT) or a kill (SIGKILL, power loss) loses at
most the work since the last commit, and `--resume` finishes the build with the same bytes
as an uninterrupted one.

A build writes into a hidden folder `.<name>.partial` beside `--output-dir` and renames it
to `--output-dir` only when it is complete. In it, `resume.json` records the options and
the tokenizer (saved before any shard, so a resumed build never retrains it: WordPiece
training is not deterministic), and `journal.pkl` the last commit: how many steps are
done and the packing state after them (partly filled shards, NSP segment pools, packers,
report counts). A step is a unit of the inputs (`dataset.text.units`, about 4 MB, cut at
fixed places), or with `--nsp` or `--dedup paragraphs` a chunk of the document stream
(`dataset.text.builder.CHUNK_CHARACTERS` of text). A commit happens after each step that
completed a shard, and when a stop is asked; the journal is replaced atomically, so a
kill leaves either the old commit or the new one. Shards written after the last commit
are written again, identically, on resume. The rows of shards not yet complete are not
in the journal: each commit appends those added since the one before to the shard's
hidden `<split>/.pending_<shard>.*` files (`ShardWriter.state_dict`), so a commit costs
what changed, not a whole shard buffer (16 MB at length 128, 64 MB at 512, per split
and length); the finished build removes them.

A resumed build reads the documents of the committed steps again without tokenising them
(the workers read and key the units; reading runs far faster than tokenising), which
rebuilds the de-duplication set and the read counters exactly, then loads the journal and
continues.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.files import fsync_path, write_json

JOURNAL = "journal.pkl"
RECORD = "resume.json"
KILL_ENV = "MLM_BUILD_TEST_KILL"
"""Test hook: `after:N` (`before:N`) makes the builder SIGKILL itself right after (before)
its N-th commit of this run; `SIGTERM:N` and `SIGINT:N` send that signal after it."""


class BuildStopped(UserError):
    """A build stopped by a signal; its committed work waits in the partial folder."""


def partial_folder(output_dir: str | os.PathLike) -> Path:
    """Where a build of `output_dir` writes until it is complete."""
    final = Path(output_dir)
    return final.with_name(f".{final.name}.partial")


@dataclass
class StopRequest:
    """Set by SIGTERM or SIGINT while installed: the builder commits and stops at its next chunk."""

    signal_name: str | None = None
    previous: dict[int, Any] = field(default_factory=dict)

    def _handle(self, number: int, _frame) -> None:
        self.signal_name = signal.Signals(number).name

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Catch SIGTERM and SIGINT during the block (only in the main thread, where Python allows it)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for number in (signal.SIGTERM, signal.SIGINT):
            self.previous[number] = signal.signal(number, self._handle)
        try:
            yield self
        finally:
            for number, handler in self.previous.items():
                signal.signal(number, handler)

    def check(self, output_dir: str) -> None:
        """Raise `BuildStopped` when a stop was asked for."""
        if self.signal_name is not None:
            raise BuildStopped(
                f"build stopped by {self.signal_name}; its committed work is in {partial_folder(output_dir)}: "
                "run the same command with --resume to finish it"
            )


class BuildJournal:
    """The partial folder of one build: its record (options, tokenizer) and its commits."""

    def __init__(self, output_dir: str, fingerprint: dict[str, Any], stop: StopRequest):
        self.output_dir, self.folder = output_dir, partial_folder(output_dir)
        self.fingerprint, self.stop = fingerprint, stop
        self.commits = 0
        self.kill_when, _, count = os.environ.get(KILL_ENV, ":").partition(":")
        self.kill_at = int(count) if count else None

    def open(self, resume: bool, overwrite: bool) -> dict[str, Any] | None:
        """Check the partial folder to resume (or clear a stale one); the stored tokenizer record, if any."""
        if resume and not self.folder.is_dir():
            raise UserError(f"--resume: there is no stopped build of {self.output_dir} (no {self.folder}); "
                            "run the command without --resume")  # fmt: skip
        if not resume and self.folder.exists():
            if not overwrite:
                raise UserError(f"a stopped build of {self.output_dir} waits in {self.folder}: add --resume to "
                                "finish it, or --overwrite to start again")  # fmt: skip
            shutil.rmtree(self.folder)
        record = self.record()
        if record is not None and record["options"] != self.fingerprint:
            changed = sorted(key for key in self.fingerprint if record["options"].get(key) != self.fingerprint[key])
            raise UserError(f"--resume: the stopped build in {self.folder} used other options ({', '.join(changed)}); "
                            "rerun it with the same options, or use --overwrite to start again")  # fmt: skip
        return record and record["tokenizer"]

    def record(self) -> dict[str, Any] | None:
        path = self.folder / RECORD
        return _read_json(path) if path.is_file() else None

    def save_record(self, tokenizer: dict[str, Any]) -> None:
        """Store the options and the tokenizer's record, once the tokenizer files are written."""
        write_json(self.folder / RECORD, {"options": self.fingerprint, "tokenizer": tokenizer})

    def load(self) -> tuple[int, Any]:
        """(chunks done, packing state) of the last commit; (0, None) when there is none."""
        path = self.folder / JOURNAL
        if not path.is_file():
            return 0, None
        with open(path, "rb") as handle:
            entry = pickle.load(handle)
        return entry["chunks"], entry["state"]

    def commit(self, chunks: int, state: Any) -> None:
        """Replace the journal atomically with (chunks done, packing state)."""
        self._test_kill("before")
        temporary = self.folder / f".{JOURNAL}.tmp"
        with open(temporary, "wb") as handle:
            pickle.dump({"chunks": chunks, "state": state}, handle, protocol=pickle.HIGHEST_PROTOCOL)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.folder / JOURNAL)
        self.commits += 1
        self._test_kill("after")

    def _test_kill(self, moment: str) -> None:
        if self.kill_at is None or self.commits + (moment == "before") != self.kill_at:
            return
        if self.kill_when == moment:
            os.kill(os.getpid(), signal.SIGKILL)
        elif moment == "after" and self.kill_when in ("SIGTERM", "SIGINT"):
            os.kill(os.getpid(), signal.Signals[self.kill_when])

    def finish(self, overwrite: bool) -> None:
        """Drop the journal and record, and move the complete folder to `output_dir`."""
        final = Path(self.output_dir)
        if final.exists() and not overwrite:
            raise BuildStopped(f"output folder {final} appeared during the build; move it away and run with --resume")
        # The journal goes first and the record last, just before the rename: a kill in
        # between resumes from the start with the saved tokenizer, never a retrained one.
        (self.folder / JOURNAL).unlink(missing_ok=True)
        for path in self.folder.rglob("*"):
            fsync_path(path)
        (self.folder / RECORD).unlink()
        if final.exists():
            trash = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(trash)
            self.folder.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            self.folder.rename(final)

    def abandon(self) -> None:
        """After an error that is not a stop: remove the partial folder (nothing half-written stays)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
