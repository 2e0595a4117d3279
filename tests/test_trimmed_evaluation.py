"""Evaluation batches are trimmed like training batches (`data.trim_padding_to_multiple`)
and give the same metrics as the full stored width: the padding columns cost nothing and
change nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dataset import build_text_cls_dataset
from dataset.text.loader import iter_mlm_eval_batches
from dataset.text.masking import MaskingConfig
from tests.helpers import (
    TINY_BERT,
    compose_config,
    make_cls_files,
    make_mlm_dataset,
    run_builder,
    write_wordpiece_vocab,
)
from training.build import setup
from training.config import PretrainConfig, validate
from training.distributed import DistContext
from training.loop import evaluate

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
STORED_WIDTH = 64
"""Sequences are built this long and hold at most about half of it, so trimming cuts."""


def _evaluate(overrides: list[str], trim: str) -> tuple[dict[str, float], list[int]]:
    """(metrics of one evaluation of the untrained model, widths of its evaluation batches)."""
    config = validate(PretrainConfig, compose_config(overrides + [f"data.trim_padding_to_multiple={trim}"]))
    state, ctx, _ = setup(config, CPU)
    batches = ctx.data_kind.eval_batches(ctx.eval_paths, ctx.data_options, config.seed, ctx.layout)
    widths = [batch["input_ids"].shape[1] for _, batch in batches]
    return evaluate(state, ctx), widths


def _assert_same_metrics(overrides: list[str]) -> None:
    full, full_widths = _evaluate(overrides, "null")
    trimmed, trimmed_widths = _evaluate(overrides, "8")
    assert set(full_widths) == {STORED_WIDTH}
    assert len(trimmed_widths) == len(full_widths) and max(trimmed_widths) < STORED_WIDTH
    assert all(width % 8 == 0 for width in trimmed_widths)
    assert full.keys() == trimmed.keys() and len(full) > 0
    for key in full:
        assert trimmed[key] == pytest.approx(full[key], rel=1e-5, abs=1e-6), key


def test_mlm_evaluation_is_trimmed_with_the_same_metrics(tmp_path):
    data = make_mlm_dataset(tmp_path / "mlm", num_documents=40, max_seq_length=STORED_WIDTH)
    _assert_same_metrics(TINY_BERT + [f"data_paths=[{data}]", f"+checkpoint_path={tmp_path / 'runs'}",
                                      "global_batch_size=8", "arch.max_position_embeddings=64"])


def test_classification_evaluation_is_trimmed_with_the_same_metrics(tmp_path):
    train, dev = make_cls_files(tmp_path / "files")
    vocab = write_wordpiece_vocab(tmp_path / "vocab")
    assert run_builder(build_text_cls_dataset.main, "--train-files", train, "--validation-files", dev, "--tokenizer",
                       vocab, "--max-seq-length", STORED_WIDTH, "--output-dir", tmp_path / "cls") == 0
    _assert_same_metrics(TINY_BERT[1:] + ["arch=bert_cls", f"data_paths=[{tmp_path / 'cls'}]",
                                          f"+checkpoint_path={tmp_path / 'runs'}", "global_batch_size=8",
                                          "arch.max_position_embeddings=64"])


def test_trimmed_mlm_evaluation_batches_are_the_single_process_batches_sliced(tmp_path):
    data = [str(make_mlm_dataset(tmp_path / "mlm", num_documents=40, max_seq_length=STORED_WIDTH))]
    full = [batch for _, batch in iter_mlm_eval_batches(data, 8, 0, 1, MaskingConfig(), 1)]
    whole = [batch for _, batch in iter_mlm_eval_batches(data, 8, 0, 1, MaskingConfig(), 1, trim_to_multiple=8)]
    halves = [[batch for _, batch in iter_mlm_eval_batches(data, 8, rank, 2, MaskingConfig(), 1, trim_to_multiple=8)]
              for rank in range(2)]
    for untrimmed, trimmed, first, second in zip(full, whole, *halves, strict=True):
        width = trimmed["input_ids"].shape[1]
        assert width < STORED_WIDTH and not untrimmed["attention_mask"][:, width:].any()
        for key, value in trimmed.items():
            cut = untrimmed[key][:, :width] if untrimmed[key].ndim == 2 else untrimmed[key]
            assert (value == cut).all() and (value == np.concatenate([first[key], second[key]])).all(), key
