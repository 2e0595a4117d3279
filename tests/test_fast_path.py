"""The fast path computes what the plain path computes: BERT unpadding and batch
trimming (same losses and gradients), the prefetcher (same batches, the trained batch's
stream position), Adam-atan2 with foreach ops (same update as the per-tensor formula),
and TRM's training step without per-step host syncs (same outputs)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from core.constants import IGNORE_LABEL_ID
from dataset.stream import EpochOrder, padded_width
from dataset.text.loader import MLMTrainStream, iter_mlm_eval_batches
from dataset.text.masking import Masker, MaskingConfig
from models.bert.config import BertConfig, BertLossConfig
from models.bert.model import Bert
from tests.test_mlm_dataset import PAD, SEP, write_dataset
from training.optim import AdamAtan2
from training.prefetch import PlainBatches, Prefetcher, device_batches

VOCAB_SIZE = 50



def bert(unpad: bool, nsp: bool = False) -> Bert:
    """A 2-layer BERT without dropout, the same weights whatever `unpad`."""
    config = BertConfig(name="bert", num_layers=2, hidden_size=64, num_heads=4, max_position_embeddings=32,
                        hidden_dropout_prob=0.0, attention_dropout_prob=0.0, unpad=unpad,
                        loss=BertLossConfig(use_nsp=nsp))
    torch.manual_seed(0)
    return Bert(config, VOCAB_SIZE, pad_id=0).train()


def padded_batch(seed: int, batch: int = 5, length: int = 24, nsp: bool = False) -> dict[str, torch.Tensor]:
    """Rows of random lengths (one full, one empty as in a padded evaluation batch)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, length + 1, (batch,), generator=generator)
    lengths[0], lengths[-1] = length, 0
    real = torch.arange(length)[None, :] < lengths[:, None]  # (B, L)
    input_ids = torch.randint(5, VOCAB_SIZE, (batch, length), generator=generator).masked_fill(~real, 0)
    token_type_ids = ((torch.arange(length)[None, :] >= lengths[:, None] // 2) & real).long()
    chosen = (torch.rand(batch, length, generator=generator) < 0.3) & real
    labels = torch.where(chosen, torch.randint(5, VOCAB_SIZE, (batch, length), generator=generator), IGNORE_LABEL_ID)
    result = dict(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=real, labels=labels)
    if nsp:
        result["next_sentence_label"] = torch.tensor([0, 1, 1, 0, IGNORE_LABEL_ID])[:batch]
    return result


def loss_and_grads(model: Bert, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    out = model({}, batch)
    objective = sum(total / count for total, count in out.losses.values())
    objective.backward()
    values = {name: total.detach() for name, (total, _) in {**out.losses, **out.metrics}.items()}
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    return values, grads


@pytest.mark.parametrize("nsp", [False, True])
def test_unpadded_bert_gives_the_plain_losses_and_gradients(nsp):
    batch = padded_batch(1, nsp=nsp)
    assert (~batch["attention_mask"]).float().mean() > 0.2  # there is padding to skip
    plain_values, plain_grads = loss_and_grads(bert(unpad=False, nsp=nsp), batch)
    fast_values, fast_grads = loss_and_grads(bert(unpad=True, nsp=nsp), batch)
    assert plain_values.keys() == fast_values.keys() and plain_grads.keys() == fast_grads.keys()
    for name in plain_values:
        torch.testing.assert_close(fast_values[name], plain_values[name], rtol=1e-5, atol=1e-5)
    for name in plain_grads:
        torch.testing.assert_close(fast_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert plain_grads["embeddings.position_embeddings.weight"][20:].abs().max() > 0  # full row reaches them


def test_unpadded_encoder_equals_the_padded_one_at_real_tokens():
    model = bert(unpad=True).eval()
    batch = padded_batch(2)
    with torch.no_grad():
        padded = model.encode(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])  # (B, L, H)
        tokens, layout = model.encode_tokens(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    real = batch["attention_mask"].clone()
    real[-1] = True  # the empty row counts as all real in both
    assert tokens.shape == (int(real.sum()), 64)
    torch.testing.assert_close(tokens, padded[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layout.pad(tokens)[real], padded[real], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ trimming


def take(stream, count):
    return [stream.next_batch() for _ in range(count)]


def test_trimmed_batches_are_the_full_ones_without_their_padding_columns(tmp_path):
    write_dataset(tmp_path, 40, 0, seq_len=64)  # rows of 4..64 tokens
    full = take(MLMTrainStream([str(tmp_path)], 0, 4, 0, 1, MaskingConfig()), 10)
    trimmed = take(MLMTrainStream([str(tmp_path)], 0, 4, 0, 1, MaskingConfig(), trim_to_multiple=8), 10)
    widths = []
    for big, small in zip(full, trimmed):
        width = small["input_ids"].shape[1]
        longest = int(big["attention_mask"].sum(axis=1).max())
        assert width % 8 == 0 and longest <= width < longest + 8
        widths.append(width)
        for key, value in big.items():
            np.testing.assert_array_equal(small[key], value[:, :width])
        assert not big["attention_mask"][:, width:].any() and (big["labels"][:, width:] == IGNORE_LABEL_ID).all()
    assert min(widths) < 64  # something was trimmed


def write_lengths(root, split, value=None):
    """The builder's `.lengths.npy` next to each shard of `split`: real tokens per row (or `value`)."""
    for shard in sorted((root / split).glob("shard_?????.npy")):
        ids = np.load(shard)
        lengths = (ids != PAD).sum(axis=1) if value is None else np.full(len(ids), value)
        np.save(shard.with_name(shard.name.replace(".npy", ".lengths.npy")), lengths.astype(np.uint16))


def test_evaluation_judges_the_global_batch_by_its_stored_lengths(tmp_path):
    """An evaluation batch is cut to its global batch's width, read from the test shards'
    `.lengths.npy` where the builder wrote them (their ids otherwise)."""
    write_dataset(tmp_path, 4, 40, seq_len=64)
    widths = lambda: [batch["input_ids"].shape[1] for _, batch in
                      iter_mlm_eval_batches([str(tmp_path)], 12, 0, 2, MaskingConfig(), trim_to_multiple=8)]
    honest = widths()
    write_lengths(tmp_path, "test")
    assert widths() == honest and min(honest) < 64
    write_lengths(tmp_path, "test", value=64)  # claims every row is full: the width follows the claim
    assert widths() == [64] * len(honest)


@pytest.mark.parametrize("full_rows", [True, False])
def test_a_rank_orders_and_masks_only_its_own_rows(tmp_path, monkeypatch, full_rows):
    """Rank 1 of 4 asks the order for its own 3 positions and draws 3 rows of masks, whether
    one of its rows is full or none is (its width is then its own rows')."""
    write_dataset(tmp_path, 40, 0, seq_len=64)
    if full_rows:  # every row [CLS] w ... w [SEP], no padding
        for shard in (tmp_path / "train").glob("shard_?????.npy"):
            ids = np.load(shard)
            ids[ids == PAD] = 7
            ids[:, -1] = SEP
            np.save(shard, ids)
    asked, drawn = [], []
    rows, draw = EpochOrder.rows, Masker.draw_keyed
    monkeypatch.setattr(EpochOrder, "rows", lambda self, start, count: asked.append(count) or rows(self, start, count))
    monkeypatch.setattr(Masker, "draw_keyed", staticmethod(lambda *a: drawn.append(len(a[2])) or draw(*a)))
    stream = MLMTrainStream([str(tmp_path)], 0, 12, 1, 4, MaskingConfig(), trim_to_multiple=8)
    batches = take(stream, 5)
    assert drawn == [3] * 5 and asked == [3] * 5
    own_widths = [padded_width(int(batch["attention_mask"].sum(axis=1).max()), 64, 8) for batch in batches]
    assert [batch["input_ids"].shape[1] for batch in batches] == own_widths
    assert own_widths == [64] * 5 if full_rows else min(own_widths) < 64


def test_bert_loss_is_the_same_on_the_trimmed_batch():
    model = bert(unpad=False).eval()
    batch = padded_batch(3, length=24)
    batch["attention_mask"][0, 13:] = False  # no full row: columns 16.. are all padding
    batch["input_ids"][0, 13:] = 0
    batch["labels"][0, 13:] = IGNORE_LABEL_ID
    trimmed = {key: value[:, :16] for key, value in batch.items()}
    with torch.no_grad():
        full_out, trimmed_out = model({}, batch), model({}, trimmed)
    torch.testing.assert_close(trimmed_out.losses["mlm_loss"][0], full_out.losses["mlm_loss"][0], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------- prefetcher


def test_prefetcher_serves_the_stream_in_order_with_the_trained_batch_position(tmp_path):
    write_dataset(tmp_path, 30, 0, seq_len=16)
    expected_stream = MLMTrainStream([str(tmp_path)], 0, 4, 0, 1, MaskingConfig())
    expected = [(expected_stream.next_batch(), expected_stream.state_dict()) for _ in range(5)]
    stream = MLMTrainStream([str(tmp_path)], 0, 4, 0, 1, MaskingConfig())
    prefetcher = Prefetcher(stream, torch.device("cpu"), depth=2)
    try:
        for (batch, state), item in zip(expected, prefetcher):
            assert item.stream_state == state
            for key in batch:
                np.testing.assert_array_equal(item.host[key], batch[key])
                np.testing.assert_array_equal(item.device[key].numpy(), batch[key])
            if state["position"] == 8:
                break
        # The thread has read ahead; the stream itself is past the trained batch.
        for _ in range(200):
            if stream.state_dict()["position"] > 8:
                break
            time.sleep(0.01)
        assert stream.state_dict()["position"] > 8
    finally:
        prefetcher.close()
    assert stream.state_dict()["position"] == 8  # rewound to just after the last batch handed out
    np.testing.assert_array_equal(stream.next_batch()["input_ids"], expected[2][0]["input_ids"])


def test_prefetcher_raises_the_stream_error():
    class Broken:
        examples_per_epoch = 1.0

        def next_batch(self):
            raise OSError("disk gone")

        def state_dict(self):
            return {"position": 0}

        def load_state_dict(self, state):
            pass

    prefetcher = Prefetcher(Broken(), torch.device("cpu"))
    with pytest.raises(OSError, match="disk gone"):
        next(prefetcher)
    prefetcher.close()


def test_plain_batches_on_cpu(tmp_path):
    write_dataset(tmp_path, 12, 0, seq_len=16)
    stream = MLMTrainStream([str(tmp_path)], 0, 4, 0, 1, MaskingConfig())
    batches = device_batches(stream, torch.device("cpu"))
    assert isinstance(batches, PlainBatches)
    item = next(batches)
    assert item.stream_state == {"position": 4, "num_sequences": 12}
    assert item.device["input_ids"].dtype == torch.int64 and item.device["attention_mask"].dtype == torch.bool
    assert int(item.device["attention_mask"].sum()) == int((item.host["input_ids"] != PAD).sum())


# -------------------------------------------------------------------------- optimiser


def reference_adam_atan2(param, grads, lr, betas, weight_decay):
    """The update of AdamAtan2's docstring, one tensor at a time, in float64."""
    param = param.double().clone()
    m, v = torch.zeros_like(param), torch.zeros_like(param)
    for t, grad in enumerate(grads, start=1):
        grad = grad.double()
        m = betas[0] * m + (1 - betas[0]) * grad
        v = betas[1] * v + (1 - betas[1]) * grad * grad
        update = torch.atan2(m / (1 - betas[0] ** t), (v / (1 - betas[1] ** t)).sqrt())
        param = param * (1 - lr * weight_decay) - lr * update
    return param


def test_foreach_adam_atan2_matches_the_formula_on_many_tensors():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in ((3, 4), (7,), (2, 2, 2))]
    starts = [p.detach().clone() for p in params]
    grads = [[torch.randn_like(p) for _ in range(4)] for p in params]
    optimizer = AdamAtan2(params, lr=0.01, betas=(0.9, 0.95), weight_decay=0.1)
    for step in range(4):
        for param, history in zip(params, grads):
            param.grad = history[step]
        optimizer.step()
    for param, start, history in zip(params, starts, grads):
        expected = reference_adam_atan2(start, history, 0.01, (0.9, 0.95), 0.1)
        torch.testing.assert_close(param.detach().double(), expected, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------- TRM


def test_trm_recursion_compiles_to_one_graph():
    """The hot path (H x L recursion and heads) has no graph break for torch.compile."""
    from types import SimpleNamespace

    from models.trm.config import TRMConfig
    from models.trm.model import build_trm

    config = TRMConfig(name="trm", hidden_size=32, num_heads=2, L_layers=1, H_cycles=2, L_cycles=2,
                       puzzle_emb_len=2, puzzle_emb_ndim=32, halt_max_steps=3)
    torch.manual_seed(0)
    model = build_trm(config, SimpleNamespace(vocab_size=11, seq_len=8, num_puzzle_identifiers=3)).train()
    latents = torch.randn(2, 4, 10, 32)  # (y/z, B, T, D)
    x = torch.randn(4, 10, 32)
    explanation = torch._dynamo.explain(model.recurse)(latents[0], latents[1], x)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
    eager = model.recurse(latents[0], latents[1], x)
    batch = dict(inputs=torch.randint(1, 11, (4, 8)), labels=torch.randint(2, 11, (4, 8)),
                 puzzle_identifiers=torch.zeros(4, dtype=torch.int64), noise=torch.rand(4, 2))
    out = model(model.initial_carry(batch), batch)
    assert out.all_halted  # training never asks the device whether every slot halted
    assert eager[2].shape == (4, 8, 11)
