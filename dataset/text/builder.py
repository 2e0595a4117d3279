"""The MLM dataset builder as a library: raw text -> tokenizer, shards, dataset.json and
report.txt (`build_mlm_dataset(MLMBuildOptions(...))`; `dataset/build_text_mlm_dataset.py`
is its command line and documents what each option does).

Documents stream through a bounded pipeline: read and de-duplicated (`dataset.text.corpus`),
split by a seeded hash, tokenised in chunks (in `num_workers` processes), packed
(`dataset.text.packing`) and written into numpy shards (`dataset.text.format.ShardWriter`),
so memory does not grow with the corpus.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from core.errors import UserError
from core.files import atomic_folder, write_json, write_text
from dataset.text import corpus as text_corpus
from dataset.text.corpus import CorpusReader, Deduplicator, document_fraction, document_key, expand_input_files
from dataset.text.format import SPLITS, DocumentIndexWriter, MLMDatasetMetadata, ShardWriter
from dataset.text.masking import Masker
from dataset.text.packing import PACKINGS, FullPacker, PairMaker, pack_lines
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
TRAINED_TOKENIZERS = ("wordpiece", "whitespace")


@dataclass(frozen=True)
class MLMBuildOptions:
    """What to build; each field is the command-line flag of the same name
    (`--input-files` is `input_files`), see `dataset/build_text_mlm_dataset.py --help`."""

    input_files: Sequence[str]
    """Files, globs (`**` recursive) or folders read recursively."""
    output_dir: str
    """Dataset folder to create."""
    vocab_size: int | None = None
    """Size of a trained vocabulary (`DEFAULT_VOCAB_SIZE` when None)."""
    max_seq_length: int = 512
    """Tokens per sequence, specials included."""
    mask_prob: float = 0.15
    """Masking rate recorded for dynamic masking (and used by static masking)."""
    test_split: float = 0.05
    """Fraction of documents in the test split."""
    seed: int = 0
    """Seed of the split, the tokenizer sample, NSP pairs and static masks."""
    tokenizer: str = "wordpiece"
    """`wordpiece` or `whitespace` (trained on the corpus), or the path of a tokenizer to reuse."""
    tokenizer_sample_mb: float = 100.0
    """Text to train the vocabulary on."""
    lowercase: bool | None = None
    """Whether a trained tokenizer lowercases (True when None)."""
    nsp: bool = False
    """Sentence pairs with next-sentence labels."""
    static_masking: bool = False
    """Mask once at build time and store the result."""
    num_workers: int = 1
    """Tokenisation processes (1: in this process)."""
    shard_size: int = 65536
    """Sequences per shard file."""
    overwrite: bool = False
    """Replace an existing `output_dir`."""
    on_bad_line: str = "error"
    """Malformed rows, binary or non-UTF-8 lines: `error` stops, `skip` drops and counts them."""
    text_field: str = "text"
    """The text's JSON field or parquet column."""
    dedup: str = "documents"
    """Exact repeats removed before the split: one of `dataset.text.corpus.DEDUP_MODES`."""
    packing: str = "documents"
    """One of `PACKINGS`."""
    part: int = 0
    """Which slice of the inputs to build (0-based), with `num_parts`."""
    num_parts: int = 1
    """Slices the inputs are cut into by bytes, each built by its own job (`part_byte_range`)."""

    def check(self) -> None:
        """Reject option values that cannot work, naming the flag to change."""
        if self.max_seq_length < 8:
            raise UserError(f"--max-seq-length {self.max_seq_length} is too short; use 8 or more (BERT uses 128 or 512)")
        if not 0.0 < self.mask_prob < 1.0:
            raise UserError(f"--mask-prob {self.mask_prob} must be between 0 and 1 (exclusive); BERT uses 0.15")
        if not 0.0 <= self.test_split < 1.0:
            raise UserError(f"--test-split {self.test_split} must be in [0, 1), e.g. 0.05")
        if self.vocab_size is not None and self.vocab_size <= len(SPECIAL_TOKENS):
            raise UserError(
                f"--vocab-size {self.vocab_size} leaves no room next to the {len(SPECIAL_TOKENS)} special tokens; use more"
            )
        for name in ("num_workers", "shard_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.tokenizer_sample_mb <= 0:
            raise UserError("--tokenizer-sample-mb must be positive")
        if self.packing not in PACKINGS:
            raise UserError(f"--packing must be one of {', '.join(PACKINGS)}, not {self.packing!r}")
        if self.nsp and self.packing == "full":
            raise UserError("--packing full cannot make next-sentence pairs; use --packing documents with --nsp")
        self._check_part()
        if Path(self.output_dir).exists() and not self.overwrite:
            raise UserError(
                f"output folder {self.output_dir} already exists; choose another --output-dir or pass --overwrite"
            )

    def _check_part(self) -> None:
        if self.num_parts < 1 or not 0 <= self.part < self.num_parts:
            raise UserError(f"--part {self.part} --num-parts {self.num_parts}: need --num-parts 1 or more and "
                            f"--part from 0 to {max(self.num_parts, 1) - 1}")
        if self.num_parts > 1 and self.tokenizer in TRAINED_TOKENIZERS:
            raise UserError(f"--num-parts {self.num_parts} needs one tokenizer for all parts: pass --tokenizer "
                            "PATH (e.g. the tokenizer/ folder of a first build), not a trained --tokenizer")


def build_mlm_dataset(options: MLMBuildOptions) -> MLMDatasetMetadata:
    """Check the options, make the tokenizer, and build the dataset folder atomically; its metadata."""
    options.check()
    files = expand_input_files(list(options.input_files))
    if options.tokenizer in TRAINED_TOKENIZERS:
        choice = train_tokenizer(options, files)
    else:
        for option, value in (("--vocab-size", options.vocab_size), ("--lowercase", options.lowercase)):
            if value is not None:
                warnings.warn(f"{option} has no effect with --tokenizer {options.tokenizer} (its vocabulary is reused)", stacklevel=2)
        choice = load_tokenizer(options.tokenizer)
    with atomic_folder(options.output_dir, overwrite=options.overwrite) as folder:
        return write_dataset(options, files, choice, folder)


def train_tokenizer(options: MLMBuildOptions, files: list[Path]) -> TokenizerChoice:
    """Train a WordPiece or word-level vocabulary on (a sample of) the corpus.

    The sample keeps each document with probability `--tokenizer-sample-mb` / input size
    (on-disk size, so compressed inputs give a larger sample), decided by a seeded hash.
    """
    lowercase = True if options.lowercase is None else options.lowercase
    vocab_size = options.vocab_size or DEFAULT_VOCAB_SIZE
    tokenizer, trainer_class = new_tokenizer(options.tokenizer, lowercase)
    trainer = trainer_class(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    reader = CorpusReader(files, options.on_bad_line, options.text_field)
    total = reader.total_bytes()
    fraction = min(1.0, options.tokenizer_sample_mb * 1e6 / max(total, 1))

    def sample() -> Iterator[list[str]]:
        with tqdm(total=total, unit="B", unit_scale=True, desc="training tokenizer", disable=None) as bar:
            for document in Deduplicator(options.dedup).filter(reader.documents()):
                bar.update(reader.counters.bytes_on_disk - bar.n)
                if fraction >= 1.0 or document_fraction(document, options.seed, "tokenizer-sample") < fraction:
                    yield document

    tokenizer.train_from_iterator(sample(), trainer=trainer)
    if reader.counters.documents == 0:
        raise UserError(f"no text in --input-files {' '.join(map(str, files))}; they are empty")
    if tokenizer.get_vocab_size() > vocab_size:
        raise UserError(
            f"--vocab-size {vocab_size} is too small: the {len(SPECIAL_TOKENS)} special tokens and the corpus "
            f"alphabet alone need {tokenizer.get_vocab_size()}; use --vocab-size {tokenizer.get_vocab_size()} or more"
        )
    return TokenizerChoice(tokenizer, options.tokenizer, lowercase)


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


def _chunks(documents: Iterator[list[str]], options: MLMBuildOptions) -> Iterator[_Chunk]:
    """Documents grouped into chunks of about `CHUNK_CHARACTERS`, each with its split decided."""
    chunk, size = _Chunk([], [], []), 0
    for number, document in enumerate(documents):
        is_test = (
            options.test_split > 0
            and (number > 0 or options.part > 0)  # a build's first document trains: a tiny corpus still trains
            and document_fraction(document, options.seed, "test-split") < options.test_split
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


def part_byte_range(files: list[Path], part: int, num_parts: int) -> tuple[int, int]:
    """[start, stop) of part `part` of `num_parts`: the inputs' total bytes on disk, in
    file order, cut into equal ranges (a document belongs to the part where it starts)."""
    total = sum(path.stat().st_size for path in files)
    return total * part // num_parts, total * (part + 1) // num_parts


def part_documents(reader: CorpusReader, options: MLMBuildOptions) -> Iterator[list[str]]:
    """The documents of this build's part: all of them for one part; else those that start
    in `part_byte_range`, reading only the files that overlap it (a part that starts inside
    a file reads that file from its beginning)."""
    if options.num_parts == 1:
        yield from reader.documents()
        return
    sizes = [path.stat().st_size for path in reader.files]
    offsets = np.cumsum([0] + sizes)  # (F + 1,) where each file starts, and the end
    start, stop = part_byte_range(reader.files, options.part, options.num_parts)
    overlapping = [index for index in range(len(sizes)) if offsets[index] < stop and offsets[index + 1] >= start]
    reader.files = [reader.files[index] for index in overlapping]
    for offset, document in reader.documents_with_offsets([int(offsets[index]) for index in overlapping]):
        if start <= offset < stop:
            yield document


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
    options: MLMBuildOptions, files: list[Path], choice: TokenizerChoice, writers: dict[str, ShardWriter]
) -> BuildStats:
    """Stream every document through de-duplication, tokenisation and packing into the split writers."""
    started = time.perf_counter()
    continuation = continuation_mask(choice.tokenizer)  # (V,) which ids continue a word
    stats = BuildStats(
        CorpusReader(files, options.on_bad_line, options.text_field), Deduplicator(options.dedup),
        ReportCounter(continuation, choice.special_ids["[UNK]"]),
    )  # fmt: skip
    reader = stats.reader
    sink = _DocumentSink(options, writers, choice.special_ids["[SEP]"], continuation)
    chunks = _chunks(sink.keyed(stats.deduplicator.filter(part_documents(reader, options))), options)
    with tqdm(total=reader.total_bytes(), unit="B", unit_scale=True, desc="building", disable=None) as bar:
        for chunk in tokenized_chunks(chunks, choice.tokenizer, options.num_workers):
            tokens = chunk.tokens
            stats.counter.add(chunk.split_of_line(), tokens.ids, tokens.line_lengths, tokens.sentences,
                              tokens.unknown_characters)  # fmt: skip
            for split, lines in chunk.documents():
                stats.num_documents[split] += 1
                sink.add(split, lines)
            bar.update(reader.counters.bytes_on_disk - bar.n)
    sink.finish()
    stats.seconds = time.perf_counter() - started
    return stats


class _DocumentSink:
    """Packs each tokenised document into its split's writer and, with `--packing
    documents`, records its key and rows in `<split>/documents.npy` (`DocumentIndexWriter`)."""

    def __init__(self, options: MLMBuildOptions, writers: dict[str, ShardWriter], sep_id: int, continuation: np.ndarray):
        self.writers = writers
        self.pair_maker = PairMaker(options.seed, continuation) if options.nsp else None
        self.packers = {}
        if options.packing == "full":
            self.packers = {split: FullPacker(writers[split], options.max_seq_length - 2, sep_id) for split in SPLITS}
        self.capacity = (options.max_seq_length - 3) // 2 if options.nsp else options.max_seq_length - 2
        # A fully packed row mixes documents: no row belongs to one, so none is indexed.
        self.indexes = {} if self.packers else {split: DocumentIndexWriter(writers[split].folder) for split in SPLITS}
        self.keys: deque[int] = deque()  # keys of the documents read but not yet written, in order

    def keyed(self, documents: Iterator[list[str]]) -> Iterator[list[str]]:
        """`documents`, noting each one's key (`document_key`) on the way for `add`."""
        for document in documents:
            if self.indexes:
                self.keys.append(document_key(document))
            yield document

    def add(self, split: str, lines: list[np.ndarray]) -> None:
        """Write one document (the token ids of its lines) into `split`."""
        writer = self.writers[split]
        first_row = writer.num_sequences + writer.rows
        if self.packers:
            self.packers[split].add(lines)
        elif self.pair_maker is None:
            for segment in pack_lines(lines, self.capacity):
                writer.add(segment)
        else:
            line_lengths = [len(line) for line in lines]
            for segment_a, segment_b, label in self.pair_maker.pairs(pack_lines(lines, self.capacity), line_lengths, split):
                writer.add(segment_a, segment_b, label)
        if self.indexes:
            self.indexes[split].add(self.keys.popleft(), first_row, writer.num_sequences + writer.rows - first_row)

    def finish(self) -> None:
        """Write what the packers and writers still hold, and the document indexes."""
        for packer in self.packers.values():
            packer.finish()
        for writer in self.writers.values():
            writer.flush()
        for index in self.indexes.values():
            index.close()


def write_dataset(options: MLMBuildOptions, files: list[Path], choice: TokenizerChoice, folder: Path) -> MLMDatasetMetadata:
    """Write the tokenizer, the shards, dataset.json and report.txt into `folder`; returns the metadata."""
    vocab_sha256 = save_tokenizer(choice, folder / "tokenizer", options.max_seq_length)
    vocab_size = choice.tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = id_dtype(vocab_size)
    ids = choice.special_ids
    special = [ids[token] for token in SPECIAL_TOKENS]
    masker = Masker(vocab_size, special, ids["[MASK]"], options.mask_prob) if options.static_masking else None
    writers = {
        split: ShardWriter(folder / split, ids, dtype, shard_size=options.shard_size, seq_len=options.max_seq_length,
                           nsp=options.nsp, seed=options.seed, masker=masker)
        for split in SPLITS
    }  # fmt: skip
    stats = write_shards(options, files, choice, writers)
    if writers["train"].num_sequences == 0:
        raise UserError(f"no text in --input-files {' '.join(map(str, files))}: nothing to train on")
    metadata = MLMDatasetMetadata(
        vocab_size=vocab_size, seq_len=options.max_seq_length,
        pad_id=ids["[PAD]"], cls_id=ids["[CLS]"], sep_id=ids["[SEP]"], mask_id=ids["[MASK]"], unk_id=ids["[UNK]"],
        special_ids=special, mask_prob=options.mask_prob, nsp=options.nsp, static_masking=options.static_masking,
        tokenizer=choice.kind, lowercase=choice.lowercase, vocab_sha256=vocab_sha256,
        num_documents=stats.num_documents,
        num_sequences={split: writer.num_sequences for split, writer in writers.items()},
        num_tokens={split: writer.num_tokens for split, writer in writers.items()},
        shards={split: writer.names for split, writer in writers.items()},
        shard_rows={split: writer.shard_rows for split, writer in writers.items()},
        dtype=np.dtype(dtype).name, packing=options.packing, dedup=options.dedup,
    )  # fmt: skip
    metadata.report = stats.counter.report(metadata, stats.reader.counters, stats.deduplicator)
    write_json(folder / "dataset.json", metadata.model_dump())
    write_text(folder / "report.txt", render_report(metadata))
    _print_summary(metadata, stats, options)
    return metadata


def _print_summary(metadata: MLMDatasetMetadata, stats: BuildStats, options: MLMBuildOptions) -> None:
    """The report on stdout, its warnings on stderr (one line each), then the speed."""
    print(render_report(metadata, with_warnings=False), end="")
    for warning in metadata.report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if stats.reader.counters.bad_lines:
        print(f"skipped {stats.reader.counters.bad_lines} malformed rows")
    megabytes = stats.reader.counters.bytes_on_disk / 1e6
    print(
        f"vocabulary {metadata.vocab_size} ({metadata.tokenizer}), ids {metadata.dtype}; read {megabytes:.1f} MB "
        f"in {stats.seconds:.1f} s ({megabytes / max(stats.seconds, 1e-9):.1f} MB/s) -> {options.output_dir}"
    )
