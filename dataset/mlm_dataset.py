"""Masked-language-model datasets: on-disk format, masking, training and evaluation streams.

A dataset folder written by `dataset/build_text_mlm_dataset.py`:

    <root>/dataset.json                     `MLMDatasetMetadata`
    <root>/tokenizer/                       tokenizer.json, vocab.txt, ... (AutoTokenizer loads it)
    <root>/<split>/shard_00000.npy          token ids [n, seq_len], uint16 or int32, padded with pad_id
    <root>/<split>/shard_00000.nsp.npy      int8 [n], 0 = B follows A, 1 = B is random (NSP datasets)
    <root>/<split>/shard_00000.masked.npy   ids after the build-time mask (static masking only)
    <root>/<split>/shard_00000.labels.npy   int32 [n, seq_len], original id or -100 (static masking only)

with `<split>` in {train, test}. Every sequence is `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`.

Masking is dynamic by default: the stream draws a fresh mask each time it serves a
sequence. The random numbers of a global batch are drawn from `seeded_rng(seed, key,
stream position of its first example)` for the whole global batch at once, then each
rank applies its slice to its own rows, so masks are reproducible, exact under resume
and the same whatever the number of processes. Shards are memory-mapped; only the rows
of the current batch are read.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dataset.common import IGNORE_LABEL_ID, UserError
from dataset.stream import Batch, EvalBatches, seeded_rng

SPLITS = ("train", "test")
TRAIN_MASK_STREAM_KEY = 7
"""Second key of the generator behind the training masks: seeded_rng(seed, 7, position)."""
EVAL_MASK_STREAM_KEY = 11
"""Second key of the generator behind the (fixed) evaluation masks."""
BUILDER_HINT = "build one with: python dataset/build_text_mlm_dataset.py --input-files ... --output-dir ..."


class MaskingConfig(BaseModel):
    """How the training stream chooses the positions the model must predict."""

    model_config = ConfigDict(extra="forbid")

    mask_prob: float | None = Field(default=None, gt=0.0, lt=1.0)
    """Fraction of the non-special tokens of each sequence to predict; None takes the rate
    recorded in the dataset (the builder's --mask-prob, 0.15 by default)."""
    whole_word: bool = False
    """Choose whole words: a WordPiece token starting with `##` is chosen together with
    the word it continues (whole-word masking, as in BERT's later release)."""


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


# ----------------------------------------------------------------------------- masking


@dataclass
class MaskDraws:
    """The random numbers behind the masks of a batch; row-sliceable, content-independent."""

    keys: np.ndarray
    """int64 (B, L): random 40-bit numbers that order the positions (or words) of each row."""
    choice: np.ndarray
    """float64 (B, L): < 0.8 -> [MASK]; in [0.8, 0.9) -> random token, the position in
    that interval picking the token; else unchanged."""

    def rows(self, start: int, stop: int) -> MaskDraws:
        """The draws of rows start..stop-1."""
        return MaskDraws(self.keys[start:stop], self.choice[start:stop])


class Masker:
    """BERT's masking: choose `mask_prob` of the maskable tokens, then 80/10/10.

    Per sequence, `round(n * mask_prob)` of its n maskable tokens (not special, not
    padding) are chosen uniformly without replacement, at least one when n > 0. Chosen
    tokens become [MASK] (80%), a uniformly random non-special token (10%) or stay (10%);
    labels hold the original id at chosen positions and -100 elsewhere. With a
    continuation table (whole-word masking) words are chosen in random order until the
    count of tokens is reached; a word is a token plus the `##` tokens that follow it.
    """

    def __init__(
        self,
        vocab_size: int,
        special_ids: list[int],
        mask_id: int,
        mask_prob: float,
        continuation: np.ndarray | None = None,
    ):
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
        self.mask_id = mask_id
        self.mask_prob = mask_prob
        self.is_special = np.zeros(vocab_size, dtype=bool)
        self.is_special[special_ids] = True
        self.replacement_ids = np.flatnonzero(~self.is_special)  # (V - S,)
        self.continuation = continuation
        """bool [vocab_size]: token continues the previous word (`##x`); None = per-token masking."""

    def draw(self, rng: np.random.Generator, shape: tuple[int, int]) -> MaskDraws:
        """All random numbers for a batch of `shape`, drawn in a fixed order."""
        return MaskDraws(keys=rng.integers(0, 2**40, size=shape, dtype=np.int64), choice=rng.random(shape))

    def __call__(self, input_ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(masked input ids, labels), both int64 (B, L), for a batch of ids (B, L)."""
        return self.apply(input_ids, self.draw(rng, input_ids.shape))

    def num_to_mask(self, num_maskable: np.ndarray) -> np.ndarray:
        """Tokens to choose per sequence: round(n * p) (half to even), at least 1 when n > 0."""
        count = np.rint(num_maskable * self.mask_prob).astype(np.int64)
        return np.where(num_maskable > 0, np.maximum(count, 1), 0)

    def apply(self, input_ids: np.ndarray, draws: MaskDraws) -> tuple[np.ndarray, np.ndarray]:
        """(masked input ids, labels), int64 (B, L), using precomputed draws of the same shape."""
        input_ids = np.asarray(input_ids, dtype=np.int64)  # (B, L)
        maskable = ~self.is_special[input_ids]  # (B, L)
        count = self.num_to_mask(maskable.sum(axis=1))  # (B,)
        if self.continuation is None:
            selected = _choose_positions(maskable, count, draws.keys)
        else:
            selected = _choose_words(maskable, self._word_starts(input_ids, maskable), count, draws.keys)
        masked = input_ids.copy()
        masked[selected & (draws.choice < 0.8)] = self.mask_id
        replace = selected & (draws.choice >= 0.8) & (draws.choice < 0.9)
        # (choice - 0.8) / 0.1 is uniform in [0, 1): it picks the replacement token.
        which = ((draws.choice[replace] - 0.8) * (10 * len(self.replacement_ids))).astype(np.int64)
        masked[replace] = self.replacement_ids[np.minimum(which, len(self.replacement_ids) - 1)]
        labels = np.where(selected, input_ids, IGNORE_LABEL_ID)
        return masked, labels

    def _word_starts(self, input_ids: np.ndarray, maskable: np.ndarray) -> np.ndarray:
        """bool (B, L): maskable tokens that begin a word (not `##`, or first after a special)."""
        previous_maskable = np.zeros_like(maskable)
        previous_maskable[:, 1:] = maskable[:, :-1]
        return maskable & (~self.continuation[input_ids] | ~previous_maskable)


def _order_keys(random_keys: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, int]:
    """Sortable keys, unique per row: random high bits (invalid slots last), slot in the low bits."""
    length = random_keys.shape[1]
    slot_bits = max(1, (length - 1).bit_length())
    keys = random_keys.copy()  # (B, L); in-place steps below avoid 1 MB temporaries
    keys[~valid] = 2**40  # invalid slots sort after every valid one
    keys <<= slot_bits
    keys |= np.arange(length, dtype=np.int64)
    return keys, slot_bits


def _choose_positions(maskable: np.ndarray, count: np.ndarray, random_keys: np.ndarray) -> np.ndarray:
    """bool (B, L): `count[b]` maskable positions of each row, uniformly without replacement."""
    keys, _ = _order_keys(random_keys, maskable)  # (B, L)
    ordered = np.sort(keys, axis=1)  # (B, L)
    threshold = np.take_along_axis(ordered, np.maximum(count - 1, 0)[:, None], axis=1)  # (B, 1)
    return maskable & (keys <= threshold) & (count > 0)[:, None]


def _choose_words(maskable: np.ndarray, word_start: np.ndarray, count: np.ndarray, random_keys: np.ndarray):
    """bool (B, L): whole words in random order until each row has `count[b]` tokens or more."""
    batch, length = maskable.shape
    word_index = np.cumsum(word_start, axis=1) - 1  # (B, L) word of each token (maskable ones)
    slot = np.where(maskable, word_index, length)  # non-maskable tokens go to a spare slot
    flat = (np.arange(batch)[:, None] * (length + 1) + slot).ravel()
    word_length = np.bincount(flat, minlength=batch * (length + 1)).reshape(batch, length + 1)[:, :length]
    keys, slot_bits = _order_keys(random_keys, word_length > 0)  # (B, W=L)
    order = np.sort(keys, axis=1) & ((1 << slot_bits) - 1)  # (B, W) word slots, random order
    ordered_length = np.take_along_axis(word_length, order, axis=1)  # (B, W)
    before = np.cumsum(ordered_length, axis=1) - ordered_length  # tokens chosen before each word
    chosen_ordered = (before < count[:, None]) & (ordered_length > 0)
    chosen_word = np.zeros((batch, length), dtype=bool)
    np.put_along_axis(chosen_word, order, chosen_ordered, axis=1)
    return maskable & np.take_along_axis(chosen_word, np.clip(word_index, 0, length - 1), axis=1)


def continuation_table(vocab_file: str | Path, vocab_size: int) -> np.ndarray:
    """bool [vocab_size]: which tokens of a `vocab.txt` continue a word (start with `##`)."""
    with open(vocab_file, encoding="utf-8") as handle:
        tokens = handle.read().split("\n")[:vocab_size]
    return np.array([token.startswith("##") for token in tokens] + [False] * (vocab_size - len(tokens)))


def build_masker(paths: list[str], metadata: MLMDatasetMetadata, masking: MaskingConfig) -> Masker:
    """The dynamic masker a stream over `paths` uses with this masking config."""
    continuation = None
    if masking.whole_word:
        continuation = continuation_table(Path(paths[0]) / "tokenizer" / "vocab.txt", metadata.vocab_size)
        if not continuation.any():
            warnings.warn(
                f"masking.whole_word has no effect: the vocabulary of {paths[0]} has no '##' continuation tokens",
                stacklevel=2,
            )
    mask_prob = metadata.mask_prob if masking.mask_prob is None else masking.mask_prob
    return Masker(metadata.vocab_size, metadata.special_ids, metadata.mask_id, mask_prob, continuation)


# ----------------------------------------------------------------------- reading shards


def _companion(shard: Path, kind: str) -> Path:
    """`shard_00000.npy` -> `shard_00000.<kind>.npy`."""
    return shard.with_name(shard.name[: -len(".npy")] + f".{kind}.npy")


class _SplitShards:
    """The memory-mapped shards of one split of one or more datasets, as one row space."""

    def __init__(self, metadata: MLMDatasetMetadata, split: str):
        self.metadata = metadata
        self.ids, self.nsp, self.masked, self.labels = [], [], [], []
        for name in metadata.shards[split]:
            shard = Path(name)
            self.ids.append(self._open(shard, (metadata.seq_len,)))
            rows = len(self.ids[-1])
            if metadata.nsp:
                self.nsp.append(self._open(_companion(shard, "nsp"), (), rows))
            if metadata.static_masking:
                self.masked.append(self._open(_companion(shard, "masked"), (metadata.seq_len,), rows))
                self.labels.append(self._open(_companion(shard, "labels"), (metadata.seq_len,), rows))
        self.starts = np.cumsum([0] + [len(ids) for ids in self.ids])  # (num_shards + 1,)
        self.num_rows = int(self.starts[-1])
        if self.num_rows != metadata.num_sequences[split]:
            raise UserError(
                f"{split} shards hold {self.num_rows} sequences, dataset.json says "
                f"{metadata.num_sequences[split]}; the dataset is damaged, rebuild it"
            )

    @staticmethod
    def _open(path: Path, row_shape: tuple[int, ...], rows: int | None = None) -> np.ndarray:
        if not path.is_file():
            raise UserError(f"{path} is missing; the dataset is incomplete, rebuild it")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)  # never unpickles: no code runs
        except (ValueError, OSError, EOFError) as error:
            raise UserError(f"{path} cannot be read ({error}); rebuild the dataset") from None
        if array.shape[1:] != row_shape or (rows is not None and len(array) != rows):
            raise UserError(f"{path} has shape {array.shape}, not (n, *{row_shape}); rebuild the dataset")
        return array

    def take(
        self, rows: np.ndarray, keys: tuple[str, ...] = ("ids", "nsp", "masked", "labels")
    ) -> dict[str, np.ndarray]:
        """Rows (global indices) of the stored arrays among `keys` that exist: ids, and
        nsp/masked/labels when present."""
        shard_of_row = np.searchsorted(self.starts, rows, side="right") - 1  # (n,)
        arrays = {"ids": self.ids, "nsp": self.nsp, "masked": self.masked, "labels": self.labels}
        out = {}
        for key in keys:
            shards = arrays[key]
            if not shards:
                continue
            result = np.empty((len(rows),) + shards[0].shape[1:], dtype=np.int64)
            for shard in np.unique(shard_of_row):
                in_shard = shard_of_row == shard
                result[in_shard] = shards[shard][rows[in_shard] - self.starts[shard]]
            out[key] = result
        return out


def _model_batch(
    stored: dict[str, np.ndarray], masked: np.ndarray, labels: np.ndarray, meta: MLMDatasetMetadata
) -> Batch:
    """The arrays the model reads, from the original ids and their masked version."""
    ids = stored["ids"]  # (b, L)
    attention_mask = ids != meta.pad_id  # (b, L)
    first_sep = np.argmax(ids == meta.sep_id, axis=1)  # (b,)
    # Segment B starts after the first [SEP]; padding keeps type 0, as Hugging Face tokenizers do.
    after_first_sep = np.arange(ids.shape[1])[None, :] > first_sep[:, None]  # (b, L)
    batch = {
        "input_ids": masked.astype(np.int64),
        "token_type_ids": (after_first_sep & attention_mask).astype(np.int64),
        "attention_mask": attention_mask,
        "labels": labels.astype(np.int64),
    }
    if meta.nsp:
        batch["next_sentence_label"] = stored["nsp"].astype(np.int64)
    return batch


def _trimmed_length(ids: np.ndarray, pad_id: int, multiple: int) -> int:
    """Columns to keep: up to the last real token of any row, rounded up to `multiple`
    (at most the full length). Padding is only ever at the end of a sequence."""
    length = ids.shape[1]
    real_columns = np.flatnonzero((ids != pad_id).any(axis=0))  # (k,)
    longest = int(real_columns[-1]) + 1 if len(real_columns) else 1
    return min(length, -(-longest // multiple) * multiple)


def _check_batch_split(global_batch_size: int, rank: int, world_size: int) -> None:
    if global_batch_size <= 0 or global_batch_size % world_size:
        raise UserError(
            f"global_batch_size {global_batch_size} must be a positive multiple of the {world_size} "
            "processes; change it"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")


def _warn_if_static(metadata: MLMDatasetMetadata, masking: MaskingConfig) -> None:
    if metadata.static_masking and (masking.mask_prob is not None or masking.whole_word):
        warnings.warn(
            "the dataset was built with --static-masking: its stored masks are used and "
            "masking.mask_prob / masking.whole_word have no effect",
            stacklevel=3,
        )


# -------------------------------------------------------------------------- the streams


class MLMTrainStream:
    """The endless, seeded stream of training batches of MLM datasets (a `TrainStream`).

    Epoch e visits every training sequence in the order of `seeded_rng(seed, e)`'s
    permutation; global batches are consecutive chunks of that stream, spanning epochs.
    The state is the absolute stream position, so resuming needs no replay. Each rank
    reads only its own rows; the mask draws are made for the whole global batch and
    sliced, so the result equals `rank_slice` of the single-process batch. With
    `trim_to_multiple`, the columns after the global batch's longest sequence are dropped
    (rounded up to the multiple): the same on every rank, and no compute on them.
    """

    def __init__(
        self,
        paths: list[str],
        seed: int,
        global_batch_size: int,
        rank: int,
        world_size: int,
        masking: MaskingConfig,
        trim_to_multiple: int | None = None,
    ):
        _check_batch_split(global_batch_size, rank, world_size)
        if trim_to_multiple is not None and trim_to_multiple <= 0:
            raise ValueError(f"trim_to_multiple must be positive or None, got {trim_to_multiple}")
        self.trim_to_multiple = trim_to_multiple
        """Drop trailing all-padding columns of each global batch, keeping a multiple of
        this many; None serves the full `seq_len`."""
        self.metadata = load_mlm_metadata(paths)
        self._train = _SplitShards(self.metadata, "train")
        if self._train.num_rows == 0:
            raise UserError(f"the train split of {paths} has no sequences; rebuild the dataset with more text")
        _warn_if_static(self.metadata, masking)
        self._masker = None if self.metadata.static_masking else build_masker(paths, self.metadata, masking)
        self.seed = seed
        self.global_batch_size = global_batch_size
        self.rank, self.world_size = rank, world_size
        self.examples_per_epoch = float(self._train.num_rows)
        self._position = 0
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        """The visiting order of `epoch` (the last two are kept: a batch can span epochs)."""
        if epoch not in self._permutations:
            self._permutations = {e: p for e, p in self._permutations.items() if e == epoch - 1}
            self._permutations[epoch] = seeded_rng(self.seed, epoch).permutation(self._train.num_rows)
        return self._permutations[epoch]

    def _rows(self, start: int, count: int) -> np.ndarray:
        """Sequence rows at stream positions start..start+count-1."""
        positions = start + np.arange(count, dtype=np.int64)  # (n,)
        epochs, offsets = np.divmod(positions, self._train.num_rows)
        rows = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            in_epoch = epochs == epoch
            rows[in_epoch] = self._permutation(int(epoch))[offsets[in_epoch]]
        return rows

    def next_batch(self) -> Batch:
        """This rank's slice of the next global batch (see the module docstring for the keys)."""
        start = self._position
        local = self.global_batch_size // self.world_size
        first, stop = self.rank * local, (self.rank + 1) * local
        global_rows = self._rows(start, self.global_batch_size)  # (B,)
        rows = global_rows[first:stop]  # (b,)
        stored = self._train.take(rows)
        if self._masker is None:
            masked, labels = stored["masked"], stored["labels"]
        else:
            draws = self._masker.draw(
                seeded_rng(self.seed, TRAIN_MASK_STREAM_KEY, start), (self.global_batch_size, self.metadata.seq_len)
            )
            masked, labels = self._masker.apply(stored["ids"], draws.rows(first, stop))
        self._position += self.global_batch_size
        batch = _model_batch(stored, masked, labels, self.metadata)
        if self.trim_to_multiple is None:
            return batch
        # Decided on the global batch, so every rank keeps the same width.
        ids = stored["ids"] if self.world_size == 1 else self._train.take(global_rows, ("ids",))["ids"]
        width = _trimmed_length(ids, self.metadata.pad_id, self.trim_to_multiple)
        return {key: value[:, :width] if value.ndim == 2 else value for key, value in batch.items()}

    def state_dict(self) -> dict[str, int]:
        """Examples served so far (all ranks together), and the dataset size as a check."""
        return {"position": self._position, "num_sequences": self._train.num_rows}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue after the last batch served before `state_dict` was taken."""
        if int(state["num_sequences"]) != self._train.num_rows:
            raise UserError(
                f"the checkpoint's data position is for {state['num_sequences']} training sequences, the "
                f"dataset has {self._train.num_rows}; resume with the same data_paths"
            )
        self._position = int(state["position"])


def iter_mlm_eval_batches(
    paths: list[str],
    global_batch_size: int,
    rank: int,
    world_size: int,
    masking: MaskingConfig,
    seed: int = 0,
) -> EvalBatches:
    """The test split once, in order, as ("all", this rank's slice) with a fixed mask.

    The mask of a global batch depends only on `seed` and the batch's first row, so every
    evaluation round sees the same masks. The last global batch is filled with rows
    `[CLS] [SEP]` that carry no label (MLM labels and NSP label -100).
    """
    _check_batch_split(global_batch_size, rank, world_size)
    metadata = load_mlm_metadata(paths)
    test = _SplitShards(metadata, "test")
    _warn_if_static(metadata, masking)
    masker = None if metadata.static_masking else build_masker(paths, metadata, masking)
    return _eval_batches(test, masker, metadata, global_batch_size, rank, world_size, seed)


def _eval_batches(
    test: _SplitShards,
    masker: Masker | None,
    metadata: MLMDatasetMetadata,
    global_batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
) -> EvalBatches:
    """The generator behind `iter_mlm_eval_batches` (arguments already checked)."""
    local = global_batch_size // world_size
    first, stop = rank * local, (rank + 1) * local
    for start in range(0, test.num_rows, global_batch_size):
        rows = start + np.arange(first, stop)  # (b,) this rank's rows, some past the end
        real = rows < test.num_rows
        stored = _with_padding_rows(test.take(rows[real]), int((~real).sum()), metadata)
        if masker is None:
            masked, labels = stored["masked"], stored["labels"]
        else:
            draws = masker.draw(seeded_rng(seed, EVAL_MASK_STREAM_KEY, start), (global_batch_size, metadata.seq_len))
            masked, labels = masker.apply(stored["ids"], draws.rows(first, stop))
        yield "all", _model_batch(stored, masked, labels, metadata)


def _with_padding_rows(stored: dict[str, np.ndarray], count: int, meta: MLMDatasetMetadata) -> dict[str, np.ndarray]:
    """Append `count` label-free rows `[CLS] [SEP] [PAD]...` to the stored arrays."""
    if count == 0:
        return stored
    pad_ids = np.full((count, meta.seq_len), meta.pad_id, dtype=np.int64)
    pad_ids[:, 0], pad_ids[:, 1] = meta.cls_id, meta.sep_id
    extra = {
        "ids": pad_ids,
        "nsp": np.full(count, IGNORE_LABEL_ID, dtype=np.int64),
        "masked": pad_ids,
        "labels": np.full((count, meta.seq_len), IGNORE_LABEL_ID, dtype=np.int64),
    }
    return {key: np.concatenate([value, extra[key]]) for key, value in stored.items()}
