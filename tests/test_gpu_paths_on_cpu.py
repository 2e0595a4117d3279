"""The GPU code paths, exercised on CPU where PyTorch allows: `torch.compile` (inductor on
CPU) with and without gradient accumulation, and bf16 autocast."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pretrain import launch
from tests.helpers import THREE_STEP_RUNS, compose_config, tiny_bert_config
from training.metrics import read_metrics


@pytest.mark.compile
@pytest.mark.parametrize("arch, optimizer", [("trm", []), ("bert", []), ("bert", ["optimizer=lamb"])],
                         ids=["trm", "bert", "bert-lamb"])
def test_compiled_training_with_accumulation_matches_eager(arch, optimizer, tmp_path):
    make_data, overrides, key = THREE_STEP_RUNS[arch]
    overrides = overrides + optimizer + [f"data_paths=[{make_data(tmp_path / 'data')}]"]
    losses = {}
    for name, extra in (("eager", ["compile=false"]), ("compiled", ["compile=true", "micro_batch_size=4"])):
        launch(compose_config(overrides + extra + [f"+checkpoint_path={tmp_path / name}"]))
        losses[name] = [r[key] for r in read_metrics(tmp_path / name) if key in r]
    assert len(losses["eager"]) == 3
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4, abs=1e-5)


def _trm_and_batch():
    from models.trm import TRMConfig, build_trm

    torch.manual_seed(0)
    config = TRMConfig(name="trm", hidden_size=64, num_heads=4, L_layers=1, H_cycles=2, L_cycles=2, halt_max_steps=3,
                       puzzle_emb_len=2, expansion=2, puzzle_emb_ndim=64)
    model = build_trm(config, SimpleNamespace(vocab_size=11, seq_len=16, num_puzzle_identifiers=4)).train()
    batch = {"inputs": torch.randint(1, 11, (8, 16)), "labels": torch.randint(1, 11, (8, 16)),
             "puzzle_identifiers": torch.randint(0, 4, (8,)), "noise": torch.rand(8, 2)}
    return model, batch


def _bert_and_batch():
    from models.bert import build_bert

    torch.manual_seed(0)
    model = build_bert(tiny_bert_config(), SimpleNamespace(vocab_size=100, seq_len=32, pad_id=0, nsp=False)).train()
    input_ids = torch.randint(5, 100, (8, 32))
    labels = torch.full_like(input_ids, -100)
    labels[:, 3::5] = input_ids[:, 3::5]
    batch = {"input_ids": input_ids, "token_type_ids": torch.zeros_like(input_ids),
             "attention_mask": torch.ones_like(input_ids, dtype=torch.bool), "labels": labels}
    return model, batch


@pytest.mark.parametrize("make", [_trm_and_batch, _bert_and_batch], ids=["trm", "bert"])
def test_bf16_autocast_forward_and_backward_stay_close_to_float32(make):
    results = []
    for autocast in (False, True):
        model, batch = make()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(model.initial_carry(batch), batch)
            name = next(iter(out.losses))
            total, count = out.losses[name]
            loss = total.float() / count
        loss.backward()
        grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
        results.append((loss.item(), grads))
    (loss32, grads32), (loss16, grads16) = results
    assert loss16 == pytest.approx(loss32, rel=3e-2)
    cosine = torch.nn.functional.cosine_similarity(grads32, grads16, dim=0).item()
    assert cosine > 0.98, cosine
