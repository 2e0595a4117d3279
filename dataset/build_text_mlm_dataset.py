"""Build a masked-language-model dataset (BERT pretraining) from raw text.

    python dataset/build_text_mlm_dataset.py --input-files data/sample.txt \
        --output-dir data/sample-mlm --vocab-size 30000 --max-seq-length 512 --mask-prob 0.15

    # a demo corpus that exists on every machine (Python standard library docstrings):
    python -m dataset.demo_corpus --output data/stdlib-docs.txt
    python dataset/build_text_mlm_dataset.py --input-files data/stdlib-docs.txt \
        --output-dir data/stdlib-mlm --max-seq-length 128 --nsp

    # WikiExtractor output (folders AA/, AB/, ... of wiki_00, wiki_01, ...), read recursively:
    python dataset/build_text_mlm_dataset.py --input-files data/wiki --output-dir data/wiki-mlm \
        --max-seq-length 128 --num-workers 8

Inputs (`--input-files`: files, quoted globs with `**` recursive, or folders read
recursively with hidden files skipped). Each file's format is detected from its content
(`dataset/text/corpus.py`): plain text with one sentence or paragraph per line and blank
lines between documents; JSON lines with a `--text-field` per row (one document per row);
WikiExtractor's `<doc>` blocks (one document per block, title line and tags dropped);
parquet (`--text-field` column, one document per row; needs pyarrow). Each may be gzip,
bzip2 or zstd compressed (zstd needs zstandard; `pip install -e ".[corpora]"` adds both).
Exact repeats of documents (`--dedup documents`, the default) or paragraphs are removed
before the split, so no duplicate crosses it.

The tokenizer is a WordPiece vocabulary trained on the corpus (default; on a sample of
`--tokenizer-sample-mb` for large corpora), a word-level vocabulary of the most frequent
words (`--tokenizer whitespace`), or an existing `tokenizer.json` / `vocab.txt` / folder.

Packing (`--packing`): `full` concatenates the documents of a split with [SEP] between
them and cuts the stream into full sequences `[CLS] ... [SEP]` (RoBERTa's
FULL-SENTENCES); `documents` (the default) packs consecutive lines of one document into
`[CLS] A [SEP]` (or, with `--nsp`, `[CLS] A [SEP] B [SEP]`, B the real continuation or,
half the time, a segment of another document of the same split), a line that does not fit
starting the next sequence. Either way nothing is dropped: without `--nsp`, decoding every
sequence of both splits gives back the text. `documents` stays the default because, at an
equal number of steps, `full` did not give a better held-out accuracy while each of its
steps costs ~1.4x the compute (benchmarks/RESULTS.md, mlm_packing; BERT_TRAINING.md).

At the end the builder prints a corpus and vocabulary report (documents, sentences and
tokens per split, duplicates and dropped lines, [UNK] rate, word pieces per word, unknown
characters, fill rate), stores it in dataset.json and report.txt, and warns in one line
when the vocabulary does not fit the text.

Documents stream through a bounded pipeline (tokenised in `--num-workers` processes) into
numpy shards, so memory does not grow with the corpus. Each document goes to the test
split by a seeded hash of its text (the first document always trains). The layout of
the output folder is described in `dataset/text/format.py`.

Reproducibility: with the same tokenizer and seed, a build is bit-identical, whatever
`--num-workers`. Training a WordPiece vocabulary is not: the `tokenizers` library
breaks ties between equally frequent merges in hash-map order (huggingface/tokenizers
issue #1794), so two trainings on the same text can differ in a few rare tokens. To
rebuild exactly, pass the first build's vocabulary back: `--tokenizer OLD/tokenizer`.
The word-level (`whitespace`) vocabulary is deterministic.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from core.cli import argument_parser
from core.constants import IGNORE_LABEL_ID
from core.errors import UserError, run_cli
from core.files import atomic_folder, write_json, write_text
from dataset.stream import seeded_rng
from dataset.text import corpus as text_corpus
from dataset.text.corpus import DEDUP_MODES, CorpusReader, Deduplicator, document_fraction, expand_input_files
from dataset.text.format import SPLITS, MLMDatasetMetadata
from dataset.text.masking import Masker
from dataset.text.report import ReportCounter, render_report
from dataset.text.tokenizer import (
    SPECIAL_TOKENS,
    TokenizerChoice,
    continuation_mask,
    id_dtype,
    load_tokenizer,
    new_tokenizer,
    save_tokenizer,
)

DEFAULT_VOCAB_SIZE = 30000
CHUNK_CHARACTERS = 1 << 20
"""Text per tokenisation task (about 1 MB): large enough to amortise the process hop."""
NSP_RANDOM_POOL = 10_000
"""Segments of recent documents kept per split to draw random NSP segments from."""
STATIC_MASK_STREAM_KEY = 13
STATIC_MASK_BLOCK_ROWS = 4096
NSP_STREAM_KEY = 17
PACKINGS = ("full", "documents")


# ------------------------------------------------------------------------------ options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options (see `--help`)."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--input-files", nargs="+", required=True,
                        help="files, quoted globs or folders: text, jsonl, WikiExtractor, parquet; .gz/.bz2/.zst")
    parser.add_argument("--output-dir", required=True, help="dataset folder to create")
    parser.add_argument("--vocab-size", type=int, default=None, help=f"trained vocabulary size ({DEFAULT_VOCAB_SIZE})")
    parser.add_argument("--max-seq-length", type=int, default=512, help="tokens per sequence, specials included")
    parser.add_argument("--mask-prob", type=float, default=0.15, help="masking rate recorded for dynamic masking")
    parser.add_argument("--test-split", type=float, default=0.05, help="fraction of documents in the test split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, NSP pairs and static masks")
    parser.add_argument(
        "--tokenizer", default="wordpiece", help="'wordpiece' (train), 'whitespace' (word-level), or a PATH to reuse"
    )
    parser.add_argument("--tokenizer-sample-mb", type=float, default=100.0, help="text to train the vocabulary on")
    parser.add_argument(
        "--lowercase", action=argparse.BooleanOptionalAction, default=None, help="trained tokenizers (default: on)"
    )
    parser.add_argument("--nsp", action="store_true", help="sentence pairs with next-sentence labels")
    parser.add_argument("--static-masking", action="store_true", help="mask once at build time (stored)")
    parser.add_argument("--num-workers", type=int, default=1, help="tokenisation processes (1: in this process)")
    parser.add_argument("--shard-size", type=int, default=65536, help="sequences per shard file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")
    parser.add_argument("--on-bad-line", choices=("skip", "error"), default="error",
                        help="malformed rows, binary or non-UTF-8 lines: stop, or drop and count them")
    parser.add_argument("--text-field", default="text", help="the text's JSON field or parquet column")
    parser.add_argument("--dedup", choices=DEDUP_MODES, default="documents",
                        help="remove exact repeats of documents or paragraphs before the split")
    parser.add_argument("--packing", choices=PACKINGS, default=None,
                        help="full: documents concatenated, [SEP] between; documents (default): one "
                             "document per sequence")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Reject option values that cannot work, naming the option to change."""
    if args.max_seq_length < 8:
        raise UserError(f"--max-seq-length {args.max_seq_length} is too short; use 8 or more (BERT uses 128 or 512)")
    if not 0.0 < args.mask_prob < 1.0:
        raise UserError(f"--mask-prob {args.mask_prob} must be between 0 and 1 (exclusive); BERT uses 0.15")
    if not 0.0 <= args.test_split < 1.0:
        raise UserError(f"--test-split {args.test_split} must be in [0, 1), e.g. 0.05")
    if args.vocab_size is not None and args.vocab_size <= len(SPECIAL_TOKENS):
        raise UserError(
            f"--vocab-size {args.vocab_size} leaves no room next to the {len(SPECIAL_TOKENS)} special tokens; use more"
        )
    for name in ("num_workers", "shard_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.tokenizer_sample_mb <= 0:
        raise UserError("--tokenizer-sample-mb must be positive")
    if args.packing is None:
        args.packing = "documents"
    if args.nsp and args.packing == "full":
        raise UserError("--packing full cannot make next-sentence pairs; use --packing documents with --nsp")
    if Path(args.output_dir).exists() and not args.overwrite:
        raise UserError(
            f"output folder {args.output_dir} already exists; choose another --output-dir or pass --overwrite"
        )


# ---------------------------------------------------------------------------- tokenizer


def train_tokenizer(args: argparse.Namespace, files: list[Path]) -> TokenizerChoice:
    """Train a WordPiece or word-level vocabulary on (a sample of) the corpus.

    The sample keeps each document with probability `--tokenizer-sample-mb` / input size
    (on-disk size, so compressed inputs give a larger sample), decided by a seeded hash.
    """
    lowercase = True if args.lowercase is None else args.lowercase
    vocab_size = args.vocab_size or DEFAULT_VOCAB_SIZE
    tokenizer, trainer_class = new_tokenizer(args.tokenizer, lowercase)
    trainer = trainer_class(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    reader = CorpusReader(files, args.on_bad_line, args.text_field)
    total = reader.total_bytes()
    fraction = min(1.0, args.tokenizer_sample_mb * 1e6 / max(total, 1))

    def sample() -> Iterator[list[str]]:
        with tqdm(total=total, unit="B", unit_scale=True, desc="training tokenizer", disable=None) as bar:
            for document in Deduplicator(args.dedup).filter(reader.documents()):
                bar.update(reader.counters.bytes_on_disk - bar.n)
                if fraction >= 1.0 or document_fraction(document, args.seed, "tokenizer-sample") < fraction:
                    yield document

    tokenizer.train_from_iterator(sample(), trainer=trainer)
    if reader.counters.documents == 0:
        raise UserError(f"no text in --input-files {' '.join(map(str, files))}; they are empty")
    if tokenizer.get_vocab_size() > vocab_size:
        raise UserError(
            f"--vocab-size {vocab_size} is too small: the {len(SPECIAL_TOKENS)} special tokens and the corpus "
            f"alphabet alone need {tokenizer.get_vocab_size()}; use --vocab-size {tokenizer.get_vocab_size()} or more"
        )
    return TokenizerChoice(tokenizer, args.tokenizer, lowercase)


# ------------------------------------------------------------------------------ packing


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


# ------------------------------------------------------------------------------- shards


class ShardWriter:
    """Writes the sequences of one split into fixed-size numpy shards."""

    def __init__(self, folder: Path, args: argparse.Namespace, special_ids: dict[str, int], dtype, masker):
        self.folder = folder
        self.folder.mkdir(parents=True)
        self.shard_size, self.seq_len, self.dtype = args.shard_size, args.max_seq_length, dtype
        self.nsp, self.masker, self.seed = args.nsp, masker, args.seed
        self.pad_id, self.cls_id, self.sep_id = special_ids["[PAD]"], special_ids["[CLS]"], special_ids["[SEP]"]
        self.ids = np.full((self.shard_size, self.seq_len), self.pad_id, dtype=dtype)  # (S, L)
        self.nsp_labels = np.zeros(self.shard_size, dtype=np.int8)  # (S,)
        self.rows = 0
        self.names: list[str] = []
        self.num_sequences = self.num_tokens = 0

    def add(self, segment_a: np.ndarray, segment_b: np.ndarray | None = None, label: int = IGNORE_LABEL_ID) -> None:
        """Append `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]` (and its NSP label)."""
        row = self.ids[self.rows]
        end = 1 + len(segment_a)
        row[0], row[1:end], row[end] = self.cls_id, segment_a, self.sep_id
        end += 1
        if segment_b is not None:
            row[end : end + len(segment_b)] = segment_b
            end += len(segment_b)
            row[end] = self.sep_id
            end += 1
        self.nsp_labels[self.rows] = label
        self.rows += 1
        self.num_tokens += end
        if self.rows == self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as the next shard (and its companions)."""
        if self.rows == 0:
            return
        name = f"shard_{len(self.names):05d}"
        ids = self.ids[: self.rows]  # (n, L)
        np.save(self.folder / f"{name}.npy", ids)
        if self.nsp:
            np.save(self.folder / f"{name}.nsp.npy", self.nsp_labels[: self.rows])
        if self.masker is not None:
            masked, labels = self._static_masks(ids, len(self.names))
            np.save(self.folder / f"{name}.masked.npy", masked)
            np.save(self.folder / f"{name}.labels.npy", labels)
        self.names.append(f"{name}.npy")
        self.num_sequences += self.rows
        self.ids.fill(self.pad_id)
        self.rows = 0

    def _static_masks(self, ids: np.ndarray, shard_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Masked ids (storage dtype) and labels (int32) of a shard, masked in blocks of rows
        (each with its own seeded generator) so that memory stays small for large shards."""
        masked = np.empty_like(ids)  # (n, L)
        labels = np.empty(ids.shape, dtype=np.int32)  # (n, L)
        split_key = SPLITS.index(self.folder.name)
        for block, start in enumerate(range(0, len(ids), STATIC_MASK_BLOCK_ROWS)):
            stop = start + STATIC_MASK_BLOCK_ROWS
            rng = seeded_rng(self.seed, STATIC_MASK_STREAM_KEY, split_key, shard_index, block)
            masked[start:stop], labels[start:stop] = self.masker(ids[start:stop], rng)
        return masked, labels


# ------------------------------------------------------------------------- full packing


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

    def finish(self) -> None:
        """Write the last, partly filled sequence."""
        if self.size:
            self._write_pending()

    def _write_pending(self) -> None:
        self.writer.add(np.concatenate(self.pending))
        self.pending, self.size = [], 0


# ----------------------------------------------------------------------------- pipeline


@dataclass
class _Chunk:
    """Documents tokenised together: their line counts, splits and (once tokenised) ids."""

    lines_per_document: list[int]
    splits: list[str]
    lines: list[str] | None = None
    tokens: text_corpus.TokenizedLines | None = None

    def documents(self) -> Iterator[tuple[str, list[np.ndarray]]]:
        """(split, token ids of each line) per document."""
        line_lengths = self.tokens.line_lengths
        line_ends = np.cumsum(line_lengths)
        line_pieces = np.split(self.tokens.ids, line_ends[:-1]) if len(line_lengths) else []
        first = 0
        for split, count in zip(self.splits, self.lines_per_document):
            yield split, line_pieces[first : first + count]
            first += count

    def split_of_line(self) -> np.ndarray:
        """int64 [lines]: the index in SPLITS of each line's split."""
        return np.repeat([SPLITS.index(split) for split in self.splits], self.lines_per_document)


def _chunks(documents: Iterator[list[str]], args: argparse.Namespace) -> Iterator[_Chunk]:
    """Documents grouped into chunks of about `CHUNK_CHARACTERS`, each with its split decided."""
    chunk, size = _Chunk([], [], []), 0
    for number, document in enumerate(documents):
        is_test = (
            args.test_split > 0
            and number > 0  # the first document always trains, so a tiny corpus still has a train split
            and document_fraction(document, args.seed, "test-split") < args.test_split
        )
        chunk.splits.append("test" if is_test else "train")
        chunk.lines_per_document.append(len(document))
        chunk.lines.extend(document)
        size += sum(map(len, document))
        if size >= CHUNK_CHARACTERS:
            yield chunk
            chunk, size = _Chunk([], [], []), 0
    if chunk.splits:
        yield chunk


def tokenized_chunks(chunks: Iterator[_Chunk], tokenizer: Tokenizer, num_workers: int) -> Iterator[_Chunk]:
    """Tokenise chunks in order, in this process or in a pool with a bounded number in flight."""
    if num_workers == 1:
        text_corpus.init_tokenizer_worker(tokenizer.to_str(), threads_inside=True)
        for chunk in chunks:
            chunk.tokens = text_corpus.tokenize_lines(chunk.lines)
            chunk.lines = None
            yield chunk
        return
    # Spawned (not forked) workers: the tokenizers library's thread pool does not survive a fork.
    context = multiprocessing.get_context("spawn")
    initargs = (tokenizer.to_str(), False)
    with context.Pool(num_workers, initializer=text_corpus.init_tokenizer_worker, initargs=initargs) as pool:
        pending = deque()
        for chunk in chunks:
            pending.append((chunk, pool.apply_async(text_corpus.tokenize_lines, (chunk.lines,))))
            chunk.lines = None
            if len(pending) >= 2 * num_workers:  # bounded: the reader never runs far ahead
                yield _finished(*pending.popleft())
        while pending:
            yield _finished(*pending.popleft())


def _finished(chunk: _Chunk, result) -> _Chunk:
    chunk.tokens = result.get()
    return chunk


@dataclass
class BuildStats:
    """What the summary and the report need besides the shards."""

    reader: CorpusReader
    deduplicator: Deduplicator
    counter: ReportCounter
    num_documents: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    seconds: float = 0.0


def write_shards(
    args: argparse.Namespace, files: list[Path], choice: TokenizerChoice, writers: dict[str, ShardWriter]
) -> BuildStats:
    """Stream every document through de-duplication, tokenisation and packing into the split writers."""
    started = time.perf_counter()
    continuation = continuation_mask(choice.tokenizer)  # (V,) which ids continue a word
    stats = BuildStats(
        CorpusReader(files, args.on_bad_line, args.text_field), Deduplicator(args.dedup),
        ReportCounter(continuation, choice.special_ids["[UNK]"]),
    )  # fmt: skip
    reader = stats.reader
    pair_maker = PairMaker(args.seed, continuation) if args.nsp else None
    packers = {}
    if args.packing == "full":
        packers = {split: FullPacker(writers[split], args.max_seq_length - 2, choice.special_ids["[SEP]"])
                   for split in SPLITS}  # fmt: skip
    capacity = (args.max_seq_length - 3) // 2 if args.nsp else args.max_seq_length - 2
    chunks = _chunks(stats.deduplicator.filter(reader.documents()), args)
    with tqdm(total=reader.total_bytes(), unit="B", unit_scale=True, desc="building", disable=None) as bar:
        for chunk in tokenized_chunks(chunks, choice.tokenizer, args.num_workers):
            tokens = chunk.tokens
            stats.counter.add(chunk.split_of_line(), tokens.ids, tokens.line_lengths, tokens.sentences,
                              tokens.unknown_characters)  # fmt: skip
            for split, lines in chunk.documents():
                stats.num_documents[split] += 1
                if packers:
                    packers[split].add(lines)
                elif pair_maker is None:
                    for segment in pack_lines(lines, capacity):
                        writers[split].add(segment)
                else:
                    line_lengths = [len(line) for line in lines]
                    for segment_a, segment_b, label in pair_maker.pairs(pack_lines(lines, capacity), line_lengths, split):
                        writers[split].add(segment_a, segment_b, label)
            bar.update(reader.counters.bytes_on_disk - bar.n)
    for packer in packers.values():
        packer.finish()
    for writer in writers.values():
        writer.flush()
    stats.seconds = time.perf_counter() - started
    return stats


def build(args: argparse.Namespace, files: list[Path], choice: TokenizerChoice, folder: Path) -> MLMDatasetMetadata:
    """Write the tokenizer, the shards, dataset.json and report.txt into `folder`; returns the metadata."""
    vocab_sha256 = save_tokenizer(choice, folder / "tokenizer", args.max_seq_length)
    vocab_size = choice.tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = id_dtype(vocab_size)
    ids = choice.special_ids
    special = [ids[token] for token in SPECIAL_TOKENS]
    masker = Masker(vocab_size, special, ids["[MASK]"], args.mask_prob) if args.static_masking else None
    writers = {split: ShardWriter(folder / split, args, ids, dtype, masker) for split in SPLITS}
    stats = write_shards(args, files, choice, writers)
    if writers["train"].num_sequences == 0:
        raise UserError(f"no text in --input-files {' '.join(map(str, files))}: nothing to train on")
    metadata = MLMDatasetMetadata(
        vocab_size=vocab_size, seq_len=args.max_seq_length,
        pad_id=ids["[PAD]"], cls_id=ids["[CLS]"], sep_id=ids["[SEP]"], mask_id=ids["[MASK]"], unk_id=ids["[UNK]"],
        special_ids=special, mask_prob=args.mask_prob, nsp=args.nsp, static_masking=args.static_masking,
        tokenizer=choice.kind, lowercase=choice.lowercase, vocab_sha256=vocab_sha256,
        num_documents=stats.num_documents,
        num_sequences={split: writer.num_sequences for split, writer in writers.items()},
        num_tokens={split: writer.num_tokens for split, writer in writers.items()},
        shards={split: writer.names for split, writer in writers.items()},
        dtype=np.dtype(dtype).name, packing=args.packing, dedup=args.dedup,
    )  # fmt: skip
    metadata.report = stats.counter.report(metadata, stats.reader.counters, stats.deduplicator)
    write_json(folder / "dataset.json", metadata.model_dump())
    write_text(folder / "report.txt", render_report(metadata))
    _print_summary(metadata, stats, args)
    return metadata


def _print_summary(metadata: MLMDatasetMetadata, stats: BuildStats, args: argparse.Namespace) -> None:
    """The report on stdout, its warnings on stderr (one line each), then the speed."""
    print(render_report(metadata, with_warnings=False), end="")
    for warning in metadata.report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if stats.reader.counters.bad_lines:
        print(f"skipped {stats.reader.counters.bad_lines} malformed rows")
    megabytes = stats.reader.counters.bytes_on_disk / 1e6
    print(
        f"vocabulary {metadata.vocab_size} ({metadata.tokenizer}), ids {metadata.dtype}; read {megabytes:.1f} MB "
        f"in {stats.seconds:.1f} s ({megabytes / max(stats.seconds, 1e-9):.1f} MB/s) -> {args.output_dir}"
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the options, make the tokenizer, and build the dataset folder atomically."""
    args = parse_args(argv)
    check_args(args)
    files = expand_input_files(args.input_files)
    if args.tokenizer in ("wordpiece", "whitespace"):
        choice = train_tokenizer(args, files)
    else:
        for option, value in (("--vocab-size", args.vocab_size), ("--lowercase", args.lowercase)):
            if value is not None:
                warnings.warn(f"{option} has no effect with --tokenizer {args.tokenizer} (its vocabulary is reused)", stacklevel=2)
        choice = load_tokenizer(args.tokenizer)
    with atomic_folder(args.output_dir, overwrite=args.overwrite) as folder:
        build(args, files, choice, folder)


if __name__ == "__main__":
    run_cli(main)
