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


@pytest.fixture(scope="module")
def cls_task(tmp_path_factory):
    """A tiny sentence classification task (TSV files and its dataset) and a tiny
    `transformers` BERT folder with the dataset's vocabulary: no ../shared needed."""
    import shutil

    import transformers

    from benchmarks import finetune_quality
    from tests.helpers import make_cls_files, make_mlm_dataset

    root = tmp_path_factory.mktemp("finetune-bench")
    tokenizer = make_mlm_dataset(root / "mlm") / "tokenizer"
    files = root / "files"
    make_cls_files(files)
    model_dir = root / "hf-bert"
    shutil.copytree(tokenizer, model_dir)
    vocab_size = len((tokenizer / "vocab.txt").read_text().splitlines())
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128)
    transformers.BertModel(config).save_pretrained(model_dir)
    data = root / "cls"
    finetune_quality.build_dataset(files, data, str(model_dir))
    return files, data, model_dir


def test_the_finetune_speed_workers_run_the_same_rows(cls_task):
    """Both workers of benchmarks.finetune_train build and train on the same rows (so an
    engine change that breaks the benchmark fails here, not on its next run)."""
    from benchmarks import finetune_train

    _, data, _ = cls_task
    args = finetune_train.parse_args(["--size", "test", "--batch", "8", "--steps", "2", "--warmup", "1", "--rounds", "1",
                                      "--no-record", "--data", str(data)])
    ours, hf = finetune_train.ours_worker(args), finetune_train.hf_worker(args)
    assert ours["tokens_per_s"] > 0 and hf["examples_per_s"] > 0
    assert ours["mean_tokens_per_step"] == hf["mean_tokens_per_step"]  # the same sentences, batch after batch
    assert hf["fill"] > ours["fill"]  # transformers is given exactly the longest row, this project a multiple of 8


def test_the_finetune_quality_contenders_train_alike(cls_task, tmp_path):
    """benchmarks.finetune_quality: pretrain.py +init_from_hf and the plain transformers loop
    take the same steps and warm-up on the same token ids, and the summary judges them."""
    from benchmarks import finetune_quality

    files, data, model_dir = cls_task
    args = finetune_quality.parse_args(["--model-dir", str(model_dir), "--batch", "8", "--lr", "1e-3", "--threads", "1",
                                        "--files", str(files), "--data", str(data), "--seed", "0"])
    ours = finetune_quality.ours_run(args, data, 0, tmp_path / "run")
    hf = finetune_quality.hf_worker(args)
    assert ours["steps"] == hf["steps"] == 8 and ours["warmup_steps"] == hf["warmup_steps"] == 1  # 64 rows / 8
    assert hf["same_token_ids"] is True
    assert len(ours["curve"]) == len(hf["curve"]) == 1
    for result in (ours, hf):
        assert 0.0 <= result["accuracy"] <= 1.0 and result["loss"] > 0
    table, _ = finetune_quality.summarise(args, {"this project": [ours, ours], "transformers": [hf, hf]})
    assert "| this project |" in table and "| transformers |" in table


def test_the_finetune_quality_verdict_compares_the_means_with_the_seed_spread():
    from benchmarks import finetune_quality

    def run(accuracy, loss):
        return {"accuracy": accuracy, "f1": accuracy, "loss": loss, "curve": [loss], "seconds": 1.0, "steps": 4,
                "warmup_steps": 1, "same_token_ids": True}

    args = finetune_quality.parse_args(["--model-dir", "unused", "--seeds", "0", "1"])
    # accuracy: means 0.92 and 0.94 differ by 0.02 <= spread 0.04; loss: 0.305 vs 0.51, spreads 0.01 and 0.02.
    results = {"this project": [run(0.90, 0.30), run(0.94, 0.31)], "transformers": [run(0.93, 0.50), run(0.95, 0.52)]}
    _, notes = finetune_quality.summarise(args, results)
    verdict = notes[1]
    assert "accuracy: means differ by 0.0200, larger seed spread 0.0400 -> within noise" in verdict
    assert "loss: means differ by 0.2050, larger seed spread 0.0200 -> NOT within noise" in verdict


def test_the_data_scale_workers_drive_the_stream_and_the_order(tmp_path):
    """benchmarks.data_scale's workers run on this code (rank 0 of 2 processes, and an order
    past the exact-shuffle size), so a loader change that breaks them fails here."""
    import argparse

    from benchmarks import data_scale
    from tests.test_mlm_dataset import write_dataset

    write_dataset(tmp_path, 40, 0, seq_len=32)
    rank0 = data_scale.rank0_worker(argparse.Namespace(data=str(tmp_path), world=2, batches=2))
    assert rank0["us_per_row"] > 0 and rank0["max_ms"] > 0
    order = data_scale.order_worker(argparse.Namespace(rows=100_003))
    assert order["peak_traced_mb"] < 1 and order["median_ms"] > 0


def test_the_lamb_benchmark_runs_the_other_seeds_at_the_best_rate(monkeypatch):
    from benchmarks import lamb_large_batch

    calls = []

    def fake_loss(args, data, batch, optimizer, lr, seed):
        calls.append((optimizer, lr, seed))
        return abs(lr - 1e-2) + seed  # best at 1e-2

    monkeypatch.setattr(lamb_large_batch, "held_out_loss", fake_loss)
    args = lamb_large_batch.parse_args(["--lamb-lrs", "3e-3", "1e-2", "3e-2", "--seeds", "0", "1"])
    result = lamb_large_batch.compare(args, (None, None), 256, "lamb")
    assert result["best"] == 1e-2 and result["losses"] == [0.0, 1.0]
    assert calls == [("lamb", 3e-3, 0), ("lamb", 1e-2, 0), ("lamb", 3e-2, 0), ("lamb", 1e-2, 1)]
