"""Numerics of the BERT TrainModule: losses and metrics against formulas, padding,
the sparse MLM head, gradient checkpointing, vocabulary padding, and a small overfit."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from core.constants import IGNORE_LABEL_ID
from core.errors import UserError
from models.bert.config import BertLossConfig
from models.bert.model import Bert, build_bert
from tests.helpers import tiny_bert_config as tiny_config

VOCAB_SIZE = 50  # padded to 64 rows
PAD_ID = 0




def make_batch(seed: int, batch: int = 4, length: int = 12, nsp: bool = False) -> dict[str, torch.Tensor]:
    """Random padded sentences; ~30% of the real tokens labelled, at least one per row."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    lengths[0] = length  # one full row
    positions = torch.arange(length)
    real = positions[None, :] < lengths[:, None]  # (B, L)
    input_ids = torch.randint(5, VOCAB_SIZE, (batch, length), generator=generator).masked_fill(~real, PAD_ID)
    token_type_ids = ((positions[None, :] >= lengths[:, None] // 2) & real).long()  # (B, L)
    chosen = (torch.rand(batch, length, generator=generator) < 0.3) & real
    chosen[:, 1] = True  # every row has a target
    labels = torch.where(chosen, torch.randint(5, VOCAB_SIZE, (batch, length), generator=generator), IGNORE_LABEL_ID)
    result = dict(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=real, labels=labels)
    if nsp:
        result["next_sentence_label"] = torch.randint(0, 2, (batch,), generator=generator)
        result["next_sentence_label"][-1] = IGNORE_LABEL_ID  # a padded row
    return result


def tiny_model(seed: int = 0, **overrides) -> Bert:
    torch.manual_seed(seed)
    return Bert(tiny_config(**overrides), VOCAB_SIZE, PAD_ID).eval()


def dense_logits(model: Bert, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits at every position over the real vocabulary: (B, L, V)."""
    hidden = model.encode(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    return model.mlm_logits(hidden)[..., :VOCAB_SIZE]


def test_config_validation_names_the_field():
    with pytest.raises(ValidationError, match="arch.num_heads"):
        tiny_config(num_heads=5)
    with pytest.raises(ValidationError, match="arch.hidden_dropout_prob"):
        tiny_config(hidden_dropout_prob=1.0)
    with pytest.raises(ValidationError, match="extra"):
        tiny_config(num_layer=3)
    config = tiny_config(expansion=3)
    assert (config.intermediate_size, config.head_dim, config.padded_vocab_size(50)) == (192, 16, 64)


def test_build_bert_checks_dataset():
    metadata = SimpleNamespace(vocab_size=VOCAB_SIZE, seq_len=16, pad_id=PAD_ID, nsp=False)
    model = build_bert(tiny_config(), metadata)
    assert model.embeddings.word_embeddings.weight.shape == (64, 64)
    assert build_bert(tiny_config(vocab_size=70), metadata).padded_vocab_size == 128
    with pytest.raises(UserError, match="arch.max_position_embeddings"):
        build_bert(tiny_config(max_position_embeddings=8), metadata)
    with pytest.raises(UserError, match="arch.loss.use_nsp"):
        build_bert(tiny_config(loss=BertLossConfig(use_nsp=True)), metadata)
    with pytest.raises(UserError, match="arch.vocab_size"):
        build_bert(tiny_config(vocab_size=40), metadata)


def test_initialisation_follows_bert():
    model = Bert(tiny_config(hidden_size=128), VOCAB_SIZE, PAD_ID)
    qkv = model.layers[0].attention.qkv
    assert qkv.weight.shape == (384, 128)
    assert abs(qkv.weight.std().item() - 0.02) < 0.001
    assert qkv.bias.abs().max() == 0 and model.mlm_head.bias.abs().max() == 0
    assert torch.equal(model.layers[1].ffn_norm.weight, torch.ones(128))
    word = model.embeddings.word_embeddings.weight
    assert word[PAD_ID].abs().max() == 0 and word[VOCAB_SIZE:].abs().max() == 0
    assert abs(word[1:VOCAB_SIZE].std().item() - 0.02) < 0.002


def test_padding_invariance():
    model = tiny_model()
    batch = make_batch(1)
    hidden = model.encode(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])  # (B, L, H)
    extra = 5
    longer_ids = torch.cat([batch["input_ids"], torch.randint(1, VOCAB_SIZE, (4, extra))], dim=1)  # junk padding
    longer_types = F.pad(batch["token_type_ids"], (0, extra))
    longer_mask = F.pad(batch["attention_mask"], (0, extra), value=False)
    longer = model.encode(longer_ids, longer_types, longer_mask)
    real = batch["attention_mask"]
    torch.testing.assert_close(longer[:, :12][real], hidden[real], atol=1e-5, rtol=1e-5)


def test_mlm_loss_is_cross_entropy_over_labelled_positions():
    model = tiny_model()
    batch = make_batch(2)
    out = model({}, batch)
    assert out.carry == {} and out.all_halted and model.initial_carry(batch) == {}
    logits = dense_logits(model, batch)  # (B, L, V)
    per_token = F.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction="none")  # (B, L), 0 if ignored
    loss_sum, count = out.losses["mlm_loss"]
    torch.testing.assert_close(loss_sum, per_token.sum(), atol=1e-4, rtol=1e-5)
    assert count.item() == (batch["labels"] != IGNORE_LABEL_ID).sum().item()

    # Unlabelling some targets removes exactly their terms from the sum and the count.
    dropped = (batch["labels"] != IGNORE_LABEL_ID) & (torch.arange(12) % 2 == 0)
    fewer = dict(batch, labels=batch["labels"].masked_fill(dropped, IGNORE_LABEL_ID))
    fewer_sum, fewer_count = model({}, fewer).losses["mlm_loss"]
    torch.testing.assert_close(fewer_sum, loss_sum - per_token[dropped].sum(), atol=1e-4, rtol=1e-5)
    assert fewer_count.item() == count.item() - dropped.sum().item()


def test_sparse_head_equals_dense_head():
    model = tiny_model()
    batch = make_batch(3)
    hidden = model.encode(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    positions = batch["labels"] != IGNORE_LABEL_ID
    sparse = model.mlm_logits(hidden, positions)  # (N, V_pad)
    assert sparse.shape == (positions.sum().item(), 64)
    torch.testing.assert_close(sparse, model.mlm_logits(hidden)[positions], atol=1e-6, rtol=1e-6)


def test_accuracy_metrics_match_formulas():
    model = tiny_model()
    batch = make_batch(4)
    # Make row 0 exactly right: its labels are the model's own predictions there.
    predictions = dense_logits(model, batch).argmax(-1)  # (B, L)
    labelled = batch["labels"] != IGNORE_LABEL_ID
    batch["labels"][0] = torch.where(labelled[0], predictions[0], IGNORE_LABEL_ID)
    batch["labels"][3] = IGNORE_LABEL_ID  # a row without targets is not counted
    labelled = batch["labels"] != IGNORE_LABEL_ID
    correct = (predictions == batch["labels"]) & labelled
    metrics = model({}, batch).metrics
    assert metrics["accuracy"][0].item() == correct.sum().item()
    assert metrics["accuracy"][1].item() == labelled.sum().item()
    rows_right = (correct == labelled).all(-1) & labelled.any(-1)
    assert rows_right[0] and metrics["exact_accuracy"][0].item() == rows_right.sum().item()
    assert metrics["exact_accuracy"][1].item() == 3


def test_nsp_loss_and_accuracy():
    model = tiny_model(loss=BertLossConfig(use_nsp=True))
    batch = make_batch(5, nsp=True)
    out = model({}, batch)
    hidden = model.encode(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    logits = model.nsp_logits(hidden)[:3]  # the last row is unlabelled
    targets = batch["next_sentence_label"][:3]
    torch.testing.assert_close(out.losses["nsp_loss"][0], F.cross_entropy(logits, targets, reduction="sum"))
    assert out.losses["nsp_loss"][1].item() == 3
    assert out.metrics["nsp_accuracy"][0].item() == (logits.argmax(-1) == targets).sum().item()
    # Pooler: tanh(dense(h_CLS)).
    pooled = torch.tanh(hidden[:, 0] @ model.pooler.weight.T + model.pooler.bias)
    torch.testing.assert_close(model.nsp_logits(hidden), pooled @ model.nsp_head.weight.T + model.nsp_head.bias)


def test_fully_padded_row_stays_finite():
    model = tiny_model(loss=BertLossConfig(use_nsp=True)).train()
    batch = make_batch(6, nsp=True)
    batch["attention_mask"][-1] = False  # an evaluation padding row: no real token, no label
    batch["labels"][-1] = IGNORE_LABEL_ID
    out = model({}, batch)
    total = out.losses["mlm_loss"][0] + out.losses["nsp_loss"][0]
    total.backward()
    assert torch.isfinite(total)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _loss_and_grads(model: Bert, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(123)  # same dropout masks in both runs
    loss_sum, count = model({}, batch).losses["mlm_loss"]
    model.zero_grad()
    (loss_sum / count).backward()
    return loss_sum.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_gradient_checkpointing_gives_same_loss_and_gradients():
    plain = tiny_model(hidden_dropout_prob=0.1, attention_dropout_prob=0.1).train()
    checkpointed = Bert(
        tiny_config(hidden_dropout_prob=0.1, attention_dropout_prob=0.1, gradient_checkpointing=True), VOCAB_SIZE
    ).train()
    checkpointed.load_state_dict(plain.state_dict())
    batch = make_batch(7)
    loss_plain, grads_plain = _loss_and_grads(plain, batch)
    loss_ckpt, grads_ckpt = _loss_and_grads(checkpointed, batch)
    torch.testing.assert_close(loss_ckpt, loss_plain, atol=1e-6, rtol=1e-6)
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_padded_vocabulary_rows_are_never_predicted():
    model = tiny_model().train()
    assert model.padded_vocab_size == 64
    with torch.no_grad():  # make the padded rows as attractive as possible
        model.mlm_head.bias[VOCAB_SIZE:] = 1e4
    batch = make_batch(8)
    hidden = model.encode(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    logits = model.mlm_logits(hidden)  # (B, L, 64)
    assert torch.isneginf(logits[..., VOCAB_SIZE:]).all()
    assert (logits.argmax(-1) < VOCAB_SIZE).all()
    loss_sum, _ = model({}, batch).losses["mlm_loss"]
    loss_sum.backward()
    assert torch.isfinite(loss_sum)
    assert model.mlm_head.bias.grad[VOCAB_SIZE:].abs().max() == 0
    assert model.embeddings.word_embeddings.weight.grad[VOCAB_SIZE:].abs().max() == 0


def test_tiny_bert_overfits_a_fixed_batch():
    model = tiny_model().train()
    batch = make_batch(9, batch=8, length=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss_sum, count = model({}, batch).losses["mlm_loss"]
        loss = loss_sum / count
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert abs(losses[0] - math.log(VOCAB_SIZE)) < 0.1  # uniform predictions at initialisation
    assert losses[-1] < 0.05 * losses[0]
