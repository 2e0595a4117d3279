"""Reading raw text corpora for the MLM builder: files, documents, lines.

Accepted inputs (optionally gzip-compressed, `name.txt.gz`):

- `.jsonl`: one JSON object per line with a string field `text`; each row is one
  document, and its text is cut into paragraphs at line breaks.
- anything else is plain text: one sentence or paragraph per line, documents separated
  by blank lines (the layout of the original BERT corpora).

Every line is normalised by `normalise_line` (whitespace runs -> one space, stripped);
lines that end up empty are dropped. The tokenizer does the rest of the normalisation.
Text must be UTF-8; a file that is not (or that holds NUL bytes, i.e. binary data) is a
`UserError` naming the file and the byte offset.

The module also holds the worker side of the builder's tokenisation pool
(`init_tokenizer_worker`, `tokenize_lines`), so that spawned processes import only this.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import UserError

MAX_DOCUMENT_LINES = 50_000
"""A longer run of lines without a blank line is cut into several documents, so that
memory stays bounded even for a file that has no document breaks at all."""

_GLOB_CHARACTERS = frozenset("*?[")


def expand_input_files(patterns: list[str]) -> list[Path]:
    """Files named by `patterns` (paths or globs, `**` recursive), in order, without repeats.

    Raises `UserError` for a missing file, a folder, or a glob that matches no file.
    """
    files: list[Path] = []
    for pattern in patterns:
        if _GLOB_CHARACTERS & set(pattern):
            matches = sorted(Path(match) for match in glob.glob(pattern, recursive=True) if os.path.isfile(match))
            if not matches:
                raise UserError(f"--input-files pattern {pattern!r} matches no file; check the path and the quoting")
            files.extend(matches)
        elif os.path.isdir(pattern):
            raise UserError(f"--input-files {pattern} is a folder; pass its files, e.g. '{pattern}/**/*.txt'")
        elif not os.path.isfile(pattern):
            raise UserError(f"--input-files {pattern} does not exist")
        else:
            files.append(Path(pattern))
    return list(dict.fromkeys(files))


def normalise_line(line: str) -> str:
    """Collapse every run of whitespace (Unicode included) to one space and strip the ends."""
    return " ".join(line.split())


def is_jsonl(path: Path) -> bool:
    """Whether `path` is read as JSON lines (`.jsonl`, `.jsonl.gz`) rather than plain text."""
    name = path.name.lower()
    return name.endswith(".jsonl") or name.endswith(".jsonl.gz")


def document_fraction(lines: list[str], seed: int, purpose: str) -> float:
    """A number in [0, 1) fixed by the document's text, the seed and a purpose string.

    Used to decide per document (without a global list of documents) whether it goes to
    the test split or into the tokenizer's training sample; identical documents always
    get the same number, so duplicates never straddle the train/test boundary.
    """
    digest = hashlib.blake2b(digest_size=8, key=f"{purpose}:{seed}".encode())
    for line in lines:
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return int.from_bytes(digest.digest(), "little") / 2.0**64


@dataclass
class ReadCounters:
    """Running totals of a `CorpusReader` (the builder reports them)."""

    bytes_on_disk: int = 0
    """Bytes of the input files consumed so far (compressed bytes for `.gz`)."""
    documents: int = 0
    """Documents yielded so far."""
    bad_lines: int = 0
    """Malformed JSON-lines rows skipped (with `on_bad_line="skip"`)."""


class CorpusReader:
    """Streams the documents of a list of files; each document is a list of normalised lines."""

    def __init__(self, files: list[Path], on_bad_line: str = "error"):
        if on_bad_line not in ("skip", "error"):
            raise UserError(f"--on-bad-line must be 'skip' or 'error', not {on_bad_line!r}")
        self.files = files
        self.on_bad_line = on_bad_line
        self.counters = ReadCounters()

    def total_bytes(self) -> int:
        """Size of all input files on disk (the progress bar's total)."""
        return sum(path.stat().st_size for path in self.files)

    def documents(self) -> Iterator[list[str]]:
        """Every document of every file, in file order."""
        for path in self.files:
            reader = self._jsonl_documents if is_jsonl(path) else self._text_documents
            for document in reader(path):
                self.counters.documents += 1
                yield document

    def _text_documents(self, path: Path) -> Iterator[list[str]]:
        document: list[str] = []
        for _, line in self._lines(path):
            line = normalise_line(line)
            if line:
                document.append(line)
            if document and (not line or len(document) >= MAX_DOCUMENT_LINES):
                yield document
                document = []
        if document:
            yield document

    def _jsonl_documents(self, path: Path) -> Iterator[list[str]]:
        for line_number, line in self._lines(path):
            if not line.strip():
                continue
            text = self._row_text(path, line_number, line)
            if text is None:
                continue
            document = [clean for clean in map(normalise_line, text.splitlines()) if clean]
            for start in range(0, len(document), MAX_DOCUMENT_LINES):
                yield document[start : start + MAX_DOCUMENT_LINES]

    def _row_text(self, path: Path, line_number: int, line: str) -> str | None:
        """The `text` field of one JSON-lines row; None for a skipped malformed row."""
        try:
            row = json.loads(line)
            problem = None
        except json.JSONDecodeError as error:
            row, problem = None, f"not valid JSON ({error.msg})"
        if problem is None and not isinstance(row, dict):
            problem = "not a JSON object"
        elif problem is None and not isinstance(row.get("text"), str):
            problem = "has no string field 'text'"
        if problem is None:
            return row["text"]
        if self.on_bad_line == "error":
            raise UserError(f"{path}:{line_number}: row is {problem}; fix it or pass --on-bad-line skip")
        self.counters.bad_lines += 1
        return None

    def _lines(self, path: Path) -> Iterator[tuple[int, str]]:
        """(1-based line number, decoded line) of a file; checks UTF-8 and binary content."""
        with open(path, "rb") as raw:
            stream = io.BufferedReader(gzip.GzipFile(fileobj=raw)) if path.name.lower().endswith(".gz") else raw
            offset, consumed = 0, 0
            try:
                for line_number, data in enumerate(stream, start=1):
                    yield line_number, _decode(path, data, offset, line_number)
                    offset += len(data)
                    position = raw.tell()
                    self.counters.bytes_on_disk += position - consumed
                    consumed = position
            except (OSError, EOFError, zlib.error) as error:
                raise UserError(f"{path}: cannot read it ({error}); is the file truncated or not gzip?") from None


def _decode(path: Path, data: bytes, offset: int, line_number: int) -> str:
    """One line as text, or a `UserError` saying where the file stops being UTF-8 text."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise UserError(f"{path} looks binary (NUL byte at byte offset {offset + nul}); pass text files only")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path} is not UTF-8 text (byte offset {offset + error.start}, line {line_number}); "
            "convert it, e.g. with iconv -t utf-8"
        ) from None
    if offset == 0 and text.startswith("\ufeff"):
        text = text[1:]
    return text


# ---------------------------------------------------------------- tokenisation workers

_worker_tokenizer = None


def init_tokenizer_worker(tokenizer_json: str, threads_inside: bool) -> None:
    """Pool initializer: build this process's tokenizer from its JSON serialisation.

    `threads_inside=False` turns off the tokenizer's own thread pool, so that N worker
    processes do not each start one thread per core.
    """
    global _worker_tokenizer
    if not threads_inside:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _worker_tokenizer = Tokenizer.from_str(tokenizer_json)


def tokenize_lines(lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of `lines` (no special tokens): (all ids concatenated int32, ids per line int64)."""
    encodings = _worker_tokenizer.encode_batch_fast(lines, add_special_tokens=False)
    lengths = np.fromiter((len(encoding.ids) for encoding in encodings), dtype=np.int64, count=len(encodings))
    ids = np.fromiter(
        (token for encoding in encodings for token in encoding.ids), dtype=np.int32, count=int(lengths.sum())
    )
    return ids, lengths
