"""MLM masking, training stream and evaluation batches (dataset/text/masking.py, dataset/text/loader.py).

Datasets are written directly here (not by the builder), so these tests pin the on-disk
contract as well: dataset.json + shards + tokenizer/vocab.txt.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from core.constants import IGNORE_LABEL_ID
from core.errors import ConfigError, UserError
from dataset.stream import seeded_rng
from dataset.text.format import load_mlm_metadata
from dataset.text.loader import MLMTrainStream, iter_mlm_eval_batches
from dataset.text.masking import Masker, MaskingConfig, continuation_table

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = [PAD, UNK, CLS, SEP, MASK]
VOCAB_SIZE = 100
# Tokens 5..59 start words, 60..99 are `##` continuations.
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB += [f"w{i}" for i in range(5, 60)] + [f"##c{i}" for i in range(60, 100)]


def random_rows(rng: np.random.Generator, num_rows: int, seq_len: int, nsp: bool = False) -> np.ndarray:
    """Rows `[CLS] A [SEP] (B [SEP])` of random lengths, padded; token 1 (position 1) is unique per row."""
    rows = np.full((num_rows, seq_len), PAD, dtype=np.int64)
    for row in range(num_rows):
        length = int(rng.integers(4, seq_len + 1))
        body = rng.integers(5, VOCAB_SIZE, size=length - 2)
        rows[row, 0], rows[row, 1 : length - 1], rows[row, length - 1] = CLS, body, SEP
        if nsp and length > 6:
            rows[row, length // 2] = SEP
    return rows


def write_dataset(
    root: Path,
    num_train: int,
    num_test: int,
    seq_len: int = 16,
    nsp: bool = False,
    static: bool = False,
    seed: int = 0,
    shard_size: int = 7,
    vocab: list[str] = VOCAB,
) -> dict[str, np.ndarray]:
    """A dataset folder in the builder's layout; returns the ids of each split."""
    rng = np.random.default_rng(seed)
    arrays, shards, tokens = {}, {}, {}
    for split, count in (("train", num_train), ("test", num_test)):
        ids = random_rows(rng, count, seq_len, nsp)
        arrays[split] = ids
        (root / split).mkdir(parents=True)
        shards[split] = []
        for index, start in enumerate(range(0, count, shard_size)):
            name = f"shard_{index:05d}"
            part = ids[start : start + shard_size]
            np.save(root / split / f"{name}.npy", part.astype(np.uint16))
            if nsp:
                np.save(root / split / f"{name}.nsp.npy", rng.integers(0, 2, len(part)).astype(np.int8))
            if static:
                masked, labels = Masker(len(vocab), SPECIAL, MASK, 0.15)(part, rng)
                np.save(root / split / f"{name}.masked.npy", masked.astype(np.uint16))
                np.save(root / split / f"{name}.labels.npy", labels.astype(np.int32))
            shards[split].append(f"{name}.npy")
        tokens[split] = int((ids != PAD).sum())
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.txt").write_text("".join(f"{t}\n" for t in vocab), encoding="utf-8")
    metadata = {
        "vocab_size": len(vocab), "seq_len": seq_len, "pad_id": PAD, "cls_id": CLS, "sep_id": SEP,
        "mask_id": MASK, "unk_id": UNK, "special_ids": SPECIAL, "mask_prob": 0.15, "nsp": nsp,
        "static_masking": static, "tokenizer": "wordpiece", "lowercase": True, "vocab_sha256": str(len(vocab)),
        "num_documents": {"train": num_train, "test": num_test},
        "num_sequences": {"train": num_train, "test": num_test}, "num_tokens": tokens,
        "shards": shards, "dtype": "uint16",
    }  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(metadata), encoding="utf-8")
    return arrays


def take(stream: MLMTrainStream, count: int) -> list[dict[str, np.ndarray]]:
    return [stream.next_batch() for _ in range(count)]


def assert_batches_equal(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ------------------------------------------------------------------------------ masking


def test_masking_counts_and_80_10_10_split():
    rng = np.random.default_rng(1)
    ids = random_rows(rng, 4000, 64)  # (N, L), pads and specials included
    masker = Masker(VOCAB_SIZE, SPECIAL, MASK, 0.15)
    masked, labels = masker(ids, seeded_rng(3))
    maskable = ~np.isin(ids, SPECIAL)
    selected = labels != IGNORE_LABEL_ID
    # Exactly round(n * p) per row (at least one): the formula, row by row.
    expected = [max(1, round(n * 0.15)) if n else 0 for n in maskable.sum(axis=1)]
    assert selected.sum(axis=1).tolist() == expected
    assert not (selected & ~maskable).any(), "special or padding token chosen"
    np.testing.assert_array_equal(labels[selected], ids[selected])
    assert (masked[~selected] == ids[~selected]).all(), "a token that is not chosen changed"
    assert abs(selected.sum() / maskable.sum() - 0.15) < 0.01
    total = selected.sum()
    as_mask = (masked == MASK) & selected
    changed = (masked != ids) & selected & ~as_mask
    kept = (masked == ids) & selected
    assert abs(as_mask.sum() / total - 0.8) < 0.015
    # A random replacement equal to the original counts as "kept": expected 0.1 + 0.1/95.
    assert abs(changed.sum() / total - 0.1 * (1 - 1 / 95)) < 0.01
    assert abs(kept.sum() / total - 0.1 * (1 + 1 / 95)) < 0.01
    replacements = masked[changed]
    assert not np.isin(replacements, SPECIAL).any()
    assert set(np.unique(replacements)) == set(range(5, VOCAB_SIZE)), "replacements not over the whole vocabulary"


def test_masking_short_rows_get_one_and_empty_rows_none():
    ids = np.full((3, 8), PAD)
    ids[:, 0] = CLS
    ids[0, 1:3] = [7, SEP]  # one maskable token: round(0.15) = 0 -> at least 1
    ids[1, 1] = SEP  # no maskable token
    ids[2, 1:8] = [9, 10, 11, UNK, 12, 13, SEP]  # UNK is special
    _, labels = Masker(VOCAB_SIZE, SPECIAL, MASK, 0.15)(ids, seeded_rng(0))
    assert (labels != IGNORE_LABEL_ID).sum(axis=1).tolist() == [1, 0, 1]
    assert labels[0, 1] == 7 and labels[2, 4] == IGNORE_LABEL_ID


def test_masking_is_reproducible_and_keyed_draws_depend_on_the_index_alone():
    ids = random_rows(np.random.default_rng(2), 12, 32)
    masker = Masker(VOCAB_SIZE, SPECIAL, MASK, 0.3)
    first = masker(ids, seeded_rng(5))
    second = masker(ids, seeded_rng(5))
    for index in range(2):
        np.testing.assert_array_equal(first[index], second[index])
    indices = 1000 + np.arange(12)
    whole = masker.apply(ids, Masker.draw_keyed(5, 7, indices, 32))
    # Drawn in three parts (as three ranks would): the same masks.
    parts = [masker.apply(ids[s:e], Masker.draw_keyed(5, 7, indices[s:e], 32)) for s, e in ((0, 4), (4, 8), (8, 12))]
    for index in range(2):
        np.testing.assert_array_equal(whole[index], np.concatenate([part[index] for part in parts]))
    # Another seed, key or index gives other draws.
    reference = Masker.draw_keyed(5, 7, indices, 32).keys
    for other in (Masker.draw_keyed(6, 7, indices, 32), Masker.draw_keyed(5, 8, indices, 32),
                  Masker.draw_keyed(5, 7, indices + 1, 32)):
        assert (other.keys != reference).mean() > 0.99


def test_whole_word_masking_keeps_words_together():
    rng = np.random.default_rng(4)
    ids = random_rows(rng, 2000, 48)
    table = np.array([token.startswith("##") for token in VOCAB])
    masker = Masker(VOCAB_SIZE, SPECIAL, MASK, 0.15, continuation=table)
    _, labels = masker(ids, seeded_rng(9))
    selected = labels != IGNORE_LABEL_ID
    maskable = ~np.isin(ids, SPECIAL)
    for row in range(len(ids)):
        words, current = [], []
        for position in np.flatnonzero(maskable[row]):
            starts_word = not table[ids[row, position]] or not maskable[row, position - 1]
            if starts_word and current:
                words.append(current)
                current = []
            current.append(position)
        words.append(current)
        chosen = [word for word in words if selected[row, word].any()]
        assert all(selected[row, word].all() for word in chosen), "a word was only partly chosen"
        count = max(1, round(maskable[row].sum() * 0.15))
        num_selected = selected[row].sum()
        # Words are added until the count is reached: the last one may overshoot.
        assert count <= num_selected < count + max(len(word) for word in chosen)
    # Reaching the count with whole words overshoots a little (here 40% of tokens are `##`).
    assert 0.15 <= selected.sum() / maskable.sum() < 0.19


def test_continuation_table_reads_vocab(tmp_path):
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("[PAD]\nab\n##cd\n#\n", encoding="utf-8")
    assert continuation_table(vocab_file, 5).tolist() == [False, False, True, False, False]


def test_masking_config_validates():
    assert MaskingConfig().mask_prob is None
    with pytest.raises(ValidationError):
        MaskingConfig(mask_prob=1.2)
    with pytest.raises(ValidationError):
        MaskingConfig(mask_probability=0.2)


# --------------------------------------------------------------------------- metadata


def test_load_metadata_merges_and_checks(tmp_path):
    write_dataset(tmp_path / "a", 10, 3)
    write_dataset(tmp_path / "b", 5, 2, seed=1)
    merged = load_mlm_metadata([str(tmp_path / "a"), str(tmp_path / "b")])
    assert merged.num_sequences == {"train": 15, "test": 5}
    assert merged.shards["train"][0] == str(tmp_path / "a" / "train" / "shard_00000.npy")
    assert len(merged.shards["train"]) == 2 + 1
    write_dataset(tmp_path / "c", 5, 2, seq_len=32)
    with pytest.raises(UserError, match="seq_len"):
        load_mlm_metadata([str(tmp_path / "a"), str(tmp_path / "c")])
    with pytest.raises(UserError, match="does not exist.*build_text_mlm_dataset"):
        load_mlm_metadata([str(tmp_path / "missing")])
    (tmp_path / "puzzle" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="not an MLM dataset"):
        load_mlm_metadata([str(tmp_path / "puzzle")])


# ----------------------------------------------------------------------------- stream


def make_stream(path, seed=0, batch=8, rank=0, world=1, masking=None) -> MLMTrainStream:
    return MLMTrainStream([str(path)], seed, batch, rank, world, masking or MaskingConfig())


def test_stream_epoch_is_a_permutation_and_batches_are_well_formed(tmp_path):
    arrays = write_dataset(tmp_path, 40, 0)
    stream = make_stream(tmp_path, batch=8)
    assert stream.examples_per_epoch == 40
    batches = take(stream, 5)  # exactly one epoch
    originals = []
    for batch in batches:
        assert batch["input_ids"].dtype == np.int64 and batch["labels"].dtype == np.int64
        assert batch["attention_mask"].dtype == bool
        selected = batch["labels"] != IGNORE_LABEL_ID
        original = np.where(selected, batch["labels"], batch["input_ids"])  # undo the mask
        originals.append(original)
        np.testing.assert_array_equal(batch["attention_mask"], original != PAD)
        assert not batch["token_type_ids"].any()  # single segments
    rows = {tuple(row) for row in np.concatenate(originals)}
    assert rows == {tuple(row) for row in arrays["train"]}
    assert len(rows) == 40
    # Epoch 1 visits them again in another order.
    next_epoch = take(stream, 5)
    assert not np.array_equal(next_epoch[0]["attention_mask"], batches[0]["attention_mask"])


def test_stream_is_deterministic_and_seeded(tmp_path):
    write_dataset(tmp_path, 30, 0)
    assert_batches_equal(take(make_stream(tmp_path, seed=3), 6), take(make_stream(tmp_path, seed=3), 6))
    other = take(make_stream(tmp_path, seed=4), 1)[0]
    assert not np.array_equal(other["input_ids"], take(make_stream(tmp_path, seed=3), 1)[0]["input_ids"])


def test_stream_resume_continues_exactly(tmp_path):
    write_dataset(tmp_path, 30, 0)
    straight = take(make_stream(tmp_path, batch=8), 9)  # spans 2+ epochs
    first = make_stream(tmp_path, batch=8)
    take(first, 4)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make_stream(tmp_path, batch=8)
    resumed.load_state_dict(state)
    assert_batches_equal(take(resumed, 5), straight[4:])
    write_dataset(tmp_path / "other", 31, 0)
    with pytest.raises(UserError, match="same data_paths"):
        make_stream(tmp_path / "other").load_state_dict(state)


def test_stream_rank_slices_concatenate_to_the_single_process_batch(tmp_path):
    write_dataset(tmp_path, 30, 0, nsp=True)
    single = take(make_stream(tmp_path, batch=8), 6)
    ranks = [take(make_stream(tmp_path, batch=8, rank=rank, world=2), 6) for rank in range(2)]
    joined = [{key: np.concatenate([r0[key], r1[key]]) for key in r0} for r0, r1 in zip(*ranks)]
    assert_batches_equal(joined, single)
    assert set(single[0]) == {"input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label"}


def test_stream_masks_are_fresh_each_epoch(tmp_path):
    write_dataset(tmp_path, 16, 0, seq_len=64)
    stream = make_stream(tmp_path, batch=16)
    masks = []
    for _ in range(2):
        batch = stream.next_batch()
        original = np.where(batch["labels"] != IGNORE_LABEL_ID, batch["labels"], batch["input_ids"])
        order = np.lexsort(original.T[::-1])
        masks.append(batch["labels"][order] != IGNORE_LABEL_ID)
    same_rows = [(masks[0][row] == masks[1][row]).all() for row in range(16)]
    assert sum(same_rows) <= 2, "the second epoch reused the masks of the first"


def test_stream_with_fewer_sequences_than_the_batch(tmp_path):
    arrays = write_dataset(tmp_path, 1, 0, seq_len=64)
    stream = make_stream(tmp_path, batch=32)
    batch = stream.next_batch()
    original = np.where(batch["labels"] != IGNORE_LABEL_ID, batch["labels"], batch["input_ids"])
    assert (original == arrays["train"][0]).all()
    assert len({tuple(row) for row in batch["labels"]}) > 16, "every copy should get its own mask"
    assert stream.state_dict()["position"] == 32


def test_stream_token_types_and_nsp_labels(tmp_path):
    write_dataset(tmp_path, 20, 0, nsp=True)
    batch = make_stream(tmp_path, batch=20).next_batch()
    original = np.where(batch["labels"] != IGNORE_LABEL_ID, batch["labels"], batch["input_ids"])
    for row in range(20):
        seps = np.flatnonzero(original[row] == SEP)
        length = int(batch["attention_mask"][row].sum())
        expected = np.zeros(original.shape[1], dtype=np.int64)
        expected[seps[0] + 1 : length] = 1
        np.testing.assert_array_equal(batch["token_type_ids"][row], expected)
    stored = np.concatenate([np.load(p) for p in sorted((tmp_path / "train").glob("*.nsp.npy"))])
    assert sorted(batch["next_sentence_label"].tolist()) == sorted(stored.tolist())


def test_stream_whole_word_masking(tmp_path):
    write_dataset(tmp_path, 50, 0, seq_len=64)
    batch = make_stream(tmp_path, batch=50, masking=MaskingConfig(whole_word=True)).next_batch()
    table = np.array([token.startswith("##") for token in VOCAB])
    selected = batch["labels"] != IGNORE_LABEL_ID
    original = np.where(selected, batch["labels"], batch["input_ids"])
    # A chosen continuation token's predecessor (same word) is chosen too.
    continuation = table[original] & np.roll(~np.isin(original, SPECIAL), 1, axis=1)
    continuation[:, 0] = False
    assert (selected[continuation] == np.roll(selected, 1, axis=1)[continuation]).all()


def test_static_masking_uses_the_stored_masks(tmp_path):
    write_dataset(tmp_path, 7, 0, static=True)
    # An override the stored masks cannot honour is refused, not silently ignored.
    with pytest.raises(ConfigError, match="built with --static-masking"):
        make_stream(tmp_path, masking=MaskingConfig(mask_prob=0.3))
    with pytest.raises(ConfigError, match="whole_word"):
        make_stream(tmp_path, masking=MaskingConfig(whole_word=True))
    make_stream(tmp_path, masking=MaskingConfig(mask_prob=0.15))  # the dataset's own rate agrees
    batch = make_stream(tmp_path, batch=7).next_batch()
    stored_masked = np.load(tmp_path / "train" / "shard_00000.masked.npy").astype(np.int64)
    stored_labels = np.load(tmp_path / "train" / "shard_00000.labels.npy").astype(np.int64)
    stored = {tuple(m) + tuple(l) for m, l in zip(stored_masked, stored_labels)}
    served = {tuple(m) + tuple(l) for m, l in zip(batch["input_ids"], batch["labels"])}
    assert served == stored


# ----------------------------------------------------------------------------- eval


def test_eval_batches_are_padded_fixed_and_rank_independent(tmp_path):
    arrays = write_dataset(tmp_path, 5, 11, nsp=True)
    masking = MaskingConfig()
    first = list(iter_mlm_eval_batches([str(tmp_path)], 8, 0, 1, masking, seed=1))
    again = list(iter_mlm_eval_batches([str(tmp_path)], 8, 0, 1, masking, seed=1))
    assert [name for name, _ in first] == ["all", "all"]
    assert_batches_equal([b for _, b in first], [b for _, b in again])
    batches = [batch for _, batch in first]
    original = np.concatenate([np.where(b["labels"] != IGNORE_LABEL_ID, b["labels"], b["input_ids"]) for b in batches])
    np.testing.assert_array_equal(original[:11], arrays["test"])
    padding = slice(11, 16)
    assert (original[padding, :2] == [CLS, SEP]).all() and (original[padding, 2:] == PAD).all()
    joined = {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
    assert (joined["attention_mask"][padding].sum(axis=1) == 2).all()
    assert (joined["labels"][padding] == IGNORE_LABEL_ID).all()
    assert (joined["next_sentence_label"][padding] == IGNORE_LABEL_ID).all()
    assert (joined["labels"][:11] != IGNORE_LABEL_ID).any(axis=1).all()
    per_rank = [[b for _, b in iter_mlm_eval_batches([str(tmp_path)], 8, r, 2, masking, seed=1)] for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 2
    stitched = [{key: np.concatenate([a[key], b[key]]) for key in a} for a, b in zip(*per_rank)]
    assert_batches_equal(stitched, batches)


def test_eval_with_empty_test_split_yields_nothing(tmp_path):
    write_dataset(tmp_path, 5, 0)
    assert list(iter_mlm_eval_batches([str(tmp_path)], 8, 0, 1, MaskingConfig())) == []


def test_bad_batch_split_is_a_user_error(tmp_path):
    write_dataset(tmp_path, 5, 0)
    with pytest.raises(UserError, match="global_batch_size"):
        make_stream(tmp_path, batch=6, world=4)


def test_whole_word_warns_without_continuations(tmp_path):
    vocab = VOCAB[:5] + [f"w{i}" for i in range(5, 100)]
    write_dataset(tmp_path, 5, 0, vocab=vocab)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_stream(tmp_path, masking=MaskingConfig(whole_word=True))
    assert any("whole_word has no effect" in str(w.message) for w in caught)


def test_truncated_or_pickled_shard_is_refused_with_one_line(tmp_path):
    root = tmp_path / "data"
    write_dataset(root, num_train=8, num_test=2)
    shard = next((root / "train").glob("shard_*.npy"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(UserError, match="cannot be read"):
        MLMTrainStream([str(root)], 0, 4, 0, 1, MaskingConfig()).next_batch()
    np.save(shard, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="cannot be read"):
        MLMTrainStream([str(root)], 0, 4, 0, 1, MaskingConfig()).next_batch()
