"""How the MLM builder fills sequences: the lines of a document packed into segments
(`pack_lines`), next-sentence pairs of those segments (`PairMaker`), or the documents of a
split concatenated into full sequences (`FullPacker`). The sequences go to a
`dataset.text.format.ShardWriter`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from core.constants import IGNORE_LABEL_ID
from dataset.stream import seeded_rng
from dataset.text.format import SPLITS, ShardWriter

PACKINGS = ("full", "documents")
"""`--packing` values: documents concatenated (`FullPacker`), or one document per sequence."""
NSP_RANDOM_POOL = 10_000
"""Segments of recent documents kept per split to draw random NSP segments from."""
NSP_STREAM_KEY = 17
_MARKER = -1
"""Stands for the empty last place of a sequence closed early (`FullPacker.add_documents`)."""


def pack_lines(lines: list[np.ndarray], capacity: int) -> list[np.ndarray]:
    """Pack consecutive lines (token ids) into segments of at most `capacity` tokens.

    A line that does not fit in the room left starts a new segment; a line longer than a
    whole segment fills the room left and continues in the following segments. Nothing
    is dropped: concatenating the segments gives back the lines. Segments are copies.
    """
    segments: list[np.ndarray] = []
    current: list[np.ndarray] = []
    used = 0
    for line in lines:
        if used and capacity - used < len(line) <= capacity:
            segments.append(np.concatenate(current))
            current, used = [], 0
        while len(line) > capacity - used:
            current.append(line[: capacity - used])
            segments.append(np.concatenate(current))
            line, current, used = line[capacity - used :], [], 0
        if len(line):
            current.append(line)
            used += len(line)
    if current:
        segments.append(np.concatenate(current))
    return segments


class _SegmentPool:
    """A ring of the most recent segments of one split, to draw random NSP segments from."""

    def __init__(self, size: int):
        self.size = size
        self.segments: list[np.ndarray] = []
        self.next = 0

    def add(self, segment: np.ndarray) -> None:
        if len(self.segments) < self.size:
            self.segments.append(segment)
        else:
            self.segments[self.next] = segment
        self.next = (self.next + 1) % self.size

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        return self.segments[int(rng.integers(len(self.segments)))]


class PairMaker:
    """NSP pairs of the segments of each document, the label a fair coin per pair.

    Label 1: B is a segment of an earlier document of the same split (the current
    segment's successor then becomes the next A, so no text is skipped). Label 0: B is
    the next segment; for the last segment of a document, which has none, A and B are
    its two halves, cut at the line (else word) boundary nearest its middle. A last
    segment of a single word gets a random B (label 1), or, when the split has no
    earlier document yet, no B at all (label -100).
    """

    def __init__(self, seed: int, continuation: np.ndarray, pool_size: int = NSP_RANDOM_POOL):
        self.rng = seeded_rng(seed, NSP_STREAM_KEY)
        self.continuation = continuation
        """bool [vocab]: tokens that continue a word (`##x`), never the first token of B."""
        self.pools = {split: _SegmentPool(pool_size) for split in SPLITS}

    def pairs(
        self, segments: list[np.ndarray], line_lengths: list[int], split: str
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None, int]]:
        """(A, B, label) for one document: label 0 = B follows A, 1 = B is random, -100 = no B."""
        pool = self.pools[split]
        index = 0
        while index < len(segments):
            if self.rng.random() < 0.5 and pool.segments:
                yield segments[index], pool.draw(self.rng), 1
                index += 1
            elif index + 1 < len(segments):
                yield segments[index], segments[index + 1], 0
                index += 2
            elif cut := self._cut(segments[index], line_lengths):
                yield segments[index][:cut], segments[index][cut:], 0
                index += 1
            elif pool.segments:  # a single word cannot be halved
                yield segments[index], pool.draw(self.rng), 1
                index += 1
            else:
                yield segments[index], None, IGNORE_LABEL_ID
                index += 1
        for segment in segments:
            pool.add(segment)

    def _cut(self, last_segment: np.ndarray, line_lengths: list[int]) -> int:
        """Where to halve the last segment: the line start, else word start, nearest its
        middle; 0 when it is a single word."""
        length = len(last_segment)
        line_ends = np.cumsum(line_lengths)
        starts = line_ends - (line_ends[-1] - length)  # line ends, relative to the segment
        candidates = starts[(starts > 0) & (starts < length)]
        if not len(candidates):
            candidates = 1 + np.flatnonzero(~self.continuation[last_segment[1:]])
        if not len(candidates):
            return 0
        return int(candidates[np.argmin(np.abs(candidates - length / 2))])


class FullPacker:
    """The documents of one split as one token stream, [SEP] between two documents, cut
    into sequences of `capacity` tokens (RoBERTa's FULL-SENTENCES, MosaicBERT).

    Every sequence but the last of a split is full, except where a document ends one
    token short of the end: that sequence closes with its own [SEP] rather than [SEP] [SEP].
    A sequence never starts with the separator.
    """

    def __init__(self, writer: ShardWriter, capacity: int, sep_id: int):
        self.writer, self.capacity = writer, capacity
        self.separator = np.array([sep_id], dtype=np.int32)
        self.pending: list[np.ndarray] = []
        self.size = 0

    def add(self, lines: list[np.ndarray]) -> None:
        """Append one document (its lines' token ids) to the stream."""
        num_tokens = sum(len(line) for line in lines)
        if num_tokens == 0:
            return
        if self.size == self.capacity - 1:
            self._write_pending()
        elif self.size:
            self.pending.append(self.separator)
            self.size += 1
        self.pending.extend(lines)
        self.size += num_tokens
        if self.size >= self.capacity:
            stream = np.concatenate(self.pending)
            full = len(stream) - len(stream) % self.capacity
            for start in range(0, full, self.capacity):
                self.writer.add(stream[start : start + self.capacity])
            self.pending = [stream[full:]] if full < len(stream) else []
            self.size = len(stream) - full

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """`add` for many documents at once: `tokens` holds them one after another, `lengths`
        (int64) their sizes. The same sequences as `add`, assembled with array operations:
        a separator goes before a document that continues a sequence, and a document that
        would start one token short of the end closes the sequence early (a marker takes
        that last place, so that the stream cuts into sequences every `capacity` tokens)."""
        lengths = lengths[lengths > 0]
        tokens = tokens.astype(np.int64)
        size, extra = self.size, np.zeros(len(lengths), dtype=np.int64)  # extra: 0, separator 1, marker 2
        for index, length in enumerate(lengths.tolist()):
            if size == self.capacity - 1:
                extra[index], size = 2, 0
            elif size:
                extra[index], size = 1, size + 1
            size = (size + length) % self.capacity
        where = (np.cumsum(lengths) - lengths)[extra > 0]
        inserted = np.where(extra[extra > 0] == 1, int(self.separator[0]), _MARKER)
        stream = np.concatenate([*(part.astype(np.int64) for part in self.pending), np.insert(tokens, where, inserted)])
        full = len(stream) - len(stream) % self.capacity
        rows = stream[:full].reshape(-1, self.capacity)  # (rows, capacity)
        self.writer.add_rows(rows[rows != _MARKER], self.capacity - (rows[:, -1] == _MARKER).astype(np.int64))
        self.pending = [stream[full:].astype(np.int32)] if full < len(stream) else []
        self.size = len(stream) - full

    def finish(self) -> None:
        """Write the last, partly filled sequence."""
        if self.size:
            self._write_pending()

    def state_dict(self) -> tuple[list[np.ndarray], int]:
        """The tokens waiting for the next sequence (what a resumed build restores)."""
        return list(self.pending), self.size

    def load_state_dict(self, state: tuple[list[np.ndarray], int]) -> None:
        self.pending, self.size = list(state[0]), state[1]

    def _write_pending(self) -> None:
        self.writer.add(np.concatenate(self.pending))
        self.pending, self.size = [], 0
