"""Reading raw text corpora for the MLM builder: files, formats, documents, lines.

`expand_input_files` turns `--input-files` (files, quoted globs, folders read recursively)
into a list of files. The format of each file is detected from its content, the name only
breaking ties: the first entry of `FORMATS` whose `matches` accepts the file's first bytes
(plain text, JSON lines, WikiExtractor's `<doc>` blocks, parquet; each entry says how it
is recognised and what one document is). To add a format, write its reader (a
`CorpusReader` method) and its `matches`, and put a `CorpusFormat` in `FORMATS`.

Each may be compressed with gzip, bzip2 or zstandard (detected from the magic bytes; zstd
needs the optional `zstandard`). Every line is normalised by `normalise_line`
(whitespace runs -> one space, stripped); the tokenizer does the rest. Text must be
UTF-8: a file that is not, or that holds NUL bytes (binary data), is a `UserError`
naming the file and the byte offset, unless `--on-bad-line skip` drops and counts such
lines. `Deduplicator` removes exact repeats of documents or paragraphs.

The module also holds the worker side of the builder's tokenisation pool
(`init_tokenizer_worker`, `tokenize_lines`), so that spawned processes import only this.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import hashlib
import html
import io
import json
import os
import re
import shutil
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from core.errors import UserError

DEDUP_MODES = ("documents", "paragraphs", "none")
MAX_DOCUMENT_LINES = 50_000
"""A longer run of lines without a blank line is cut into several documents, so that
memory stays bounded even for a file that has no document breaks at all."""
MAX_LINE_CHARACTERS = 1_000_000
"""A longer line is dropped (and counted): a million characters without a line break is
data (base64, minified code, a table dump), not prose."""
SNIFF_BYTES = 1 << 16
"""Decompressed bytes read to detect a file's format."""
CORPORA_EXTRA = 'pip install -e ".[corpora]"'

_GLOB_CHARACTERS = frozenset("*?[")
_DOC_OPEN = re.compile(r"<doc\b[^>]*>")
_DOC_TITLE = re.compile(r'\btitle="([^"]*)"')
_COMPRESSED_NAMES = (".gz", ".bz2", ".zst")


# ------------------------------------------------------------------------------- files


def expand_input_files(patterns: list[str]) -> list[Path]:
    """Files named by `patterns`, in order, without repeats.

    A pattern is a file, a glob (`**` recursive) or a folder, read recursively in sorted
    order with hidden files and folders (`.name`) skipped. Raises `UserError` for a
    missing path, a glob that matches no file, or a folder without files.
    """
    files: list[Path] = []
    for pattern in patterns:
        if _GLOB_CHARACTERS & set(pattern):
            matches = sorted(Path(match) for match in glob.glob(pattern, recursive=True) if os.path.isfile(match))
            if not matches:
                raise UserError(f"--input-files pattern {pattern!r} matches no file; check the path and the quoting")
            files.extend(matches)
        elif os.path.isdir(pattern):
            found = _folder_files(Path(pattern))
            if not found:
                raise UserError(f"--input-files folder {pattern} holds no file (hidden files are skipped)")
            files.extend(found)
        elif not os.path.isfile(pattern):
            raise UserError(f"--input-files {pattern} does not exist")
        else:
            files.append(Path(pattern))
    return list(dict.fromkeys(files))


def _folder_files(folder: Path) -> list[Path]:
    """Every non-hidden file under `folder`, sorted by path as a quoted `folder/**/*` glob
    would list them (`AA/wiki_00`, `AA/wiki_01`, `AB/wiki_00`)."""
    files = []
    for root, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        files.extend(Path(root) / name for name in names if not name.startswith("."))
    return sorted(files)


def normalise_line(line: str) -> str:
    """Collapse every run of whitespace (Unicode included) to one space and strip the ends."""
    return " ".join(line.split())


# ---------------------------------------------------------------- compression, formats


def _compression(head: bytes) -> str | None:
    """`gzip`, `bz2`, `zstd` or None, from a file's first bytes."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] == b"1AY&SY":
        return "bz2"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return None


def is_compressed(path: Path) -> bool:
    """Whether a file is gzip, bzip2 or zstandard data (from its first bytes)."""
    with open(path, "rb") as raw:
        return _compression(raw.read(10)) is not None


@contextmanager
def open_decompressed(path: Path) -> Iterator[tuple[IO[bytes], IO[bytes]]]:
    """(decompressed binary stream, raw file) of `path`; the raw file's `tell()` is the
    progress on disk. Compression is detected from the magic bytes, not the name."""
    with open(path, "rb") as raw:
        compression = _compression(raw.read(10))
        raw.seek(0)
        if compression is None:
            yield raw, raw
        elif compression == "gzip":
            yield io.BufferedReader(gzip.GzipFile(fileobj=raw)), raw
        elif compression == "bz2":
            yield io.BufferedReader(bz2.BZ2File(raw)), raw
        else:
            yield io.BufferedReader(_zstd_reader(path, raw)), raw


def _zstd_reader(path: Path, raw: IO[bytes]):
    try:
        import zstandard
    except ImportError:
        raise UserError(
            f"{path} is zstd-compressed and the zstandard package is missing: "
            f"pip install zstandard (or {CORPORA_EXTRA})"
        ) from None
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)


@dataclass(frozen=True)
class FileHead:
    """What format detection sees of a file: its first decompressed bytes."""

    path: Path
    head: bytes
    """Up to `SNIFF_BYTES` decompressed bytes."""
    text: str
    """`head` decoded (invalid bytes ignored), leading BOM and whitespace stripped."""

    @property
    def truncated(self) -> bool:
        """Whether the file goes on past `head`."""
        return len(self.head) == SNIFF_BYTES

    @property
    def uncompressed_name(self) -> str:
        """The lowercase file name without a compression suffix (`a.jsonl.gz` -> `a.jsonl`)."""
        name = self.path.name.lower()
        for suffix in _COMPRESSED_NAMES:
            name = name.removesuffix(suffix)
        return name


def detect_format(path: Path) -> str:
    """The name of a file's format: the first of `FORMATS` that matches its first bytes."""
    try:
        with open_decompressed(path) as (stream, _):
            head = stream.read(SNIFF_BYTES)
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{path}: cannot read it ({error}); is the file truncated or corrupt?") from None
    sniffed = FileHead(path, head, head.decode("utf-8", errors="ignore").lstrip("\ufeff \t\r\n"))
    return next(name for name, corpus_format in FORMATS.items() if corpus_format.matches(sniffed))


def _is_parquet(file: FileHead) -> bool:
    """`PAR1` magic bytes; a `.parquet` name without them is an error."""
    if file.head.startswith(b"PAR1"):
        return True
    if file.path.name.lower().endswith(".parquet"):
        raise UserError(f"{file.path} is named .parquet but does not start with PAR1; is it a parquet file?")
    return False


def _is_wikiextractor(file: FileHead) -> bool:
    """A `<doc ...>` tag first."""
    return bool(_DOC_OPEN.match(file.text))


def _is_jsonl(file: FileHead) -> bool:
    """A `.jsonl` name, or a first line that is a JSON object."""
    return file.uncompressed_name.endswith(".jsonl") or _looks_like_json_row(file.text, file.truncated)


def _looks_like_json_row(text: str, truncated: bool) -> bool:
    """Whether the first line of `text` is a JSON object (or the start of a long one)."""
    first, newline, _ = text.partition("\n")
    if not first.startswith("{"):
        return False
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return truncated and not newline and first.startswith('{"')


# ---------------------------------------------------------------------------- reading


@dataclass
class ReadCounters:
    """Running totals of a `CorpusReader` (the builder reports them)."""

    bytes_on_disk: int = 0
    """Bytes of the input files consumed so far (compressed bytes for compressed files)."""
    documents: int = 0
    """Documents yielded so far."""
    bad_lines: int = 0
    """Malformed rows skipped (with `on_bad_line="skip"`): JSON lines, text outside `<doc>` blocks."""
    binary_lines: int = 0
    """Lines with NUL bytes or invalid UTF-8 skipped (with `on_bad_line="skip"`)."""
    long_lines: int = 0
    """Lines longer than `MAX_LINE_CHARACTERS`, dropped."""
    empty_documents: int = 0
    """Rows, `<doc>` blocks and parquet values without any text."""
    files_by_format: dict[str, int] = field(default_factory=dict)
    """Input files read, by detected format."""

    def add(self, other: ReadCounters) -> None:
        """Add another reader's totals (a worker's, for one unit of a build)."""
        for name, value in vars(other).items():
            if name != "files_by_format":
                setattr(self, name, getattr(self, name) + value)
        for kind, count in other.files_by_format.items():
            self.files_by_format[kind] = self.files_by_format.get(kind, 0) + count


class CorpusReader:
    """Streams the documents of a list of files; each document is a list of normalised lines."""

    def __init__(self, files: list[Path], on_bad_line: str = "error", text_field: str = "text"):
        if on_bad_line not in ("skip", "error"):
            raise UserError(f"--on-bad-line must be 'skip' or 'error', not {on_bad_line!r}")
        self.files = files
        self.on_bad_line = on_bad_line
        self.text_field = text_field
        self.counters = ReadCounters()
        self.byte_range: tuple[int, int] | None = None
        """Set by `range_documents`: the [start, stop) of an uncompressed file that `_lines` reads."""
        self._lines_before: int | None = None

    def total_bytes(self) -> int:
        """Size of all input files on disk (the progress bar's total)."""
        return sum(path.stat().st_size for path in self.files)

    def documents(self) -> Iterator[list[str]]:
        """Every document of every file, in file order."""
        for path in self.files:
            yield from self._file_documents(path)

    def _file_documents(self, path: Path) -> Iterator[list[str]]:
        kind = detect_format(path)
        self.counters.files_by_format[kind] = self.counters.files_by_format.get(kind, 0) + 1
        for document in FORMATS[kind].read(self, path):
            self.counters.documents += 1
            yield document

    def documents_with_offsets(self, file_offsets: list[int]) -> Iterator[tuple[int, list[str]]]:
        """(where it starts, document) for every document, in file order. A file's first
        document starts at the file's entry of `file_offsets`; a later one at that plus the
        file's bytes on disk consumed when the document before it was complete. Offsets are
        a function of the file's content alone, and never decrease within a file."""
        for path, file_offset in zip(self.files, file_offsets):
            before = self.counters.bytes_on_disk
            start = file_offset
            for document in self._file_documents(path):
                yield start, document
                start = file_offset + self.counters.bytes_on_disk - before

    def range_documents(self, path: Path, kind: str, start: int, stop: int) -> Iterator[list[str]]:
        """The documents of bytes [start, stop) of an uncompressed file in format `kind`;
        both ends must be places where its reader holds no document (`dataset.text.units.safe_cut`),
        so consecutive ranges give the documents of the whole file. Line numbers in errors
        still count from the file's start."""
        self.byte_range, self._lines_before = (start, stop), None
        try:
            for document in FORMATS[kind].read(self, path):
                self.counters.documents += 1
                yield document
        finally:
            self.byte_range = None

    def _line_label(self, path: Path, line_number: int) -> int:
        """The line number in the whole file of line `line_number` of the range being read
        (counted only when an error needs it)."""
        if self.byte_range is None or self.byte_range[0] == 0:
            return line_number
        if self._lines_before is None:
            with open(path, "rb") as raw:
                self._lines_before = sum(block.count(b"\n") for block in _blocks(raw, self.byte_range[0]))
        return self._lines_before + line_number

    def _paragraphs(self, text: str) -> Iterator[list[str]]:
        """The normalised lines of one row's text, in pieces of at most `MAX_DOCUMENT_LINES`."""
        document = [clean for clean in map(self._clean, text.splitlines()) if clean]
        if not document:
            self.counters.empty_documents += 1
        for start in range(0, len(document), MAX_DOCUMENT_LINES):
            yield document[start : start + MAX_DOCUMENT_LINES]

    def _clean(self, line: str) -> str:
        """The normalised line, or "" for a line too long to be text (counted)."""
        if len(line) > MAX_LINE_CHARACTERS:
            self.counters.long_lines += 1
            return ""
        return normalise_line(line)

    def _text_documents(self, path: Path) -> Iterator[list[str]]:
        document: list[str] = []
        for _, line in self._lines(path):
            blank = not line.strip()
            line = self._clean(line)
            if line:
                document.append(line)
            if document and (blank or len(document) >= MAX_DOCUMENT_LINES):
                yield document
                document = []
        if document:
            yield document

    def _jsonl_documents(self, path: Path) -> Iterator[list[str]]:
        for line_number, line in self._lines(path):
            if not line.strip():
                continue
            text = self._row_text(path, line_number, line)
            if text is not None:
                yield from self._paragraphs(text)

    def _row_text(self, path: Path, line_number: int, line: str) -> str | None:
        """The text field of one JSON-lines row; None for a skipped malformed row."""
        try:
            row = json.loads(line)
            problem = None
        except json.JSONDecodeError as error:
            row, problem = None, f"not valid JSON ({error.msg})"
        if problem is None and not isinstance(row, dict):
            problem = "not a JSON object"
        elif problem is None and not isinstance(row.get(self.text_field), str):
            fields = ", ".join(sorted(row)) or "none"
            problem = f"has no string field {self.text_field!r} (fields: {fields}; choose one with --text-field)"
        if problem is None:
            return row[self.text_field]
        return self._bad_row(f"{path}:{self._line_label(path, line_number)}: row is {problem}")

    def _bad_row(self, message: str) -> None:
        if self.on_bad_line == "error":
            raise UserError(f"{message}; fix it or pass --on-bad-line skip")
        self.counters.bad_lines += 1
        return None

    def _wikiextractor_documents(self, path: Path) -> Iterator[list[str]]:
        """One document per `<doc ...>` ... `</doc>` block, without the title line."""
        document: list[str] | None = None
        title = None
        for line_number, line in self._lines(path):
            stripped = line.strip()
            if document is None:
                if _DOC_OPEN.fullmatch(stripped):
                    found = _DOC_TITLE.search(stripped)
                    document, title = [], html.unescape(found.group(1)) if found else None
                elif stripped:
                    self._bad_row(f"{path}:{self._line_label(path, line_number)}: text outside a <doc> block (is it WikiExtractor output?)")
            elif stripped == "</doc>":
                yield from self._paragraphs("\n".join(document))
                document = None
            elif _DOC_OPEN.fullmatch(stripped):
                self._bad_row(f"{path}:{self._line_label(path, line_number)}: a <doc> block opens inside another (no </doc> before it)")
                yield from self._paragraphs("\n".join(document))
                document = []
            elif title is not None and stripped:  # WikiExtractor repeats the title as the first line
                if normalise_line(html.unescape(stripped)) != normalise_line(title):
                    document.append(line)
                title = None
            else:
                document.append(line)
        if document is not None:
            self._bad_row(f"{path}: the last <doc> block has no </doc> (is the file truncated?)")
            yield from self._paragraphs("\n".join(document))

    def _parquet_documents(self, path: Path) -> Iterator[list[str]]:
        """One document per row of the `--text-field` column."""
        with _seekable_copy(path) as local, _parquet_file(local, path) as parquet:
            names = parquet.schema_arrow.names
            if self.text_field not in names:
                raise UserError(
                    f"{path} has no column {self.text_field!r} (columns: {', '.join(names)}); choose one with --text-field"
                )
            column_type = parquet.schema_arrow.field(self.text_field).type
            if str(column_type) not in ("string", "large_string", "string_view"):
                raise UserError(f"{path}: column {self.text_field!r} holds {column_type}, not text; choose another with --text-field")
            size, total_rows, rows = path.stat().st_size, max(parquet.metadata.num_rows, 1), 0
            consumed = 0
            for batch in parquet.iter_batches(batch_size=1024, columns=[self.text_field]):
                for text in batch.column(0).to_pylist():
                    if text is None:
                        self.counters.empty_documents += 1
                    else:
                        yield from self._paragraphs(text)
                rows += batch.num_rows
                position = size * rows // total_rows
                self.counters.bytes_on_disk += position - consumed
                consumed = position

    def _lines(self, path: Path) -> Iterator[tuple[int, str]]:
        """(1-based line number, decoded line) of a file, or of its `byte_range`; checks
        UTF-8 and binary content."""
        if self.byte_range is not None:
            yield from self._range_lines(path, *self.byte_range)
            return
        with open_decompressed(path) as (stream, raw):
            offset, consumed = 0, 0
            try:
                for line_number, data in enumerate(stream, start=1):
                    text = self._decode(path, data, offset, line_number)
                    if text is not None:
                        yield line_number, text
                    offset += len(data)
                    position = raw.tell()
                    self.counters.bytes_on_disk += position - consumed
                    consumed = position
            except (OSError, EOFError, zlib.error) as error:
                raise UserError(f"{path}: cannot read it ({error}); is the file truncated or corrupt?") from None

    def _range_lines(self, path: Path, start: int, stop: int) -> Iterator[tuple[int, str]]:
        """`_lines` of bytes [start, stop) of an uncompressed file (line numbers from `start`)."""
        with open(path, "rb") as raw:
            raw.seek(start)
            offset = start
            for line_number, data in enumerate(_range_reader(raw, stop - start), start=1):
                text = self._decode(path, data, offset, line_number)
                if text is not None:
                    yield line_number, text
                offset += len(data)
                self.counters.bytes_on_disk += len(data)

    def _decode(self, path: Path, data: bytes, offset: int, line_number: int) -> str | None:
        """One line as text; None for a skipped bad line, else a `UserError` saying where
        the file stops being UTF-8 text."""
        nul = data.find(b"\x00")
        try:
            if nul >= 0:
                raise UserError(f"{path} looks binary (NUL byte at byte offset {offset + nul}); pass text files only")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as error:
                raise UserError(
                    f"{path} is not UTF-8 text (byte offset {offset + error.start}, line {self._line_label(path, line_number)}); "
                    "convert it, e.g. with iconv -t utf-8, or pass --on-bad-line skip"
                ) from None
        except UserError:
            if self.on_bad_line == "error":
                raise
            self.counters.binary_lines += 1
            return None
        if offset == 0 and text.startswith("\ufeff"):
            text = text[1:]
        return text


def _blocks(raw: IO[bytes], size: int, block: int = 1 << 20) -> Iterator[bytes]:
    """The next `size` bytes of `raw`, in blocks."""
    while size > 0:
        data = raw.read(min(block, size))
        if not data:
            return
        size -= len(data)
        yield data


def _range_reader(raw: IO[bytes], size: int) -> Iterator[bytes]:
    """The lines (with their line breaks) of the next `size` bytes of `raw`."""
    pieces: list[bytes] = []  # of a line not yet ended (a long line spans blocks)
    for data in _blocks(raw, size):
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            pieces.append(data[start : end + 1])
            yield b"".join(pieces)
            pieces, start = [], end + 1
        if start < len(data):
            pieces.append(data[start:])
    if pieces:
        yield b"".join(pieces)


@contextmanager
def _seekable_copy(path: Path) -> Iterator[Path]:
    """`path` itself, or for a compressed file a decompressed temporary copy (parquet needs to seek)."""
    if not is_compressed(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="parquet-") as folder:
        local = Path(folder) / "data.parquet"
        with open_decompressed(path) as (stream, _), open(local, "wb") as copy:
            shutil.copyfileobj(stream, copy, 1 << 20)
        yield local


@contextmanager
def _parquet_file(local: Path, path: Path):
    try:
        import pyarrow.parquet
    except ImportError:
        raise UserError(
            f"{path} is a parquet file and the pyarrow package is missing: pip install pyarrow (or {CORPORA_EXTRA})"
        ) from None
    try:
        parquet = pyarrow.parquet.ParquetFile(local)
    except (OSError, ValueError) as error:  # pyarrow.ArrowInvalid is a ValueError
        raise UserError(f"{path} cannot be read as parquet ({error})") from None
    with parquet:
        yield parquet


@dataclass(frozen=True)
class CorpusFormat:
    """One input format of the builder: how a file is recognised and how it is read."""

    matches: Callable[[FileHead], bool]
    """Whether a file's first bytes are in this format (checked in `FORMATS` order)."""
    read: Callable[[CorpusReader, Path], Iterator[list[str]]]
    """The documents of one file (a `CorpusReader` method), each a list of normalised lines."""


FORMATS: dict[str, CorpusFormat] = {
    # one document per row of the --text-field column (Hugging Face datasets; needs pyarrow)
    "parquet": CorpusFormat(_is_parquet, CorpusReader._parquet_documents),
    # one per <doc ...> ... </doc> block of WikiExtractor's output, title line and tags dropped
    "wikiextractor": CorpusFormat(_is_wikiextractor, CorpusReader._wikiextractor_documents),
    # one per row: its --text-field string, cut into paragraphs at line breaks
    "jsonl": CorpusFormat(_is_jsonl, CorpusReader._jsonl_documents),
    # lines up to a blank line (one sentence or paragraph per line, as BERT's corpora)
    "text": CorpusFormat(lambda file: True, CorpusReader._text_documents),
}
"""Input formats by name (the name is what `files_by_format` counts), in detection order:
a file is in the first format that matches it; plain text matches anything."""


# ------------------------------------------------------------------- de-duplication


def _digest(text: str) -> int:
    """A 64-bit key of a text (blake2b): a hash set of these costs far less than the texts."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def document_key(document: list[str]) -> int:
    """The 64-bit key of a document's text: what `--dedup documents` compares, and what a
    dataset stores per document (`documents.npy`) to de-duplicate across parts."""
    return _digest("\n".join(document))


class Deduplicator:
    """Drops exact repeats, after normalisation, of whole documents or of paragraphs (lines).

    `documents`: a document whose lines all equal an earlier document's is dropped.
    `paragraphs`: a line seen before anywhere is dropped, and a document left empty with
    it. Seen texts are kept as 64-bit hashes (two different texts colliding is a chance
    of about n^2 / 2^65, e.g. 3e-4 for 100 million documents).
    """

    def __init__(self, mode: str):
        if mode not in DEDUP_MODES:
            raise UserError(f"--dedup must be one of {', '.join(DEDUP_MODES)}, not {mode!r}")
        self.mode = mode
        self.seen: set[int] = set()
        self.removed_documents = 0
        self.removed_paragraphs = 0

    def keep(self, keys: np.ndarray) -> np.ndarray:
        """bool [documents]: whether each document, given by its `document_key`, remains
        (modes `documents` and `none`; the same decisions as `filter`)."""
        if self.mode == "paragraphs":
            raise ValueError("paragraph de-duplication needs the lines: use filter()")
        if self.mode == "none":
            return np.ones(len(keys), dtype=bool)
        unique, first = np.unique(keys, return_index=True)  # each key's first place in `keys`
        fresh = set(unique.tolist()).difference(self.seen)  # set operations: no Python loop per key
        self.seen.update(fresh)
        kept = np.zeros(len(keys), dtype=bool)
        kept[first[np.isin(unique, np.fromiter(fresh, dtype=np.uint64, count=len(fresh)))]] = True
        self.removed_documents += len(keys) - len(fresh)
        return kept

    def filter(self, documents: Iterator[list[str]]) -> Iterator[list[str]]:
        """The documents that remain, in order."""
        for document in documents:
            if self.mode == "documents":
                key = document_key(document)
                if key in self.seen:
                    self.removed_documents += 1
                    continue
                self.seen.add(key)
            elif self.mode == "paragraphs":
                kept = []
                for line in document:
                    key = _digest(line)
                    if key not in self.seen:
                        self.seen.add(key)
                        kept.append(line)
                self.removed_paragraphs += len(document) - len(kept)
                if not kept:
                    self.removed_documents += 1
                    continue
                document = kept
            yield document


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


# ---------------------------------------------------------------- tokenisation workers

_SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f]+[\"'\u201d\u2019)\]]*(?=\s|$)")
"""The end of a sentence: terminal punctuation, closing quotes or brackets, then a space or the end."""


@dataclass
class TokenizedLines:
    """What a worker returns for a list of lines."""

    ids: np.ndarray
    """int32: every token of the lines, concatenated (no special tokens)."""
    line_lengths: np.ndarray
    """int64: tokens per line."""
    sentences: np.ndarray
    """int32: sentences per line (terminal punctuation, at least one per line)."""
    unknown_characters: dict[str, int]
    """Characters outside the vocabulary's alphabet in lines that produced [UNK] (WordPiece only)."""


@dataclass
class _Worker:
    tokenizer: object
    unk_id: int | None
    alphabet: frozenset[str] | None
    """Single characters the WordPiece vocabulary knows; None for other models."""


_worker: _Worker | None = None


def init_tokenizer_worker(tokenizer_json: str, threads_inside: bool) -> None:
    """Pool initializer: build this process's tokenizer from its JSON serialisation.

    `threads_inside=False` turns off the tokenizer's own thread pool, so that N worker
    processes do not each start one thread per core.
    """
    global _worker
    if not threads_inside:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    alphabet = None
    if json.loads(tokenizer_json)["model"]["type"] == "WordPiece":
        vocab = tokenizer.get_vocab(with_added_tokens=False)
        alphabet = frozenset(token.removeprefix("##") for token in vocab if len(token.removeprefix("##")) == 1)
    _worker = _Worker(tokenizer, tokenizer.token_to_id("[UNK]"), alphabet)


def tokenize_lines(lines: list[str]) -> TokenizedLines:
    """Token ids of `lines` (no special tokens) and the figures the corpus report needs."""
    ids, lengths = encode_lines(lines)
    unknown: Counter[str] = Counter()
    for counts in unknown_characters_by_line(lines, ids, lengths).values():
        unknown.update(counts)
    return TokenizedLines(ids, lengths, sentence_counts(lines), dict(unknown))


def encode_lines(lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(int32 token ids of `lines` concatenated, int64 tokens per line), no special tokens."""
    encodings = _worker.tokenizer.encode_batch_fast(lines, add_special_tokens=False)
    lengths = np.fromiter((len(encoding.ids) for encoding in encodings), dtype=np.int64, count=len(encodings))
    ids = np.fromiter(
        (token for encoding in encodings for token in encoding.ids), dtype=np.int32, count=int(lengths.sum())
    )
    return ids, lengths


def sentence_counts(lines: list[str]) -> np.ndarray:
    """int32 [lines]: sentences per line (terminal punctuation, at least one)."""
    return np.fromiter((max(1, len(_SENTENCE_END.findall(line))) for line in lines), dtype=np.int32, count=len(lines))


def unknown_characters_by_line(lines: list[str], ids: np.ndarray, lengths: np.ndarray) -> dict[int, Counter[str]]:
    """For each line that produced [UNK] (WordPiece only): its characters outside the vocabulary's alphabet."""
    found: dict[int, Counter[str]] = {}
    if _worker.alphabet is not None and _worker.unk_id is not None:
        line_of_token = np.repeat(np.arange(len(lines)), lengths)  # (tokens,)
        for index in np.unique(line_of_token[ids == _worker.unk_id]):
            counts = Counter(char for word in _unknown_words(lines[index]) for char in word
                             if char not in _worker.alphabet)  # fmt: skip
            found[int(index)] = counts
    return found


def _unknown_words(line: str) -> Iterator[str]:
    """The words of a line (normalised, pre-tokenised) that the WordPiece model maps to [UNK]."""
    tokenizer = _worker.tokenizer
    text = tokenizer.normalizer.normalize_str(line) if tokenizer.normalizer is not None else line
    words = [word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text)] if tokenizer.pre_tokenizer else text.split()
    for word in words:
        pieces = tokenizer.model.tokenize(word)
        if len(pieces) == 1 and pieces[0].id == _worker.unk_id:
            yield word
