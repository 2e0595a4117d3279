"""The corpus and vocabulary report of an MLM build: counted while the builder streams
(`ReportCounter`), stored in dataset.json (`CorpusReport`) and rendered for people
(`render_report`, printed and written to report.txt).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from dataset.text.corpus import Deduplicator, ReadCounters
from dataset.text.format import SPLITS, CorpusReport, MLMDatasetMetadata
from dataset.text.packing import pack_lines

UNKNOWN_RATE_WARNING = 0.005
"""[UNK] share above which the vocabulary is said not to cover the text (a WordPiece
vocabulary trained on the corpus is near 0; bert-base-uncased on English Wikipedia ~0.01%)."""
PIECES_PER_WORD_WARNING = 1.5
"""Pieces per word above which a bigger vocabulary is suggested (bert-base-uncased gives
about 1.1-1.2 on English Wikipedia)."""
NUM_UNKNOWN_CHARACTERS = 10
PRESET_POSITIONS = 512
"""Positions of the BERT presets (`arch.max_position_embeddings` in config/arch/bert.yaml):
a longer `--max-seq-length` is refused at training start unless the run sets more."""
LOW_FILL_WARNING = 0.5
"""Share of the sequence positions holding tokens below which a shorter length is suggested."""
GOOD_FILL = 0.9
"""Fill rate the suggested `--max-seq-length` reaches (estimated by packing a sample of the documents)."""
SAMPLE_LINES = 100_000
"""Lines of training documents whose lengths are kept to estimate the fill of other lengths."""


def word_flags(ids: np.ndarray, continuation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """bool (tokens,) twice: whether each token starts a word, and whether it starts a word
    of several pieces (a word start followed by a continuation piece `##x`)."""
    starts_word = ~continuation[ids]
    split_word = np.zeros_like(starts_word)
    split_word[:-1] = starts_word[:-1] & ~starts_word[1:]
    return starts_word, split_word


class ReportCounter:
    """Per-split counts of the tokenised text, added chunk by chunk."""

    def __init__(self, continuation: np.ndarray, unk_id: int):
        self.continuation = continuation
        """bool [vocab]: tokens that continue a word (`##x`)."""
        self.unk_id = unk_id
        self.counts = {name: dict.fromkeys(SPLITS, 0) for name in (
            "documents", "lines", "sentences", "text_tokens", "unknown_tokens", "words", "split_words")}
        self.unknown_characters: Counter[str] = Counter()

    def add(self, split_of_line: np.ndarray, ids: np.ndarray, line_lengths: np.ndarray, sentences: np.ndarray,
            unknown_characters: dict[str, int]) -> None:
        """Count one tokenised chunk; `split_of_line` is 0 (train) or 1 (test) per line."""
        split_of_token = np.repeat(split_of_line, line_lengths)  # (tokens,)
        starts_word, split_word = word_flags(ids, self.continuation)
        per_token = {"text_tokens": None, "unknown_tokens": ids == self.unk_id, "words": starts_word,
                     "split_words": split_word}
        for index, split in enumerate(SPLITS):
            in_split = split_of_token == index
            self.counts["lines"][split] += int((split_of_line == index).sum())
            self.counts["sentences"][split] += int(sentences[split_of_line == index].sum())
            for name, flags in per_token.items():
                self.counts[name][split] += int(in_split.sum() if flags is None else (flags & in_split).sum())
        self.unknown_characters.update(unknown_characters)

    def add_lines(self, split_of_line: np.ndarray, counts: dict[str, np.ndarray], unknown_characters: Counter) -> None:
        """Count lines already counted one by one (`counts`: a count name -> its value per
        line); `split_of_line` is 0 (train), 1 (test) or -1 (not kept) per line."""
        for index, split in enumerate(SPLITS):
            in_split = split_of_line == index
            self.counts["lines"][split] += int(in_split.sum())
            for name, values in counts.items():
                self.counts[name][split] += int(values[in_split].sum())
        self.unknown_characters.update(unknown_characters)

    def report(self, metadata: MLMDatasetMetadata, read: ReadCounters, deduplicator: Deduplicator) -> CorpusReport:
        """The finished report (the metadata gives documents, sequences and tokens per split)."""
        total = {name: sum(values.values()) for name, values in self.counts.items()}
        positions = {split: metadata.num_sequences[split] * metadata.seq_len for split in SPLITS}
        report = CorpusReport(
            files_by_format=read.files_by_format, bytes_read=read.bytes_on_disk,
            documents=metadata.num_documents,
            **{name: values for name, values in self.counts.items() if name != "documents"},
            fill_rate={split: metadata.num_tokens[split] / positions[split] if positions[split] else 0.0
                       for split in SPLITS},
            duplicates_removed={"documents": deduplicator.removed_documents,
                                "paragraphs": deduplicator.removed_paragraphs},
            dropped={"empty": read.empty_documents, "binary": read.binary_lines, "too long": read.long_lines,
                     "malformed": read.bad_lines},
            unknown_characters=self.unknown_characters.most_common(NUM_UNKNOWN_CHARACTERS),
            unknown_rate=total["unknown_tokens"] / max(total["text_tokens"], 1),
            pieces_per_word=total["text_tokens"] / max(total["words"], 1),
            split_word_share=total["split_words"] / max(total["words"], 1),
        )  # fmt: skip
        report.warnings = vocabulary_warnings(report)
        return report


def vocabulary_warnings(report: CorpusReport) -> list[str]:
    """One line per sign that the vocabulary does not fit the corpus."""
    warnings = []
    if report.unknown_rate > UNKNOWN_RATE_WARNING:
        characters = " ".join(char for char, _ in report.unknown_characters[:5])
        warnings.append(
            f"{report.unknown_rate:.1%} of the tokens are [UNK]"
            + (f" (unknown characters: {characters})" if characters else "")
            + "; the vocabulary does not cover this text: train one on it (--tokenizer wordpiece, a larger "
            "--vocab-size) or use a tokenizer made for its language"
        )
    if report.pieces_per_word > PIECES_PER_WORD_WARNING:
        warnings.append(
            f"{report.pieces_per_word:.2f} word pieces per word ({report.split_word_share:.0%} of the words split); "
            "a bigger --vocab-size, or a tokenizer made for this language, would fit better"
        )
    return warnings


class DocumentSample:
    """Line lengths (tokens) of the first training documents, up to `SAMPLE_LINES` lines:
    enough to replay the packing at other lengths, in bounded memory."""

    def __init__(self):
        self.documents: list[np.ndarray] = []
        self.num_lines = 0

    def add(self, split: str, lines: list[np.ndarray]) -> None:
        """Keep the line lengths of one document (`lines`: token ids per line) while there is room."""
        if split == "train" and self.num_lines < SAMPLE_LINES:
            self.add_lengths(np.array([len(line) for line in lines], dtype=np.int64))

    @property
    def full(self) -> bool:
        return self.num_lines >= SAMPLE_LINES

    def __getstate__(self) -> dict:
        """One array for all documents: a resumable build pickles the sample at every commit."""
        counts = np.array([len(lengths) for lengths in self.documents], dtype=np.int64)
        flat = np.concatenate(self.documents) if self.documents else np.zeros(0, dtype=np.int64)
        return {"lengths": flat, "counts": counts, "num_lines": self.num_lines}

    def __setstate__(self, state: dict) -> None:
        self.documents = np.split(state["lengths"], np.cumsum(state["counts"])[:-1]) if len(state["counts"]) else []
        self.num_lines = state["num_lines"]

    def add_lengths(self, line_lengths: np.ndarray) -> None:
        """Keep the line lengths (tokens) of one training document while there is room."""
        if not self.full:
            self.documents.append(line_lengths)
            self.num_lines += len(line_lengths)

    def fill(self, max_seq_length: int, nsp: bool) -> float:
        """Estimated fill rate of these documents built at `max_seq_length`: each packed
        into segments by `pack_lines`, as the builder packs them (with NSP, two segments
        per row, an approximation of the pairing)."""
        num_specials = 3 if nsp else 2
        capacity = (max_seq_length - 3) // 2 if nsp else max_seq_length - 2
        tokens = rows = 0
        for lengths in self.documents:
            segments = pack_lines([np.empty(length, dtype=np.int8) for length in lengths], capacity)
            document_rows = -(-len(segments) // 2) if nsp else len(segments)
            tokens += int(lengths.sum()) + num_specials * document_rows
            rows += document_rows
        return tokens / max(1, rows * max_seq_length)

    def median_document(self) -> int:
        """Text tokens of the median sampled document."""
        return int(np.median([lengths.sum() for lengths in self.documents])) if self.documents else 0


def suggested_length(sample: DocumentSample, seq_len: int, nsp: bool) -> tuple[int, float]:
    """(the longest of 64, 128, 256, 512 below `seq_len` whose estimated fill is at least
    `GOOD_FILL`, else the best filled one; its estimated fill)."""
    candidates = [length for length in (64, 128, 256, PRESET_POSITIONS) if length < seq_len] or [seq_len]
    fills = {length: sample.fill(length, nsp) for length in candidates}
    good = [length for length in candidates if fills[length] >= GOOD_FILL]
    best = max(good) if good else max(candidates, key=lambda length: fills[length])
    return best, fills[best]


def length_warnings(metadata: MLMDatasetMetadata, sample: DocumentSample) -> list[str]:
    """One line when `--max-seq-length` is longer than the presets' positions or leaves most
    positions empty, naming a better choice measured on a sample of the documents."""
    fill = metadata.report.fill_rate.get("train", 1.0)
    too_long = metadata.seq_len > PRESET_POSITIONS
    if not too_long and fill >= LOW_FILL_WARNING:
        return []
    problems = []
    if too_long:
        problems.append(f"is longer than the {PRESET_POSITIONS} positions of the BERT presets (training refuses it "
                        f"unless arch.max_position_embeddings>={metadata.seq_len})")
    if fill < LOW_FILL_WARNING:
        problems.append(f"leaves {1 - fill:.0%} of the positions as padding")
    better, better_fill = suggested_length(sample, metadata.seq_len, metadata.nsp)
    shorter = (f"--max-seq-length {better} (about {better_fill:.0%} of the positions filled, estimated from the "
               f"documents' line lengths)")
    if better_fill >= GOOD_FILL or metadata.nsp or metadata.packing == "full":
        advice = f"rebuild with {shorter}"
    else:
        advice = (f"with one document per sequence no length fills {GOOD_FILL:.0%} (median document "
                  f"{sample.median_document()} tokens): rebuild with --packing full (documents back to back, nearly "
                  f"every position filled) or {shorter}")
    return [f"--max-seq-length {metadata.seq_len} {' and '.join(problems)}; {advice}"]


def render_report(metadata: MLMDatasetMetadata, with_warnings: bool = True) -> str:
    """The report as text: a line per split, then the corpus and the vocabulary (and the warnings)."""
    report = metadata.report
    lines = []
    for split in SPLITS:
        lines.append(
            f"{split}: {report.documents.get(split, 0):,} documents, {report.lines.get(split, 0):,} lines, "
            f"{report.sentences.get(split, 0):,} sentences, {report.text_tokens.get(split, 0):,} text tokens "
            f"-> {metadata.num_sequences[split]:,} sequences of {metadata.seq_len}, {metadata.num_tokens[split]:,} "
            f"tokens with specials ({report.fill_rate.get(split, 0.0):.0%} of the positions filled)"
        )
    formats = ", ".join(f"{count} {name}" for name, count in sorted(report.files_by_format.items()))
    lines.append(f"input: {formats or 'no'} file(s), {report.bytes_read / 1e6:,.1f} MB; packing {metadata.packing}")
    removed = report.duplicates_removed
    lines.append(
        f"duplicates removed (--dedup {metadata.dedup}): {removed.get('documents', 0):,} documents, "
        f"{removed.get('paragraphs', 0):,} paragraphs"
    )
    lines.append("dropped: " + ", ".join(f"{count:,} {reason}" for reason, count in report.dropped.items()))
    unknown = " ".join(f"{char!r}:{count}" for char, count in report.unknown_characters) or "none"
    lines.append(
        f"vocabulary {metadata.vocab_size:,} ({metadata.tokenizer}): [UNK] {report.unknown_rate:.2%} of the tokens, "
        f"{report.pieces_per_word:.2f} pieces per word, {report.split_word_share:.1%} of the words split; "
        f"unknown characters: {unknown}"
    )
    if with_warnings:
        lines += [f"warning: {warning}" for warning in report.warnings]
    return "\n".join(lines) + "\n"
