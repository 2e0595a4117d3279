"""Floating-point operations of a BERT training step (pretraining and the fine-tuning
heads), for the engine's `train/tflops` and `train/mfu` (`ArchPlugin.train_flops`).

Counted as `torch.utils.flop_counter` counts them: 2 per multiply-add of every matmul;
embedding lookups, LayerNorm, GELU, softmax and the loss are left out. What the model
really runs is counted, from the batch itself:

- the dense layers (QKV, output projection, feed-forward) on the real tokens only with
  `unpad` (default), on every position of the padded rows without it;
- attention's scores and weighted values on the padded layout, B x L x L per layer (the
  term that grows with the sequence length);
- the head: the MLM transform and decoder at the labelled positions only (NSP pooler and
  classifier per row), or the fine-tuning head (per row or per real token);
- backward = 2 x forward (each matmul computes its input's and its weight's gradient).

Gradient checkpointing's recomputed forward is not counted: these are model FLOPs, so
MFU does not rise when work is repeated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from models.bert.config import BertConfig
    from models.bert.model import BertEncoder


def encoder_flops(config: BertConfig, num_rows: int, width: int, num_tokens: int) -> int:
    """Forward FLOPs of the encoder layers on `num_rows` rows padded to `width`, of which
    `num_tokens` are real tokens."""
    hidden = config.hidden_size
    dense_tokens = num_tokens if config.unpad else num_rows * width
    dense = dense_tokens * (8 * hidden * hidden + 4 * hidden * config.intermediate_size)  # QKV, out, FFN in and out
    attention = 4 * num_rows * width * width * hidden  # (B, nh, L, L) scores and weighted values
    return config.num_layers * (dense + attention)


def real_token_count(attention_mask: np.ndarray) -> int:
    """Tokens the encoder treats as real; a row without any counts whole (`BertEncoder.real_tokens`)."""
    mask = attention_mask.astype(bool)  # (B, L)
    return int((mask | ~mask.any(axis=-1, keepdims=True)).sum())


def train_flops(model: BertEncoder, batch: dict[str, np.ndarray]) -> int:
    """FLOPs of one training forward and backward of `model` over a host batch."""
    num_rows, width = batch["input_ids"].shape
    num_tokens = real_token_count(batch["attention_mask"])
    forward = encoder_flops(model.config, num_rows, width, num_tokens) + model.head_flops(batch, num_tokens)
    return 3 * forward
