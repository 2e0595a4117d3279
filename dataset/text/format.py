"""The on-disk format of masked-language-model datasets (`dataset/build_text_mlm_dataset.py`)
and its writer (`ShardWriter`):

    <root>/dataset.json                     `MLMDatasetMetadata` (with the `CorpusReport`)
    <root>/report.txt                       the corpus and vocabulary report, readable
    <root>/tokenizer/                       tokenizer.json, vocab.txt, ... (AutoTokenizer loads it)
    <root>/<split>/shard_00000.npy          token ids [n, seq_len], uint16 or int32, padded with pad_id
    <root>/<split>/shard_00000.nsp.npy      int8 [n], 0 = B follows A, 1 = B is random (NSP datasets)
    <root>/<split>/shard_00000.masked.npy   ids after the build-time mask (static masking only)
    <root>/<split>/shard_00000.labels.npy   int32 [n, seq_len], original id or -100 (static masking only)
    <root>/<split>/shard_00000.lengths.npy  uint16 [n], real (non-padding) tokens per row (datasets
                                            built before it lack it: the stream counts them from the ids)
    <root>/<split>/documents.npy            `DOCUMENT_RECORD` [documents]: key, first row, rows (--packing documents)
    <root>/<split>/excluded_rows.npy        int64 [k], sorted: rows the loader skips (written by
                                            dataset/exclude_duplicate_documents.py, optional)

with `<split>` in {train, test}. Every sequence is `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from core.constants import IGNORE_LABEL_ID
from core.errors import UserError
from core.files import read_once
from dataset.stream import seeded_rng

SPLITS = ("train", "test")
BUILDER_HINT = "build one with: python dataset/build_text_mlm_dataset.py --input-files ... --output-dir ..."
STATIC_MASK_STREAM_KEY = 13
STATIC_MASK_BLOCK_ROWS = 4096
"""Rows masked with one seeded generator: memory stays small for large shards."""
StaticMasker = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]
"""(ids, rng) -> (masked ids, labels): a `dataset.text.masking.Masker`."""


class CorpusReport(BaseModel):
    """What the builder found in the corpus and how the vocabulary fits it (`report` in
    dataset.json, rendered in report.txt). Per-split figures are dicts `{train, test}`."""

    model_config = ConfigDict(extra="ignore")

    files_by_format: dict[str, int] = {}
    """Input files read, by detected format (the names of `dataset.text.corpus.FORMATS`)."""
    bytes_read: int = 0
    """Bytes of the input files on disk."""
    documents: dict[str, int] = {}
    """Documents kept per split (after de-duplication)."""
    lines: dict[str, int] = {}
    """Lines (paragraphs or sentences, as the corpus gives them) per split."""
    sentences: dict[str, int] = {}
    """Sentences per split: terminal punctuation followed by a space, at least one per line."""
    text_tokens: dict[str, int] = {}
    """Tokens of the text per split (special tokens excluded)."""
    unknown_tokens: dict[str, int] = {}
    """[UNK] tokens per split."""
    words: dict[str, int] = {}
    """Words per split: tokens that do not continue a word (`##`); punctuation counts as a word."""
    split_words: dict[str, int] = {}
    """Words made of two or more word pieces, per split."""
    fill_rate: dict[str, float] = {}
    """Non-padding share of the sequence positions, per split."""
    duplicates_removed: dict[str, int] = {}
    """Documents and paragraphs removed as exact repeats (`--dedup`)."""
    dropped: dict[str, int] = {}
    """What was not read, by reason: `empty` rows or blocks, `binary` lines, lines `too long`,
    `malformed` rows (the last three skipped with --on-bad-line skip, or too long)."""
    unknown_characters: list[tuple[str, int]] = []
    """The most frequent characters outside the vocabulary, in lines that gave [UNK]."""
    unknown_rate: float = 0.0
    """[UNK] share of the text tokens, both splits."""
    pieces_per_word: float = 0.0
    """Text tokens per word, both splits."""
    split_word_share: float = 0.0
    """Share of the words split into several pieces, both splits."""
    warnings: list[str] = []
    """Hints printed at the end of the build (vocabulary too small, wrong language)."""


class TokenIdFields(BaseModel):
    """The vocabulary and special ids of a tokenised dataset's `dataset.json` (MLM here,
    fine-tuning in `dataset.tasks.format`): declared once for both."""

    vocab_size: int
    """Number of token ids (the tokenizer's vocabulary, special tokens included)."""
    seq_len: int
    """Tokens per sequence, a row of the arrays (the builder's --max-seq-length)."""
    pad_id: int
    """Id of [PAD], used to fill sequences to `seq_len`."""
    cls_id: int
    """Id of [CLS], the first token of every sequence."""
    sep_id: int
    """Id of [SEP], after segment A (and after segment B)."""


class TokenizerFields(BaseModel):
    """Where a tokenised dataset's vocabulary came from (MLM and fine-tuning `dataset.json`)."""

    tokenizer: str
    """How the vocabulary was made: `wordpiece`, `whitespace`, or the path of a reused tokenizer."""
    lowercase: bool
    """Whether the tokenizer lowercases its input."""
    vocab_sha256: str
    """SHA-256 of `tokenizer/vocab.txt`: datasets and checkpoints used together must have the same vocabulary."""


class _MaskingFields(BaseModel):
    mask_id: int
    """Id of [MASK]."""
    unk_id: int
    """Id of [UNK]."""
    special_ids: list[int]
    """Ids that are never chosen for prediction nor used as random replacements."""
    mask_prob: float
    """Default masking rate of the dynamic masking; the rate of the static masking."""
    nsp: bool
    """Whether sequences are sentence pairs with next-sentence labels."""
    static_masking: bool
    """Whether the mask was applied once at build time (stored `.masked`/`.labels` shards)."""


# pydantic puts the fields of the last base first: the bases' order keeps the key order of
# dataset.json as it has always been written.
class MLMDatasetMetadata(TokenizerFields, _MaskingFields, TokenIdFields):
    """`dataset.json` of an MLM dataset folder."""

    model_config = ConfigDict(extra="ignore")

    num_documents: dict[str, int]
    """Documents per split."""
    num_sequences: dict[str, int]
    """Sequences per split."""
    num_tokens: dict[str, int]
    """Non-padding tokens per split (special tokens included)."""
    shards: dict[str, list[str]]
    """Shard file names per split, relative to `<root>/<split>/` (as stored on disk); after
    `load_mlm_metadata` they are paths `<root>/<split>/<name>`."""
    shard_rows: dict[str, list[int]] | None = None
    """Sequences in each shard of `shards`, per split: the loader sizes the row space from
    these without opening a shard (None for datasets built before they were stored)."""
    dtype: str
    """Storage type of the token ids: `uint16` when the vocabulary fits, else `int32`."""
    packing: str = "documents"
    """`full`: documents concatenated with [SEP] between them and cut at `seq_len`;
    `documents`: each sequence holds lines of one document (datasets built before the
    option existed)."""
    dedup: str = "none"
    """Exact repeats removed before the split: `documents`, `paragraphs` or `none`."""
    report: CorpusReport | None = None
    """The corpus and vocabulary report of the build (None for older datasets, and for
    several folders read together)."""


def read_mlm_metadata(path: str | Path) -> MLMDatasetMetadata:
    """The metadata of one dataset folder, as stored; `UserError` when it is not an MLM dataset."""
    file = Path(path) / "dataset.json"
    if not Path(path).is_dir():
        raise UserError(f"dataset folder {path} does not exist; {BUILDER_HINT}")
    if not file.is_file():
        raise UserError(f"{path} is not an MLM dataset (no dataset.json at its root); {BUILDER_HINT}")
    try:
        return MLMDatasetMetadata.model_validate(json.loads(read_once(file)))
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as error:
        first = str(error).splitlines()[0]
        raise UserError(f"{file} is not MLM dataset metadata ({first}); {BUILDER_HINT}") from None


def resolve_mlm_paths(paths: list[str]) -> list[str]:
    """The dataset folders that `data_paths` names, in one fixed order. An entry is a
    dataset folder (it has a dataset.json), a folder of parts (no dataset.json of its own:
    its sub-folders that are MLM datasets, sorted by name, see `_is_part`) or a glob (the matching dataset folders,
    sorted). Parts read together are one dataset: their rows follow each other in this order."""
    resolved = []
    for entry in paths:
        if glob.has_magic(entry):
            found = sorted(match for match in glob.glob(entry) if (Path(match) / "dataset.json").is_file())
            if not found:
                raise UserError(f"data_paths entry {entry} matches no dataset folder (none with a dataset.json); "
                                "check the pattern")
            resolved += found
        elif Path(entry).is_dir() and not (Path(entry) / "dataset.json").is_file():
            parts = sorted(str(sub) for sub in Path(entry).iterdir() if _is_part(sub))
            resolved += parts or [entry]  # no parts either: read_mlm_metadata says what is wrong
        else:
            resolved.append(entry)
    return resolved


def _is_part(folder: Path) -> bool:
    """Whether a sub-folder is a part of a folder of parts: an MLM dataset (a dataset.json
    and a tokenizer/, unlike a puzzle dataset's split folders), not hidden (a build still
    being written is a hidden folder beside its final name)."""
    return not folder.name.startswith(".") and (folder / "dataset.json").is_file() and (folder / "tokenizer").is_dir()


_SHARED_FIELDS = (
    "vocab_size", "seq_len", "pad_id", "cls_id", "sep_id", "mask_id", "unk_id", "special_ids",
    "vocab_sha256", "lowercase", "nsp", "static_masking", "mask_prob",
)  # fmt: skip


def load_mlm_metadata(paths: list[str]) -> MLMDatasetMetadata:
    """The combined metadata of one or more dataset folders read together.

    They must share the tokenizer, vocabulary, sequence length and format options
    (`UserError` otherwise). Counts are summed over the folders and `shards` lists paths
    `<root>/<split>/<name>` in folder order.
    """
    if not paths:
        raise UserError("no dataset folder given; set data_paths")
    metadatas = [read_mlm_metadata(path) for path in paths]
    first = metadatas[0]
    for path, metadata in zip(paths[1:], metadatas[1:]):
        for name in _SHARED_FIELDS:
            if getattr(metadata, name) != getattr(first, name):
                raise UserError(
                    f"datasets {paths[0]} and {path} differ in {name} ({getattr(first, name)} vs "
                    f"{getattr(metadata, name)}); build them with the same tokenizer and options"
                )
    merged = first.model_copy(deep=True)
    if len(metadatas) > 1:
        merged.report = None  # one build's report does not describe the sum
    for field_name in ("num_documents", "num_sequences", "num_tokens"):
        setattr(merged, field_name, {s: sum(getattr(m, field_name).get(s, 0) for m in metadatas) for s in SPLITS})
    merged.shards = {
        split: [str(Path(path) / split / name) for path, m in zip(paths, metadatas) for name in m.shards.get(split, [])]
        for split in SPLITS
    }
    merged.shard_rows = _merged_shard_rows(metadatas)
    return merged


def _merged_shard_rows(metadatas: list[MLMDatasetMetadata]) -> dict[str, list[int]] | None:
    """The per-shard row counts of folders read together, in folder order; None when one
    of them does not store them."""
    if any(m.shard_rows is None for m in metadatas):
        return None
    return {split: [rows for m in metadatas for rows in m.shard_rows.get(split, [])] for split in SPLITS}


DOCUMENT_RECORD = np.dtype([("key", "<u8"), ("first_row", "<i8"), ("num_rows", "<i8")])
"""One document of a split: its `dataset.text.corpus.document_key` and its rows."""
DOCUMENTS_FILE = "documents.npy"
EXCLUDED_ROWS_FILE = "excluded_rows.npy"
DOCUMENT_BUFFER = 1 << 16
"""Document records held in memory before they are appended to disk."""


class DocumentIndexWriter:
    """Writes `<split>/documents.npy`, one `DOCUMENT_RECORD` per document in row order;
    records are appended to a scratch file as they come, so memory stays bounded."""

    def __init__(self, folder: Path):
        self.path = folder / DOCUMENTS_FILE
        self._scratch = folder / "documents.records"
        self._file = None  # opened on the first spill (or by load_state_dict), closed by close()
        self._buffer: list[tuple[int, int, int]] = []
        self.count = 0

    def add(self, key: int, first_row: int, num_rows: int) -> None:
        self._buffer.append((key, first_row, num_rows))
        if len(self._buffer) >= DOCUMENT_BUFFER:
            self._spill()

    def add_many(self, keys: np.ndarray, first_rows: np.ndarray, num_rows: np.ndarray) -> None:
        """`add` for many documents at once (arrays of equal length), written to disk at once."""
        records = np.empty(len(keys), dtype=DOCUMENT_RECORD)
        records["key"], records["first_row"], records["num_rows"] = keys, first_rows, num_rows
        self._spill()
        records.tofile(self._file)
        self.count += len(records)

    def _spill(self) -> None:
        if self._file is None:
            self._file = open(self._scratch, "wb")  # noqa: SIM115 - closed by close()
        np.array(self._buffer, dtype=DOCUMENT_RECORD).tofile(self._file)
        self.count += len(self._buffer)
        self._buffer.clear()

    def state_dict(self) -> dict:
        """What `load_state_dict` needs to continue (the records spilled so far stay in the scratch file)."""
        if self._file is not None:
            self._file.flush()
        return {"count": self.count, "buffer": list(self._buffer)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()` (a resumed build): the scratch file is cut back to the
        records spilled by then, dropping any a stopped build wrote after its last commit."""
        self.count, self._buffer = state["count"], list(state["buffer"])
        self._file = open(self._scratch, "r+b" if self._scratch.exists() else "wb")  # noqa: SIM115 - closed by close()
        self._file.truncate(self.count * DOCUMENT_RECORD.itemsize)
        self._file.seek(0, os.SEEK_END)

    def close(self) -> None:
        """Write the `.npy` file (header, then the records) and remove the scratch file."""
        self._spill()
        self._file.close()
        header = {"descr": np.lib.format.dtype_to_descr(DOCUMENT_RECORD), "fortran_order": False, "shape": (self.count,)}
        with open(self.path, "wb") as out, open(self._scratch, "rb") as records:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(records, out)
        self._scratch.unlink()


def place_rows(out: np.ndarray, tokens: np.ndarray, row_lengths: np.ndarray, cls_id: int, sep_id: int) -> None:
    """Lay out `[CLS] row [SEP]` at the start of each row of `out` ((n, L), padding
    elsewhere); `tokens` holds the rows' text tokens one after another, `row_lengths`
    (int64) how many each has."""
    columns = np.arange(out.shape[1])  # (L,)
    # Row-major order of the text positions is the order of `tokens`.
    out[(columns >= 1) & (columns <= row_lengths[:, None])] = tokens
    out[:, 0], out[np.arange(len(row_lengths)), 1 + row_lengths] = cls_id, sep_id


class ShardWriter:
    """Writes the sequences of one split into fixed-size numpy shards."""

    def __init__(self, folder: Path, special_ids: dict[str, int], dtype, *, shard_size: int, seq_len: int,
                 nsp: bool, seed: int, masker: StaticMasker | None):  # fmt: skip
        """`masker` (static masking) also writes each shard's `.masked` and `.labels`, seeded by `seed`."""
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)  # exists when a stopped build resumes
        self.shard_size, self.seq_len, self.dtype = shard_size, seq_len, dtype
        self.nsp, self.masker, self.seed = nsp, masker, seed
        self.pad_id, self.cls_id, self.sep_id = special_ids["[PAD]"], special_ids["[CLS]"], special_ids["[SEP]"]
        self.ids = np.full((self.shard_size, self.seq_len), self.pad_id, dtype=dtype)  # (S, L)
        self.nsp_labels = np.zeros(self.shard_size, dtype=np.int8)  # (S,)
        self.rows = 0
        self._saved = 0  # buffered rows already in the pending files (`state_dict`)
        self._committed_shard = 0
        self.names: list[str] = []
        self.shard_rows: list[int] = []
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

    def add_rows(self, tokens: np.ndarray, row_lengths: np.ndarray) -> None:
        """Append `[CLS] A [SEP]` for many rows at once, as `add` would one by one (`tokens`:
        the rows' text tokens one after another; `row_lengths`: int64 tokens per row)."""
        first = offset = 0
        while first < len(row_lengths):
            count = min(len(row_lengths) - first, self.shard_size - self.rows)
            lengths = row_lengths[first : first + count]  # (count,)
            size = int(lengths.sum())
            place_rows(self.ids[self.rows : self.rows + count], tokens[offset : offset + size], lengths,
                       self.cls_id, self.sep_id)  # fmt: skip
            self._added(count, size)
            first, offset = first + count, offset + size

    def add_padded(self, rows: np.ndarray, row_lengths: np.ndarray) -> None:
        """Append rows already laid out by `place_rows` ((n, L) in the storage dtype, the
        rest padding; `row_lengths`: text tokens per row), as `add` would one by one."""
        first = 0
        while first < len(rows):
            count = min(len(rows) - first, self.shard_size - self.rows)
            self.ids[self.rows : self.rows + count] = rows[first : first + count]
            self._added(count, int(row_lengths[first : first + count].sum()))
            first += count

    def _added(self, count: int, text_tokens: int) -> None:
        """Account for `count` rows of `[CLS] A [SEP]` just placed in the buffer."""
        self.nsp_labels[self.rows : self.rows + count] = IGNORE_LABEL_ID
        self.rows += count
        self.num_tokens += text_tokens + 2 * count
        if self.rows == self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as the next shard (and its companions)."""
        if self.rows == 0:
            return
        name = f"shard_{len(self.names):05d}"
        ids = self.ids[: self.rows]  # (n, L)
        np.save(self.folder / f"{name}.npy", ids)
        # Real tokens per row: the training stream decides trimmed widths from these, not the ids.
        lengths = (ids != self.pad_id).sum(axis=1).astype(np.uint16 if self.seq_len < 2**16 else np.int32)
        np.save(self.folder / f"{name}.lengths.npy", lengths)
        if self.nsp:
            np.save(self.folder / f"{name}.nsp.npy", self.nsp_labels[: self.rows])
        if self.masker is not None:
            masked, labels = self._static_masks(ids, len(self.names))
            np.save(self.folder / f"{name}.masked.npy", masked)
            np.save(self.folder / f"{name}.labels.npy", labels)
        self.names.append(f"{name}.npy")
        self.shard_rows.append(self.rows)
        self.num_sequences += self.rows
        self.ids.fill(self.pad_id)
        self.rows = self._saved = 0

    def state_dict(self) -> dict:
        """What `load_state_dict` needs to continue this writer exactly. The buffered rows
        are not in it: they are appended, those added since the last call only, to the
        pending files of the shard being filled, so that a resumable build writes each row
        once there however often it commits (not a whole shard's buffer per commit)."""
        shard = len(self.names)
        for kind, values in (("ids", self.ids), ("nsp", self.nsp_labels)):
            # Nothing of this shard saved yet: what the file holds is a killed build's.
            with open(self._pending(shard, kind), "ab" if self._saved else "wb") as handle:
                values[self._saved : self.rows].tofile(handle)
        self._saved = self.rows
        # The journal on disk still names the shard of the call before: keep its files until the next call.
        self._remove_pending(lambda index: index < min(shard, self._committed_shard))
        self._committed_shard = shard
        return {"rows": self.rows, "names": list(self.names), "shard_rows": list(self.shard_rows),
                "num_sequences": self.num_sequences, "num_tokens": self.num_tokens}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()` (a resumed build): the buffered rows come back from
        the pending files, cut to the rows the state counted."""
        self.names, self.shard_rows = list(state["names"]), list(state["shard_rows"])
        self.num_sequences, self.num_tokens = state["num_sequences"], state["num_tokens"]
        shard, self.rows = len(self.names), state["rows"]
        for kind, values in (("ids", self.ids), ("nsp", self.nsp_labels)):
            path = self._pending(shard, kind)
            with open(path, "r+b") as handle:
                handle.truncate(self.rows * values[0].nbytes)
                values[: self.rows] = np.fromfile(handle, dtype=values.dtype).reshape(values[: self.rows].shape)
        self._saved, self._committed_shard = self.rows, shard
        self._remove_pending(lambda index: index > shard)  # written after the commit

    def remove_pending(self) -> None:
        """Remove every pending file (the build is complete)."""
        self._remove_pending(lambda index: True)

    def _pending(self, shard: int, kind: str) -> Path:
        return self.folder / f".pending_{shard:05d}.{kind}"

    def _remove_pending(self, chosen) -> None:
        for path in self.folder.glob(".pending_*"):
            if chosen(int(path.name.split("_")[1].split(".")[0])):
                path.unlink()

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
