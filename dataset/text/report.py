"""The corpus and vocabulary report of an MLM build: counted while the builder streams
(`ReportCounter`), stored in dataset.json (`CorpusReport`) and rendered for people
(`render_report`, printed and written to report.txt).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from dataset.text.corpus import Deduplicator, ReadCounters
from dataset.text.format import SPLITS, CorpusReport, MLMDatasetMetadata

UNKNOWN_RATE_WARNING = 0.005
"""[UNK] share above which the vocabulary is said not to cover the text (a WordPiece
vocabulary trained on the corpus is near 0; bert-base-uncased on English Wikipedia ~0.01%)."""
PIECES_PER_WORD_WARNING = 1.5
"""Pieces per word above which a bigger vocabulary is suggested (bert-base-uncased gives
about 1.1-1.2 on English Wikipedia)."""
NUM_UNKNOWN_CHARACTERS = 10


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
        starts_word = ~self.continuation[ids]  # (tokens,)
        # A word of several pieces: a word start followed by a continuation piece.
        split_word = np.zeros_like(starts_word)
        split_word[:-1] = starts_word[:-1] & ~starts_word[1:]
        per_token = {"text_tokens": None, "unknown_tokens": ids == self.unk_id, "words": starts_word,
                     "split_words": split_word}
        for index, split in enumerate(SPLITS):
            in_split = split_of_token == index
            self.counts["lines"][split] += int((split_of_line == index).sum())
            self.counts["sentences"][split] += int(sentences[split_of_line == index].sum())
            for name, flags in per_token.items():
                self.counts[name][split] += int(in_split.sum() if flags is None else (flags & in_split).sum())
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
