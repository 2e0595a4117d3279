"""The MLM builder's units of work: its inputs cut into byte ranges (`plan_units`) that
worker processes read, key, tokenise and pack on their own (`process_unit`), so that the
main process is left with the de-duplication lookups and the shard writes.

An uncompressed plain-text, JSON-lines or WikiExtractor file is cut about every
`UNIT_BYTES` at a *safe cut* (`safe_cut`): the end of the first line, at or after the
nominal place, after which the format's reader holds no document (a blank line for plain
text, any line end for JSON lines, a `</doc>` line for WikiExtractor). Reading the ranges
one after another therefore gives exactly the documents of reading the whole file. A
compressed or parquet file cannot be entered in the middle, so it is one unit (a plain-
text file without a single blank line is one unit too).

`--part K --num-parts N` takes the documents of the K-th of N equal byte ranges of all the
inputs: in a file that can be cut, those between the safe cuts of the range's two ends;
in one that cannot, those that start inside the range (offsets as
`CorpusReader.documents_with_offsets` counts them, at most the file's last byte), read
from the file's start.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from dataset.text import corpus as text_corpus
from dataset.text.corpus import CorpusReader, ReadCounters, document_fraction, document_key
from dataset.text.format import place_rows
from dataset.text.packing import pack_lines
from dataset.text.report import word_flags
from dataset.text.tokenizer import continuation_mask

UNIT_BYTES = 1 << 22
"""Nominal bytes per unit (4 MiB): small enough for an even spread over 64 workers and a
few in flight per worker, large enough that a unit's fixed costs do not count."""
SCAN_BLOCK = 1 << 16
"""Bytes read at a time while looking for a safe cut."""
_WHITESPACE = rb"[ \t\r\x0b\x0c]*"
CUT_AFTER = {
    "text": re.compile(rb"\n" + _WHITESPACE + rb"\n"),
    "jsonl": re.compile(rb"\n"),
    "wikiextractor": re.compile(rb"\n" + _WHITESPACE + rb"</doc>" + _WHITESPACE + rb"\n"),
}
"""Per format that can be cut: a line whose end is a safe cut, with the line break before
it (ASCII whitespace only, a subset of what the readers take for blank)."""
_CARRY = 64
"""Bytes of a partly read line kept between scan blocks (a blank or `</doc>` line is short)."""


@dataclass(frozen=True)
class Unit:
    """One byte range of one input file, read by one worker."""

    path: str
    kind: str
    """The file's format (a `dataset.text.corpus.FORMATS` name)."""
    start: int
    stop: int
    whole_file: bool
    """Read the file from its start and keep the documents that start in [start, stop)
    (a file that cannot be cut: all of it in a build of one part); else read bytes
    [start, stop) only."""
    first_of_file: bool
    """Whether this unit counts the file in the read counters' formats."""


def plan_units(files: list[Path], part: int = 0, num_parts: int = 1, unit_bytes: int | None = None) -> list[Unit]:
    """The units of part `part` of `num_parts` of `files`, in reading order."""
    unit_bytes = unit_bytes or UNIT_BYTES
    sizes = [path.stat().st_size for path in files]
    offsets = np.cumsum([0] + sizes)  # (F + 1,) where each file starts, and the end
    total = int(offsets[-1])
    first, last = total * part // num_parts, total * (part + 1) // num_parts
    units: list[Unit] = []
    for path, size, offset in zip(files, sizes, offsets[:-1].tolist()):
        if num_parts > 1 and not (offset < last and offset + size > first):
            continue
        low, high = max(first - offset, 0), min(last - offset, size)
        kind = text_corpus.detect_format(path)
        if kind not in CUT_AFTER or text_corpus.is_compressed(path):
            units.append(Unit(str(path), kind, low, high, whole_file=True, first_of_file=True))
            continue
        with open(path, "rb") as raw:
            cuts = _cuts(raw, CUT_AFTER[kind], low, high, size, unit_bytes)
        units.extend(Unit(str(path), kind, start, stop, whole_file=False, first_of_file=index == 0)
                     for index, (start, stop) in enumerate(zip(cuts, cuts[1:])))  # fmt: skip
    return units


def _cuts(raw: IO[bytes], pattern: re.Pattern, low: int, high: int, size: int, unit_bytes: int) -> list[int]:
    """Safe cuts from the one at `low` to the one at `high`, about `unit_bytes` apart."""
    cuts, stop = [safe_cut(raw, pattern, low, size)], safe_cut(raw, pattern, high, size)
    while cuts[-1] < stop:
        cuts.append(min(safe_cut(raw, pattern, cuts[-1] + unit_bytes, size), stop))
    return cuts


def safe_cut(raw: IO[bytes], pattern: re.Pattern, position: int, size: int) -> int:
    """The first place at or after `position` where a unit may start: the end of the first
    match of `pattern` that begins at `position - 1` or later (0 and `size` are cuts)."""
    if position <= 0 or position >= size:
        return max(0, min(position, size))
    raw.seek(position - 1)
    carry, at = b"", position - 1  # `at`: the file offset of carry's first byte
    while data := raw.read(SCAN_BLOCK):
        buffer = carry + data
        found = pattern.search(buffer)
        if found:
            return at + found.end()
        line_start = buffer.rfind(b"\n")
        carry = buffer[line_start:] if 0 <= line_start and len(buffer) - line_start <= _CARRY else b""
        at += len(buffer) - len(carry)
    return size


def unit_documents(reader: CorpusReader, unit: Unit) -> list[list[str]]:
    """The documents of one unit, read with `reader` (its counters count them)."""
    path = Path(unit.path)
    if not unit.whole_file:
        if unit.first_of_file:
            reader.counters.files_by_format[unit.kind] = reader.counters.files_by_format.get(unit.kind, 0) + 1
        return list(reader.range_documents(path, unit.kind, unit.start, unit.stop))
    reader.files = [path]
    # A compressed file is read ahead, so late documents may seem to start at its very end:
    # they count as starting at its last byte.
    last = path.stat().st_size - 1
    return [document for start, document in reader.documents_with_offsets([0]) if unit.start <= min(start, last) < unit.stop]


# ------------------------------------------------------------------------ worker side


@dataclass(frozen=True)
class UnitWork:
    """What every unit of a build asks of its worker besides reading."""

    on_bad_line: str
    text_field: str
    seed: int
    layouts: tuple[tuple[int, int], ...]
    """(sequence length, text tokens per row) of each length (`--packing documents`); empty
    with `--packing full`, which needs the documents' tokens instead."""
    dtype: str
    """How token ids are sent back (the shards' storage dtype)."""
    special_ids: tuple[int, int, int]
    """[PAD], [CLS] and [SEP]: rows are sent back laid out as the shards hold them."""
    keys_only: bool = False
    """Read and key the documents only (a resumed build replaying its finished units)."""


@dataclass
class Packed:
    """The rows of one sequence length of a unit's documents (`pack_lines`), laid out as in a shard."""

    rows: np.ndarray
    """(rows, L) in the storage dtype: `[CLS] text [SEP]` and padding (`place_rows`)."""
    row_lengths: np.ndarray
    """int64 [rows]."""
    rows_per_document: np.ndarray
    """int64 [documents]."""


@dataclass
class UnitResult:
    """A unit's documents as the main process needs them (one entry per document, in order)."""

    counters: ReadCounters
    keys: np.ndarray
    """uint64 [documents]: `document_key` of each document."""
    test_fractions: np.ndarray
    """float64 [documents]: `document_fraction(..., "test-split")` of each document."""
    lines_per_document: np.ndarray | None = None
    """int64 [documents]."""
    line_counts: np.ndarray | None = None
    """int64 [len(LINE_COUNTS), lines]: the report's counts of each line."""
    unknown_characters: dict[int, Counter[str]] | None = None
    """Per line that produced [UNK]: its characters outside the vocabulary."""
    tokens: np.ndarray | None = None
    """Every token of the documents, concatenated (`--packing full`)."""
    packed: list[Packed] | None = None
    """Per sequence length (`--packing documents`)."""

    @property
    def document_tokens(self) -> np.ndarray:
        """int64 [documents]: text tokens per document (every document has a line)."""
        if not len(self.keys):
            return np.zeros(0, dtype=np.int64)
        return np.add.reduceat(self.line_counts[0], np.cumsum(self.lines_per_document) - self.lines_per_document)


LINE_COUNTS = ("text_tokens", "sentences", "unknown_tokens", "words", "split_words")
"""The rows of `UnitResult.line_counts` (`dataset.text.report.ReportCounter` names)."""


@dataclass
class _UnitWorker:
    work: UnitWork
    continuation: np.ndarray | None


_unit_worker: _UnitWorker | None = None


def init_unit_worker(tokenizer_json: str, work: UnitWork, threads_inside: bool) -> None:
    """Pool initializer: this process's tokenizer and what its units ask."""
    global _unit_worker
    text_corpus.init_tokenizer_worker(tokenizer_json, threads_inside)
    _unit_worker = _UnitWorker(work, continuation_mask(text_corpus._worker.tokenizer))


def process_unit(unit: Unit) -> UnitResult:
    """Read, key, tokenise and pack one unit (in a worker, or in the builder's own process)."""
    work = _unit_worker.work
    reader = CorpusReader([Path(unit.path)], work.on_bad_line, work.text_field)
    documents = unit_documents(reader, unit)
    keys = np.fromiter((document_key(document) for document in documents), dtype=np.uint64, count=len(documents))
    fractions = np.fromiter((document_fraction(document, work.seed, "test-split") for document in documents),
                            dtype=np.float64, count=len(documents))  # fmt: skip
    result = UnitResult(reader.counters, keys, fractions)
    if work.keys_only:
        return result
    lines = [line for document in documents for line in document]
    ids, lengths = text_corpus.encode_lines(lines)
    result.lines_per_document = np.fromiter(map(len, documents), dtype=np.int64, count=len(documents))
    result.line_counts = _line_counts(ids, lengths, text_corpus.sentence_counts(lines))
    result.unknown_characters = text_corpus.unknown_characters_by_line(lines, ids, lengths)
    if work.layouts:
        result.packed = [_pack(ids, lengths, result.lines_per_document, layout, work)
                         for layout in work.layouts]  # fmt: skip
    else:
        result.tokens = ids.astype(work.dtype)
    return result


def _line_counts(ids: np.ndarray, lengths: np.ndarray, sentences: np.ndarray) -> np.ndarray:
    """`LINE_COUNTS` of each line, counted as `ReportCounter.add` counts a chunk."""
    starts_word, split_word = word_flags(ids, _unit_worker.continuation)  # (tokens,) each
    line_of_token = np.repeat(np.arange(len(lengths)), lengths)  # (tokens,)

    def per_line(flags: np.ndarray) -> np.ndarray:
        return np.bincount(line_of_token, weights=flags, minlength=len(lengths)).astype(np.int64)

    unknown = ids == text_corpus._worker.unk_id if text_corpus._worker.unk_id is not None else np.zeros_like(starts_word)
    return np.stack([lengths, sentences.astype(np.int64), per_line(unknown), per_line(starts_word), per_line(split_word)])


def _pack(ids: np.ndarray, lengths: np.ndarray, lines_per_document: np.ndarray, layout: tuple[int, int],
          work: UnitWork) -> Packed:  # fmt: skip
    """Each document's lines packed into rows of at most `capacity` text tokens, laid out in rows of `seq_len`."""
    (seq_len, capacity), (pad_id, cls_id, sep_id), dtype = layout, work.special_ids, work.dtype
    line_ids = np.split(ids.astype(dtype), np.cumsum(lengths)[:-1]) if len(lengths) else []
    rows: list[np.ndarray] = []
    rows_per_document = np.zeros(len(lines_per_document), dtype=np.int64)
    first = 0
    for index, count in enumerate(lines_per_document.tolist()):
        segments = pack_lines(line_ids[first : first + count], capacity)
        rows.extend(segments)
        rows_per_document[index] = len(segments)
        first += count
    row_lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    laid_out = np.full((len(rows), seq_len), pad_id, dtype=dtype)
    place_rows(laid_out, np.concatenate(rows) if rows else np.zeros(0, dtype=dtype), row_lengths, cls_id, sep_id)
    return Packed(laid_out, row_lengths, rows_per_document)
