"""The benchmarks' arithmetic: model FLOPs per token against BERT.md's figures, and the
interleaved order of the contenders."""

from __future__ import annotations

import pytest

from benchmarks import common
from benchmarks.bert_train import SIZES, flops_per_token
from models.bert.config import BertConfig


def test_bert_base_flops_per_token_match_the_reference_figures():
    base = BertConfig(name="bert", **SIZES["base"])
    # BERT.md section 3: ~0.55 GFLOP per token at length 128 with the head on 15% of
    # the positions, ~0.67 with the full head (which adds 0.85 * 6 * (H^2 + H V)).
    sparse = flops_per_token(base, 30522, 128, mask_prob=0.15)
    full = flops_per_token(base, 30522, 128, mask_prob=1.0)
    assert sparse == pytest.approx(0.55e9, rel=0.02)
    assert full - sparse == pytest.approx(0.85 * 6 * (768 * 768 + 768 * 30522))
    assert full == pytest.approx(0.67e9, rel=0.01)


def test_interleaved_rounds_alternate_the_order(monkeypatch):
    calls = []

    def fake_worker(module, args):
        calls.append(args[0])
        return {"rate": float(len(calls))}

    monkeypatch.setattr(common, "run_worker", fake_worker)
    results = common.interleaved({"a": ["a"], "b": ["b"]}, "unused", rounds=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert [r["rate"] for r in results["a"]] == [1.0, 4.0, 5.0]
    assert common.median_of(results["b"], "rate") == 3.0


def test_the_trm_benchmark_drives_the_engine_step():
    """The benchmark builds the engine's step the way `fit` runs it (so a change to the
    engine that breaks it fails here, not on the next benchmark run)."""
    from benchmarks import trm_train

    args = trm_train.parse_args(["--size", "test", "--steps", "1", "--warmup", "0", "--rounds", "1", "--no-record"])
    result = trm_train.ours_worker(args, "test", 4)
    assert result["examples_per_s"] > 0
