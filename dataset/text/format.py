"""The on-disk format of masked-language-model datasets (`dataset/build_text_mlm_dataset.py`):

    <root>/dataset.json                     `MLMDatasetMetadata`
    <root>/tokenizer/                       tokenizer.json, vocab.txt, ... (AutoTokenizer loads it)
    <root>/<split>/shard_00000.npy          token ids [n, seq_len], uint16 or int32, padded with pad_id
    <root>/<split>/shard_00000.nsp.npy      int8 [n], 0 = B follows A, 1 = B is random (NSP datasets)
    <root>/<split>/shard_00000.masked.npy   ids after the build-time mask (static masking only)
    <root>/<split>/shard_00000.labels.npy   int32 [n, seq_len], original id or -100 (static masking only)

with `<split>` in {train, test}. Every sequence is `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import UserError

SPLITS = ("train", "test")
BUILDER_HINT = "build one with: python dataset/build_text_mlm_dataset.py --input-files ... --output-dir ..."


class MLMDatasetMetadata(BaseModel):
    """`dataset.json` of an MLM dataset folder."""

    model_config = ConfigDict(extra="ignore")

    vocab_size: int
    """Number of token ids (the tokenizer's vocabulary, special tokens included)."""
    seq_len: int
    """Tokens per sequence (the builder's --max-seq-length)."""
    pad_id: int
    """Id of [PAD], used to fill sequences to `seq_len`."""
    cls_id: int
    """Id of [CLS], the first token of every sequence."""
    sep_id: int
    """Id of [SEP], after segment A (and after segment B)."""
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
    tokenizer: str
    """How the vocabulary was made: `wordpiece`, `whitespace`, or the path of a reused tokenizer."""
    lowercase: bool
    """Whether the tokenizer lowercases its input."""
    vocab_sha256: str
    """SHA-256 of `tokenizer/vocab.txt`: datasets used together must have the same vocabulary."""
    num_documents: dict[str, int]
    """Documents per split."""
    num_sequences: dict[str, int]
    """Sequences per split."""
    num_tokens: dict[str, int]
    """Non-padding tokens per split (special tokens included)."""
    shards: dict[str, list[str]]
    """Shard file names per split, relative to `<root>/<split>/` (as stored on disk); after
    `load_mlm_metadata` they are paths `<root>/<split>/<name>`."""
    dtype: str
    """Storage type of the token ids: `uint16` when the vocabulary fits, else `int32`."""


def read_mlm_metadata(path: str | Path) -> MLMDatasetMetadata:
    """The metadata of one dataset folder, as stored; `UserError` when it is not an MLM dataset."""
    file = Path(path) / "dataset.json"
    if not Path(path).is_dir():
        raise UserError(f"dataset folder {path} does not exist; {BUILDER_HINT}")
    if not file.is_file():
        raise UserError(f"{path} is not an MLM dataset (no dataset.json at its root); {BUILDER_HINT}")
    try:
        with open(file, encoding="utf-8") as handle:
            return MLMDatasetMetadata.model_validate(json.load(handle))
    except (json.JSONDecodeError, ValidationError) as error:
        first = str(error).splitlines()[0]
        raise UserError(f"{file} is not MLM dataset metadata ({first}); {BUILDER_HINT}") from None


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
    for field_name in ("num_documents", "num_sequences", "num_tokens"):
        setattr(merged, field_name, {s: sum(getattr(m, field_name).get(s, 0) for m in metadatas) for s in SPLITS})
    merged.shards = {
        split: [str(Path(path) / split / name) for path, m in zip(paths, metadatas) for name in m.shards.get(split, [])]
        for split in SPLITS
    }
    return merged
