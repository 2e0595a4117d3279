"""The MLM dataset builder as a library: raw text -> tokenizer, shards, dataset.json and
report.txt (`build_mlm_dataset(MLMBuildOptions(...))`; `dataset/build_text_mlm_dataset.py`
is its command line and documents what each option does).

The inputs are cut into units of a few MB (`dataset.text.units`). Worker processes
(`num_workers`) each read a whole unit, key its documents (`dataset.text.corpus`),
tokenise and pack them (`dataset.text.packing`); this process takes the units back in
order, drops repeats, splits by a seeded hash and writes numpy shards
(`dataset.text.format.ShardWriter`) with array operations, so that it is not what limits
many workers, and memory does not grow with the corpus (but for the de-duplication set).
NSP pairs and paragraph de-duplication need every document before, so with `--nsp` or
`--dedup paragraphs` documents are read and packed here and only tokenised in the workers.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import shutil
import signal
import sys
import time
import warnings
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from core.errors import UserError
from core.files import write_json, write_text
from dataset.text import corpus as text_corpus
from dataset.text import units as build_units
from dataset.text.corpus import CorpusReader, Deduplicator, document_fraction, document_key, expand_input_files
from dataset.text.format import SPLITS, DocumentIndexWriter, MLMDatasetMetadata, ShardWriter
from dataset.text.masking import Masker
from dataset.text.packing import PACKINGS, FullPacker, PairMaker, pack_lines
from dataset.text.report import DocumentSample, ReportCounter, length_warnings, render_report
from dataset.text.resume import BuildJournal, BuildStopped, StopRequest
from dataset.text.sample import sample_budgets, sample_documents
from dataset.text.tokenizer import (
    SPECIAL_TOKENS,
    TokenizerChoice,
    continuation_mask,
    id_dtype,
    load_tokenizer,
    new_tokenizer,
    save_tokenizer,
)
from dataset.text.units import (
    LINE_COUNTS,
    Packed,
    Unit,
    UnitResult,
    UnitWork,
    init_unit_worker,
    plan_units,
    process_unit,
    unit_documents,
)

DEFAULT_VOCAB_SIZE = 30000
CHUNK_CHARACTERS = 1 << 20
"""Text per tokenisation task (about 1 MB): large enough to amortise the process hop."""
TRAINED_TOKENIZERS = ("wordpiece", "whitespace")
RESUME_FREE_OPTIONS = ("output_dir", "overwrite", "resume", "num_workers")
"""Options that do not change the output, so a resumed build may change them."""


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
    max_seq_length: int | tuple[int, ...] = 512
    """Tokens per sequence, specials included; several lengths build one dataset per length
    from one pass over the corpus, in `<output_dir>/seq<length>/` (`seq_lengths`)."""
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
    """Processes that read, tokenise and pack the units of the input (1: in this process)."""
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
    resume: bool = False
    """Finish a build of `output_dir` that was stopped or killed (`dataset.text.resume`)."""

    @property
    def seq_lengths(self) -> tuple[int, ...]:
        """The sequence lengths to build (one or more)."""
        return (self.max_seq_length,) if isinstance(self.max_seq_length, int) else tuple(self.max_seq_length)

    def check(self) -> None:
        """Reject option values that cannot work, naming the flag to change."""
        for length in self.seq_lengths:
            if length < 8:
                raise UserError(f"--max-seq-length {length} is too short; use 8 or more (BERT uses 128 or 512)")
        if len(set(self.seq_lengths)) != len(self.seq_lengths) or not self.seq_lengths:
            raise UserError(f"--max-seq-length {' '.join(map(str, self.seq_lengths))}: give each length once")
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
    """Check the options, make the tokenizer, and build the dataset folder; its metadata.

    The folder appears complete or not at all; a build stopped by a signal or killed is
    finished by the same options with `resume=True` (`dataset.text.resume`).
    """
    options.check()
    files = expand_input_files(list(options.input_files))
    stop = StopRequest()
    with stop.installed():
        journal = BuildJournal(options.output_dir, _fingerprint(options, files), stop)
        stored = journal.open(options.resume, options.overwrite)
        if stored:
            choice = _stored_tokenizer(journal.folder / _subfolder(options, options.seq_lengths[0]), stored)
        else:
            choice = make_tokenizer(options, files, stop)
        try:
            metadata = write_dataset(options, files, choice, journal, stored)
        except BuildStopped:
            raise
        except BaseException:
            journal.abandon()
            raise
        journal.finish(options.overwrite)
    return metadata


def make_tokenizer(options: MLMBuildOptions, files: list[Path], stop: StopRequest | None = None) -> TokenizerChoice:
    """The build's tokenizer: trained on the corpus, or the one `--tokenizer` names."""
    if options.tokenizer in TRAINED_TOKENIZERS:
        return train_tokenizer(options, files, stop)
    for option, value in (("--vocab-size", options.vocab_size), ("--lowercase", options.lowercase)):
        if value is not None:
            warnings.warn(f"{option} has no effect with --tokenizer {options.tokenizer} (its vocabulary is reused)", stacklevel=3)
    return load_tokenizer(options.tokenizer)


def _fingerprint(options: MLMBuildOptions, files: list[Path]) -> dict:
    """What a resumed build must share with the stopped one: the options that change the output, and the inputs."""
    kept = {name: value for name, value in asdict(options).items() if name not in RESUME_FREE_OPTIONS}
    kept["input_files"] = [(str(path), path.stat().st_size) for path in files]
    kept["chunk_characters"] = CHUNK_CHARACTERS  # the journal counts chunks or units
    kept["unit_bytes"] = build_units.UNIT_BYTES
    return json.loads(json.dumps(kept))


def _stored_tokenizer(folder: Path, stored: dict) -> TokenizerChoice:
    """The tokenizer a stopped build saved (never retrained: WordPiece training is not deterministic)."""
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer" / "tokenizer.json"))
    return TokenizerChoice(tokenizer, stored["kind"], stored["lowercase"])


def train_tokenizer(options: MLMBuildOptions, files: list[Path], stop: StopRequest | None = None) -> TokenizerChoice:
    """Train a WordPiece or word-level vocabulary on the corpus, or on a sample of about
    `--tokenizer-sample-mb` spread over the files by bytes (`dataset.text.sample`).
    """
    lowercase = True if options.lowercase is None else options.lowercase
    vocab_size = options.vocab_size or DEFAULT_VOCAB_SIZE
    tokenizer, trainer_class = new_tokenizer(options.tokenizer, lowercase)
    trainer = trainer_class(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    reader = CorpusReader(files, options.on_bad_line, options.text_field)
    budgets = sample_budgets([path.stat().st_size for path in files], int(options.tokenizer_sample_mb * 1e6), options.seed)

    def sample() -> Iterator[list[str]]:
        with tqdm(total=sum(budgets), unit="B", unit_scale=True, desc="training tokenizer", disable=None) as bar:
            for document in Deduplicator(options.dedup).filter(sample_documents(reader, budgets)):
                bar.update(min(reader.counters.bytes_on_disk, bar.total) - bar.n)
                if stop is not None:
                    stop.check(options.output_dir)
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


def part_documents(reader: CorpusReader, units: list[Unit]) -> Iterator[list[str]]:
    """The documents of this build's part (`dataset.text.units.plan_units`), read here."""
    for unit in units:
        yield from unit_documents(reader, unit)


def tokenized_chunks(chunks: Iterator[_Chunk], tokenizer: Tokenizer, num_workers: int) -> Iterator[_Chunk]:
    """Tokenise chunks in order, in this process or in a pool with a bounded number in flight."""
    initializer = text_corpus.init_tokenizer_worker
    for chunk, tokens in in_order(text_corpus.tokenize_lines, chunks, num_workers, initializer, (tokenizer.to_str(),),
                                  argument=_take_lines):  # fmt: skip
        chunk.tokens = tokens
        yield chunk


def _take_lines(chunk: _Chunk) -> list[str]:
    lines, chunk.lines = chunk.lines, None
    return lines


def in_order(function, items: Iterator, num_workers: int, initializer, initargs: tuple, waited: list | None = None,
             argument=lambda item: item):  # fmt: skip
    """(item, function(argument(item))) for each item, in order: in this process for one
    worker (after `initializer(*initargs, True)`: its tokenizer's own threads on), else in
    a pool of `num_workers` spawned processes (`initializer(*initargs, False)`) with at most
    two items per worker in flight. `waited[0]` adds up the seconds spent waiting for results."""
    if num_workers == 1:
        initializer(*initargs, True)
        for item in items:
            yield item, function(argument(item))
        return
    # Spawned (not forked) workers: the tokenizers library's thread pool does not survive a fork.
    context = multiprocessing.get_context("spawn")
    with context.Pool(num_workers, initializer=_init_worker, initargs=(initializer, *initargs, False)) as pool:
        pending = deque()
        for item in items:
            pending.append((item, pool.apply_async(function, (argument(item),))))
            if len(pending) >= 2 * num_workers:  # bounded: the reader never runs far ahead
                yield _finished(*pending.popleft(), waited)
        while pending:
            yield _finished(*pending.popleft(), waited)


def _init_worker(initializer, *initargs) -> None:
    """A worker ignores SIGINT: Ctrl-C reaches the whole process group, and the main
    process alone stops the build (commits, then closes the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    initializer(*initargs)


def _finished(item, result, waited: list | None):
    started = time.perf_counter()
    value = result.get()
    if waited is not None:
        waited[0] += time.perf_counter() - started
    return item, value


@dataclass
class BuildStats:
    """What the summary and the report need besides the shards."""

    reader: CorpusReader
    deduplicator: Deduplicator
    counter: ReportCounter
    sample: DocumentSample = field(default_factory=DocumentSample)
    """Line lengths of the first training documents, for the `--max-seq-length` advice."""
    num_documents: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    seconds: float = 0.0
    waited: list[float] | None = None
    """[seconds this process spent waiting for its workers], when they do whole units."""


@dataclass
class _Target:
    """A dataset the build writes (one per sequence length): its split writers, the
    packing state between chunks and, with `--packing documents`, the document indexes
    (`<split>/documents.npy`: each document's key and rows, `DocumentIndexWriter`)."""

    folder: Path
    seq_len: int
    writers: dict[str, ShardWriter]
    capacity: int
    """Text tokens per segment."""
    pair_maker: PairMaker | None = None
    packers: dict[str, FullPacker] = field(default_factory=dict)
    indexes: dict[str, DocumentIndexWriter] = field(default_factory=dict)
    """Empty with `--packing full`: a fully packed row mixes documents, so none is indexed."""

    def add(self, split: str, lines: list[np.ndarray], key: int | None) -> None:
        """Write one document (the token ids of its lines, its `document_key`) into `split`."""
        writer = self.writers[split]
        first_row = writer.num_sequences + writer.rows
        if self.packers:
            self.packers[split].add(lines)
        elif self.pair_maker is None:
            for segment in pack_lines(lines, self.capacity):
                writer.add(segment)
        else:
            segments, line_lengths = pack_lines(lines, self.capacity), [len(line) for line in lines]
            for segment_a, segment_b, label in self.pair_maker.pairs(segments, line_lengths, split):
                writer.add(segment_a, segment_b, label)
        if self.indexes:
            self.indexes[split].add(key, first_row, writer.num_sequences + writer.rows - first_row)

    def add_unit(self, split_of_document: np.ndarray, result: UnitResult, packed: Packed | None) -> None:
        """Write the documents of one unit (`split_of_document`: index in SPLITS, -1 to
        skip), as `add` would one by one: `packed` rows, or with `--packing full` the
        documents' tokens."""
        if packed is None:
            lengths = result.document_tokens
            split_of_token = np.repeat(split_of_document.astype(np.int8), lengths)
            for index, split in enumerate(SPLITS):
                self.packers[split].add_documents(result.tokens[split_of_token == index],
                                                  lengths[split_of_document == index])  # fmt: skip
            return
        split_of_row = np.repeat(split_of_document.astype(np.int8), packed.rows_per_document)
        for index, split in enumerate(SPLITS):
            writer, documents = self.writers[split], np.flatnonzero(split_of_document == index)
            rows = packed.rows_per_document[documents]
            first_rows = writer.num_sequences + writer.rows + np.cumsum(rows) - rows
            self.indexes[split].add_many(result.keys[documents], first_rows, rows)
            in_split = split_of_row == index
            writer.add_padded(packed.rows[in_split], packed.row_lengths[in_split])

    def finish(self) -> None:
        """Write what the packers and writers still hold, and the document indexes."""
        for packer in self.packers.values():
            packer.finish()
        for writer in self.writers.values():
            writer.flush()
            writer.remove_pending()
        for index in self.indexes.values():
            index.close()

    def num_shards(self) -> int:
        return sum(len(writer.names) for writer in self.writers.values())

    def state_dict(self) -> dict:
        """The packing and indexing state a resumed build restores (`dataset.text.resume`)."""
        return {"writers": {split: writer.state_dict() for split, writer in self.writers.items()},
                "packers": {split: packer.state_dict() for split, packer in self.packers.items()},
                "indexes": {split: index.state_dict() for split, index in self.indexes.items()},
                "pair_maker": self.pair_maker}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()`."""
        for split, writer in self.writers.items():
            writer.load_state_dict(state["writers"][split])
        for split, packer in self.packers.items():
            packer.load_state_dict(state["packers"][split])
        for split, index in self.indexes.items():
            index.load_state_dict(state["indexes"][split])
        self.pair_maker = state["pair_maker"]


def _targets(options: MLMBuildOptions, choice: TokenizerChoice, root: Path) -> list[_Target]:
    """One target per sequence length: `root` itself for one length, `root/seq<length>` for several."""
    ids = choice.special_ids
    vocab_size = choice.tokenizer.get_vocab_size(with_added_tokens=True)
    masker = None
    if options.static_masking:
        masker = Masker(vocab_size, [ids[token] for token in SPECIAL_TOKENS], ids["[MASK]"], options.mask_prob)
    targets = []
    for seq_len in options.seq_lengths:
        folder = root / _subfolder(options, seq_len)
        writers = {split: ShardWriter(folder / split, ids, id_dtype(vocab_size), shard_size=options.shard_size,
                                      seq_len=seq_len, nsp=options.nsp, seed=options.seed, masker=masker)
                   for split in SPLITS}  # fmt: skip
        target = _Target(folder, seq_len, writers, (seq_len - 3) // 2 if options.nsp else seq_len - 2)
        if options.nsp:
            target.pair_maker = PairMaker(options.seed, continuation_mask(choice.tokenizer))
        if options.packing == "full":
            target.packers = {split: FullPacker(writers[split], seq_len - 2, ids["[SEP]"]) for split in SPLITS}
        else:
            target.indexes = {split: DocumentIndexWriter(writers[split].folder) for split in SPLITS}
        targets.append(target)
    return targets


def _subfolder(options: MLMBuildOptions, seq_len: int) -> str:
    """Where the dataset of one length goes inside the output folder: itself when it is the only one."""
    return "" if len(options.seq_lengths) == 1 else f"seq{seq_len}"


def _keyed(documents: Iterator[list[str]], keys: deque[int] | None) -> Iterator[list[str]]:
    """`documents`, appending each one's `document_key` to `keys` on the way (unless None)."""
    for document in documents:
        if keys is not None:
            keys.append(document_key(document))
        yield document


def write_shards(
    options: MLMBuildOptions, files: list[Path], choice: TokenizerChoice, targets: list[_Target], journal: BuildJournal
) -> BuildStats:
    """Stream this part's documents through de-duplication, tokenisation and packing into
    every target's writers, committing to `journal` after each step that completed a shard
    (and when a stop is asked).

    Workers do the reading, keying, tokenising and packing of whole units of the inputs
    (`dataset.text.units`); next-sentence pairs and paragraph de-duplication depend on
    every document before, so with `--nsp` or `--dedup paragraphs` the documents are read,
    de-duplicated and packed here and only tokenised in the workers.
    """
    started = time.perf_counter()
    stats = BuildStats(
        CorpusReader(files, options.on_bad_line, options.text_field), Deduplicator(options.dedup),
        ReportCounter(continuation_mask(choice.tokenizer), choice.special_ids["[UNK]"]),
    )  # fmt: skip
    units = plan_units(files, options.part, options.num_parts)
    bar = tqdm(total=sum(_unit_bytes(unit) for unit in units), unit="B", unit_scale=True, desc="building",
               disable=None)  # fmt: skip
    with bar:
        if options.nsp or options.dedup == "paragraphs":
            _write_chunks(options, units, choice, targets, journal, stats, bar)
        else:
            _write_units(options, units, choice, targets, journal, stats, bar)
    for target in targets:
        target.finish()
    stats.seconds = time.perf_counter() - started
    return stats


def _unit_bytes(unit: Unit) -> int:
    return Path(unit.path).stat().st_size if unit.whole_file else unit.stop - unit.start


def _commit(journal: BuildJournal, done: int, stats: BuildStats, targets: list[_Target], output_dir: str) -> None:
    journal.commit(done, {"counter": stats.counter, "num_documents": stats.num_documents, "sample": stats.sample,
                          "targets": [target.state_dict() for target in targets]})  # fmt: skip
    journal.stop.check(output_dir)


def _load(journal: BuildJournal, stats: BuildStats, targets: list[_Target]) -> int:
    """Restore the packing, indexing and sample state of the last commit; the steps it had done."""
    done, state = journal.load()
    if state is not None:
        stats.counter, stats.num_documents, stats.sample = state["counter"], state["num_documents"], state["sample"]
        for target, target_state in zip(targets, state["targets"]):
            target.load_state_dict(target_state)
    return done


def _write_units(options: MLMBuildOptions, units: list[Unit], choice: TokenizerChoice, targets: list[_Target],
                 journal: BuildJournal, stats: BuildStats, bar: tqdm) -> None:  # fmt: skip
    """The build with the workers doing all but de-duplication and writing: a unit at a time, in order."""
    layouts = () if options.packing == "full" else tuple((target.seq_len, target.capacity) for target in targets)
    ids = choice.special_ids
    work = UnitWork(options.on_bad_line, options.text_field, options.seed, layouts,
                    np.dtype(targets[0].writers["train"].dtype).name, (ids["[PAD]"], ids["[CLS]"], ids["[SEP]"]))  # fmt: skip
    done = _load(journal, stats, targets)
    stats.waited = [0.0] if options.num_workers > 1 else None
    tokenizer_json = choice.tokenizer.to_str()
    # A resumed build reads its finished units again (keys only) for the de-duplication set and the read counts.
    replay = dataclasses.replace(work, keys_only=True)
    for _, result in in_order(process_unit, iter(units[:done]), options.num_workers, init_unit_worker,
                              (tokenizer_json, replay)):  # fmt: skip
        stats.reader.counters.add(result.counters)
        stats.deduplicator.keep(result.keys)
        bar.update(stats.reader.counters.bytes_on_disk - bar.n)
    results = closing(in_order(process_unit, iter(units[done:]), options.num_workers, init_unit_worker,
                               (tokenizer_json, work), stats.waited))  # fmt: skip
    with results as ordered:
        _write_results(ordered, done, options, stats, targets, journal, bar)


def _write_results(results, done: int, options: MLMBuildOptions, stats: BuildStats, targets: list[_Target],
                   journal: BuildJournal, bar: tqdm) -> None:  # fmt: skip
    """Write each unit's documents; commit after those that completed a shard."""
    for step, (unit, result) in enumerate(results, start=done + 1):
        shards = sum(target.num_shards() for target in targets)
        stats.reader.counters.add(result.counters)
        split_of_document = _split_of_documents(result, stats, options)
        for target, packed in zip(targets, result.packed or [None] * len(targets)):
            target.add_unit(split_of_document, result, packed)
        if sum(target.num_shards() for target in targets) > shards or journal.stop.signal_name:
            _commit(journal, step, stats, targets, options.output_dir)
        bar.update(_unit_bytes(unit))


def _split_of_documents(result: UnitResult, stats: BuildStats, options: MLMBuildOptions) -> np.ndarray:
    """int64 [documents]: each document's index in SPLITS, -1 for a repeat; counted in `stats`."""
    kept = stats.deduplicator.keep(result.keys)
    test = result.test_fractions < options.test_split if options.test_split > 0 else np.zeros(len(kept), dtype=bool)
    if options.part == 0 and sum(stats.num_documents.values()) == 0 and kept.any():
        test[np.argmax(kept)] = False  # a build's first document trains: a tiny corpus still trains
    split_of_document = np.where(kept, test.astype(np.int64), -1)
    split_of_line = np.repeat(split_of_document, result.lines_per_document)
    unknown: Counter[str] = Counter()
    for line, characters in result.unknown_characters.items():
        if split_of_line[line] >= 0:
            unknown.update(characters)
    stats.counter.add_lines(split_of_line, dict(zip(LINE_COUNTS, result.line_counts)), unknown)
    for index, split in enumerate(SPLITS):
        stats.num_documents[split] += int((split_of_document == index).sum())
    if not stats.sample.full:
        line_ends = np.cumsum(result.lines_per_document)
        for document in np.flatnonzero(split_of_document == 0).tolist():
            stats.sample.add_lengths(result.line_counts[0][line_ends[document] - result.lines_per_document[document]
                                                           : line_ends[document]])  # fmt: skip
            if stats.sample.full:
                break
    return split_of_document


def _write_chunks(options: MLMBuildOptions, units: list[Unit], choice: TokenizerChoice, targets: list[_Target],
                  journal: BuildJournal, stats: BuildStats, bar: tqdm) -> None:  # fmt: skip
    """The build with documents read, de-duplicated and packed here, chunks tokenised by the workers."""
    # Keys of the documents read but not yet written, in order (only when they are indexed).
    keys: deque[int] | None = deque() if options.packing != "full" else None
    documents = _keyed(stats.deduplicator.filter(part_documents(stats.reader, units)), keys)
    chunks = _chunks(documents, options)
    done = _load(journal, stats, targets)
    for _ in range(done):  # read again without tokenising: the de-duplication set and the read counts
        next(chunks)
    if keys is not None:
        keys.clear()  # those chunks' documents are already indexed
    with closing(tokenized_chunks(chunks, choice.tokenizer, options.num_workers)) as tokenized:
        _write_tokenized_chunks(tokenized, done, keys, options, stats, targets, journal, bar)


def _write_tokenized_chunks(tokenized, done: int, keys: deque[int] | None, options: MLMBuildOptions,
                            stats: BuildStats, targets: list[_Target], journal: BuildJournal, bar: tqdm) -> None:  # fmt: skip
    """Write each chunk's documents; commit after those that completed a shard."""
    for step, chunk in enumerate(tokenized, start=done + 1):
        shards = sum(target.num_shards() for target in targets)
        tokens = chunk.tokens
        stats.counter.add(chunk.split_of_line(), tokens.ids, tokens.line_lengths, tokens.sentences,
                          tokens.unknown_characters)  # fmt: skip
        for split, lines in chunk.documents():
            stats.num_documents[split] += 1
            stats.sample.add(split, lines)
            key = keys.popleft() if keys is not None else None
            for target in targets:
                target.add(split, lines, key)
        if sum(target.num_shards() for target in targets) > shards or journal.stop.signal_name:
            _commit(journal, step, stats, targets, options.output_dir)
        bar.update(stats.reader.counters.bytes_on_disk - bar.n)


def write_dataset(
    options: MLMBuildOptions, files: list[Path], choice: TokenizerChoice, journal: BuildJournal, stored: dict | None
) -> MLMDatasetMetadata:
    """Write the tokenizer (unless `stored`, a resumed build's), the shards, dataset.json and
    report.txt of every sequence length into the journal's folder; the first length's metadata."""
    targets = _targets(options, choice, journal.folder)
    if stored is None:
        for target in targets:
            shutil.rmtree(target.folder / "tokenizer", ignore_errors=True)  # a build killed while saving it
            vocab_sha256 = save_tokenizer(choice, target.folder / "tokenizer", target.seq_len)
        journal.save_record({"kind": choice.kind, "lowercase": choice.lowercase, "vocab_sha256": vocab_sha256})
    else:
        vocab_sha256 = stored["vocab_sha256"]
    stats = write_shards(options, files, choice, targets, journal)
    if targets[0].writers["train"].num_sequences == 0:
        raise UserError(f"no text in --input-files {' '.join(map(str, files))}: nothing to train on")
    metadatas = [_write_metadata(options, choice, target, stats, vocab_sha256) for target in targets]
    return metadatas[0]


def _write_metadata(
    options: MLMBuildOptions, choice: TokenizerChoice, target: _Target, stats: BuildStats, vocab_sha256: str
) -> MLMDatasetMetadata:
    """Write one target's dataset.json and report.txt and print its summary; its metadata."""
    ids, writers = choice.special_ids, target.writers
    metadata = MLMDatasetMetadata(
        vocab_size=choice.tokenizer.get_vocab_size(with_added_tokens=True), seq_len=target.seq_len,
        pad_id=ids["[PAD]"], cls_id=ids["[CLS]"], sep_id=ids["[SEP]"], mask_id=ids["[MASK]"], unk_id=ids["[UNK]"],
        special_ids=[ids[token] for token in SPECIAL_TOKENS], mask_prob=options.mask_prob, nsp=options.nsp,
        static_masking=options.static_masking, tokenizer=choice.kind, lowercase=choice.lowercase,
        vocab_sha256=vocab_sha256, num_documents=stats.num_documents,
        num_sequences={split: writer.num_sequences for split, writer in writers.items()},
        num_tokens={split: writer.num_tokens for split, writer in writers.items()},
        shards={split: writer.names for split, writer in writers.items()},
        shard_rows={split: writer.shard_rows for split, writer in writers.items()},
        dtype=np.dtype(writers["train"].dtype).name, packing=options.packing, dedup=options.dedup,
    )  # fmt: skip
    metadata.report = stats.counter.report(metadata, stats.reader.counters, stats.deduplicator)
    metadata.report.warnings += length_warnings(metadata, stats.sample)
    write_json(target.folder / "dataset.json", metadata.model_dump())
    write_text(target.folder / "report.txt", render_report(metadata))
    _print_summary(metadata, stats, Path(options.output_dir) / _subfolder(options, target.seq_len))
    return metadata


def _print_summary(metadata: MLMDatasetMetadata, stats: BuildStats, destination: Path) -> None:
    """The report on stdout, its warnings on stderr (one line each), then the speed."""
    print(render_report(metadata, with_warnings=False), end="")
    for warning in metadata.report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if stats.reader.counters.bad_lines:
        print(f"skipped {stats.reader.counters.bad_lines} malformed rows")
    megabytes = stats.reader.counters.bytes_on_disk / 1e6
    busy = ""
    if stats.waited is not None:  # more workers help while this process waits for them
        busy = f", main process busy {1 - stats.waited[0] / max(stats.seconds, 1e-9):.0%}"
    print(
        f"vocabulary {metadata.vocab_size} ({metadata.tokenizer}), ids {metadata.dtype}; read {megabytes:.1f} MB "
        f"in {stats.seconds:.1f} s ({megabytes / max(stats.seconds, 1e-9):.1f} MB/s{busy}) -> {destination}"
    )
