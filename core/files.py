"""Atomic writes: a reader sees the old content or the new, never half of either; and
small metadata files read once per process.

`atomic_file` writes a file, `atomic_folder` a folder, both through a hidden temporary
beside the target that is renamed over it only when complete. With `durable=True` a
folder's files are flushed to disk (fsync) before the rename, so a crash or power loss
right after cannot leave an empty or truncated target either (checkpoints use it).

`read_once` serves a file's bytes from memory after its first read while the file keeps
its size and modification time: a dataset's `dataset.json` (megabytes for 10,000 shards,
on a shared file system that 256 ranks hit at once) is wanted at start-up, by the
training stream, by each evaluation and by each checkpoint's copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from core.errors import UserError


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[IO[str]]:
    """Open a temporary text file (UTF-8) beside `path`; it replaces `path` only if the block succeeds."""
    final = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.close(handle)
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            yield file
        os.chmod(temporary, 0o644)  # mkstemp makes it private; results are meant to be shared
        os.replace(temporary, final)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Write `value` as indented JSON, atomically."""
    with atomic_file(path) as file:
        json.dump(value, file, indent=2)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8), atomically."""
    with atomic_file(path) as file:
        file.write(text)


_READ_ONCE: dict[str, tuple[int, int, bytes]] = {}
"""Absolute path -> (size, modification time in ns, bytes) of the files `read_once` has read."""


def read_once(path: str | os.PathLike) -> bytes:
    """The bytes of `path`, opened at most once per process while its size and modification
    time stay the same (a rewritten file is read again); meant for small metadata files."""
    key = os.path.abspath(path)
    status = os.stat(key)
    cached = _READ_ONCE.get(key)
    if cached is None or cached[:2] != (status.st_size, status.st_mtime_ns):
        with open(key, "rb") as file:
            cached = (status.st_size, status.st_mtime_ns, file.read())
        _READ_ONCE[key] = cached
    return cached[2]


@contextlib.contextmanager
def atomic_folder(
    output_dir: str | os.PathLike, overwrite: bool = False, tag: str = "tmp", durable: bool = False
) -> Iterator[Path]:
    """Yield a hidden temporary folder `.<name>.<tag>-*` beside `output_dir`; rename it on success.

    Refuses an existing `output_dir` unless `overwrite`, in which case the old folder is
    replaced only after the new one is complete. On any error the temporary folder is
    removed and `output_dir` is left as it was.
    """
    final = Path(output_dir)
    if final.exists() and not overwrite:
        raise UserError(f"output folder {final} already exists; choose another --output-dir or pass --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.{tag}-", dir=final.parent))
    temporary.chmod(0o755)  # mkdtemp makes it private; a dataset folder is meant to be shared
    try:
        yield temporary
        if durable:
            for path in temporary.rglob("*"):
                fsync_path(path)
            fsync_path(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(trash)
        temporary.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        temporary.rename(final)
    if durable:
        fsync_path(final.parent)


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
