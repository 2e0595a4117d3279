"""Each architecture's FLOPs formula (`ArchPlugin.train_flops`) against the FLOPs that
`torch.utils.flop_counter` counts in a real training forward and backward on the CPU.

Attention runs on PyTorch's math kernel here, because the counter has no formula for the
CPU's fused kernel (it would count attention as 0); on GPUs the fused kernels count the
same matmuls.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from core.constants import IGNORE_LABEL_ID
from models.bert.config import BertTaskConfig
from models.bert.flops import encoder_flops, real_token_count
from models.bert.model import Bert
from models.bert.tasks import BertQuestionAnswering, BertSequenceClassifier, BertTokenClassifier
from models.registry import get_arch
from models.trm.model import TRM
from tests.helpers import tiny_bert_config
from tests.test_trm_model import tiny_config as tiny_trm_config

TOLERANCE = 0.05
VOCAB_SIZE = 50


def counted_train_flops(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """FLOPs of one training forward and backward, as the counter sees them."""
    model.train()
    carry = model.initial_carry(batch)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        out = model(carry, batch)
        objective = sum(out.loss_weights.get(name, 1.0) * total / count.clamp(min=1)
                        for name, (total, count) in out.losses.items())
        objective.backward()
    return counter.get_total_flops()


def host(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in batch.items()}


def assert_formula_matches(arch: str, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    formula = get_arch(arch).train_flops(model, host(batch))
    counted = counted_train_flops(model, batch)
    assert counted > 0
    assert formula == pytest.approx(counted, rel=TOLERANCE), f"formula {formula:,} vs counted {counted:,}"


# ---- TRM -----------------------------------------------------------------------------


def trm_batch(size: int = 3, seq_len: int = 9, vocab: int = 11) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "inputs": torch.randint(0, vocab, (size, seq_len), generator=generator, dtype=torch.int32),
        "labels": torch.randint(1, vocab, (size, seq_len), generator=generator, dtype=torch.int32),
        "puzzle_identifiers": torch.randint(0, 5, (size,), generator=generator, dtype=torch.int32),
        "noise": torch.rand(size, 2, generator=generator),
    }


@pytest.mark.parametrize("overrides", [
    {},
    {"H_cycles": 3, "L_cycles": 1, "L_layers": 1},
    {"mlp_t": True, "pos_encodings": "none"},
    {"no_ACT_continue": False},
    {"puzzle_emb_ndim": 0, "puzzle_emb_len": 0, "pos_encodings": "learned"},
], ids=["default", "cycles", "mlp_t", "act_continue", "no_prefix"])
def test_trm_formula_matches_the_counted_step(overrides):
    torch.manual_seed(0)
    model = TRM(tiny_trm_config(**overrides), vocab_size=11, seq_len=9, num_puzzle_identifiers=5)
    assert_formula_matches("trm", model, trm_batch())


def test_trm_flops_grow_with_every_cycle_run():
    """Every H and L cycle the step runs is counted: one more L cycle adds H_cycles network calls."""
    batch = host(trm_batch())
    plugin = get_arch("trm")

    def flops(**overrides) -> int:
        return plugin.train_flops(TRM(tiny_trm_config(**overrides), 11, 9, 5), batch)

    one_more_l_cycle = flops(H_cycles=2, L_cycles=3) - flops(H_cycles=2, L_cycles=2)
    one_more_h_cycle = flops(H_cycles=3, L_cycles=2) - flops(H_cycles=2, L_cycles=2)
    # A no-grad H cycle adds 3 forward calls; an L cycle adds H_cycles calls, 1 of them with backward (x3).
    assert one_more_h_cycle * 4 == one_more_l_cycle * 3


# ---- BERT ----------------------------------------------------------------------------


def bert_batch(rows: int = 4, width: int = 12) -> dict[str, torch.Tensor]:
    """Padded rows of different lengths, ~30% of the real tokens labelled."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([width, width // 2, width - 3, 2])[:rows]
    real = torch.arange(width)[None, :] < lengths[:, None]  # (B, L)
    input_ids = torch.randint(5, VOCAB_SIZE, (rows, width), generator=generator).masked_fill(~real, 0)
    chosen = ((torch.rand(rows, width, generator=generator) < 0.3) & real) | (torch.arange(width) == 1)
    labels = torch.where(chosen, torch.randint(5, VOCAB_SIZE, (rows, width), generator=generator), IGNORE_LABEL_ID)
    return {"input_ids": input_ids, "token_type_ids": torch.zeros_like(input_ids), "attention_mask": real,
            "labels": labels, "next_sentence_label": torch.tensor([0, 1, 1, 0])[:rows], "row_index": torch.arange(rows)}


@pytest.mark.parametrize("unpad", [True, False])
@pytest.mark.parametrize("use_nsp", [False, True])
def test_bert_pretraining_formula_matches_the_counted_step(unpad, use_nsp):
    torch.manual_seed(0)
    model = Bert(tiny_bert_config(use_nsp=use_nsp, unpad=unpad, hidden_dropout_prob=0.1), VOCAB_SIZE)
    assert_formula_matches("bert", model, bert_batch())


def test_gradient_checkpointing_recomputes_work_the_formula_leaves_out():
    """Model FLOPs: the counter sees the layers' forward once more; the formula does not."""
    torch.manual_seed(0)
    model = Bert(tiny_bert_config(gradient_checkpointing=True), VOCAB_SIZE)
    batch = bert_batch()
    recomputed = encoder_flops(model.config, 4, 12, real_token_count(batch["attention_mask"].numpy()))
    assert counted_train_flops(model, batch) == get_arch("bert").train_flops(model, host(batch)) + recomputed


def test_bert_counts_real_tokens_and_the_padded_attention():
    """With unpad the dense layers cost what the real tokens cost; attention still pays for
    the padded width (L x L per row)."""
    model = Bert(tiny_bert_config(), VOCAB_SIZE)
    full = bert_batch()
    padded = {key: value.numpy() for key, value in full.items()}
    wider = {key: np.pad(value, [(0, 0), (0, 4)]) if value.ndim == 2 else value for key, value in padded.items()}
    wider["labels"][:, 12:] = IGNORE_LABEL_ID
    config, rows = model.config, 4
    attention_growth = config.num_layers * 4 * rows * (16 * 16 - 12 * 12) * config.hidden_size
    plugin = get_arch("bert")
    assert plugin.train_flops(model, wider) - plugin.train_flops(model, padded) == 3 * attention_growth


@pytest.mark.parametrize("name", ["bert_cls", "bert_ner", "bert_qa"])
def test_bert_task_formula_matches_the_counted_step(name):
    torch.manual_seed(0)
    config = BertTaskConfig(name=name, num_layers=2, hidden_size=64, num_heads=4, max_position_embeddings=32)
    batch = bert_batch()
    if name == "bert_qa":
        model = BertQuestionAnswering(config, VOCAB_SIZE)
        batch["start_positions"], batch["end_positions"] = torch.tensor([0, 2, 1, 0]), torch.tensor([0, 3, 2, 1])
    elif name == "bert_ner":
        model = BertTokenClassifier(config, VOCAB_SIZE, num_labels=5)
        batch["labels"] = torch.where(batch["attention_mask"], batch["input_ids"] % 5, IGNORE_LABEL_ID)
    else:
        model = BertSequenceClassifier(config, VOCAB_SIZE, num_labels=3)
        batch["labels"] = torch.tensor([0, 2, 1, 1])
    assert_formula_matches(name, model, batch)
