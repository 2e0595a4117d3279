"""BERT's masking: which positions a sequence is trained to predict, and with what input.

`Masker` chooses `mask_prob` of the maskable tokens of each sequence, then replaces
80% of them by [MASK], 10% by a random token, and leaves 10% (optionally whole words).
The random numbers come in `MaskDraws`; the streams draw them counter-based, a function of
(seed, key, row id or stream position) alone (`Masker.draw_keyed`), so each rank draws
only its own rows' and the result does not depend on the number of processes.
`MLMDataOptions` holds the settings a run may change (`data.*` in the config).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core.constants import IGNORE_LABEL_ID
from core.errors import ConfigError
from dataset.stream import mix64
from dataset.text.format import MLMDatasetMetadata


class MaskingConfig(BaseModel):
    """How the stream chooses the positions the model must predict (`data.masking.*`)."""

    model_config = ConfigDict(extra="forbid")

    mask_prob: float | None = Field(default=None, gt=0.0, lt=1.0)
    """Fraction of the non-special tokens of each sequence to predict; None takes the rate
    recorded in the dataset (the builder's --mask-prob, 0.15 by default)."""
    whole_word: bool = False
    """Choose whole words: a WordPiece token starting with `##` is chosen together with
    the word it continues (whole-word masking, as in BERT's later release)."""


@dataclass
class MaskDraws:
    """The random numbers behind the masks of a batch (content-independent)."""

    keys: np.ndarray
    """int64 (B, L): random numbers below 2**40 that order the positions (or words) of each row."""
    choice: np.ndarray
    """float64 (B, L): < 0.8 -> [MASK]; in [0.8, 0.9) -> random token, the position in
    that interval picking the token; else unchanged."""


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

    @staticmethod
    def draw_keyed(seed: int, key: int, indices: np.ndarray, length: int) -> MaskDraws:
        """Draws for rows (B, length) that depend only on (seed, key, index, column): an
        example's mask is the same whatever batch, batch size or rank it is served in.
        Evaluation keys by row id (the same mask each round), training by stream position
        (a fresh mask each time a row is served)."""
        base = mix64(np.uint64(seed) * np.uint64(0x100000001B3) ^ np.uint64(key))  # 0-d uint64
        row_base = mix64(base ^ np.asarray(indices, dtype=np.uint64))  # (B,)
        # One 64-bit number per position: the high half orders it, the low half picks its fate.
        bits = mix64(row_base[:, None] + np.arange(length, dtype=np.uint64)[None, :])  # (B, L)
        keys = (bits >> np.uint64(32)).astype(np.int64)
        choice = (bits & np.uint64(0xFFFFFFFF)).astype(np.float64) * 2.0**-32  # uniform in [0, 1)
        return MaskDraws(keys=keys, choice=choice)

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


def build_masker(paths: list[str], metadata: MLMDatasetMetadata, masking: MaskingConfig) -> Masker | None:
    """The dynamic masker a stream over `paths` uses, or None for a statically masked dataset.

    The mask rate has one source of truth: the dataset's `--mask-prob`, unless
    `data.masking.mask_prob` overrides it (dynamic masking only). A dataset built with
    `--static-masking` stores its masks, so an override would silently do nothing: it
    is refused instead.
    """
    if metadata.static_masking:
        overridden = masking.mask_prob is not None and masking.mask_prob != metadata.mask_prob
        if overridden or masking.whole_word:
            setting = f"data.masking.mask_prob={masking.mask_prob}" if overridden else "data.masking.whole_word=true"
            raise ConfigError(
                f"{setting} cannot apply to {paths[0]}: it was built with --static-masking (its masks are stored, "
                f"rate {metadata.mask_prob}); drop the override or rebuild the dataset without --static-masking"
            )
        return None
    continuation = None
    if masking.whole_word:
        continuation = continuation_table(Path(paths[0]) / "tokenizer" / "vocab.txt", metadata.vocab_size)
        if not continuation.any():
            warnings.warn(
                f"data.masking.whole_word has no effect: the vocabulary of {paths[0]} has no '##' continuation tokens",
                stacklevel=2,
            )
    mask_prob = metadata.mask_prob if masking.mask_prob is None else masking.mask_prob
    return Masker(metadata.vocab_size, metadata.special_ids, metadata.mask_id, mask_prob, continuation)
