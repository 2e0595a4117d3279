"""Floating-point operations of a TRM training step, for the engine's `train/tflops` and
`train/mfu` (`ArchPlugin.train_flops`).

Counted as `torch.utils.flop_counter` counts them: 2 per multiply-add of every matmul
(projections, attention scores and weighted values, SwiGLU, the LM and Q heads);
norms, rotary tables, softmax, the loss and embedding lookups are left out (they are a
few percent of the total at the paper's sizes). One training `forward` is one supervision
(ACT) step for every slot, so a step's FLOPs do not depend on when slots halt:

    forward  = H_cycles * (L_cycles + 1) network calls + the heads
    backward = 2 x the forward of the last outer cycle and the heads (the only part with
               gradients: every matmul there computes its input's and its weight's gradient)

plus one more forward of the whole recursion when the Q-continue target is bootstrapped
(`no_ACT_continue=false`, HRM's halting).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from models.layers import swiglu_inner_size

if TYPE_CHECKING:
    from models.trm.config import TRMConfig
    from models.trm.model import TRM


def network_flops(config: TRMConfig, num_positions: int) -> int:
    """Forward FLOPs of one call of the recursive network on one example of T positions."""
    positions, hidden = num_positions, config.hidden_size
    channel_mlp = 6 * positions * hidden * swiglu_inner_size(hidden, config.expansion)  # gate, up, down
    if config.mlp_t:
        mixing = 6 * hidden * positions * swiglu_inner_size(positions, config.expansion)  # the same along T
    else:
        # QKV and output projections, then scores and weighted values over all T x T pairs.
        mixing = 8 * positions * hidden * hidden + 4 * positions * positions * hidden
    return config.L_layers * (mixing + channel_mlp)


def train_flops(model: TRM, batch: dict[str, np.ndarray]) -> int:
    """FLOPs of one training forward and backward of `model` over a host batch."""
    config = model.config
    network = network_flops(config, model.num_prefix + model.seq_len)
    # The LM head on the token positions, the Q head (2 logits) on position 0.
    heads = 2 * config.hidden_size * (model.seq_len * model.lm_head.out_features + 2)
    calls_per_cycle = config.L_cycles + 1
    recursion = config.H_cycles * calls_per_cycle * network + heads
    per_example = recursion + 2 * (calls_per_cycle * network + heads)
    if not config.no_ACT_continue:
        per_example += recursion  # the next step's Q values, the bootstrapped target
    return len(batch["inputs"]) * per_example
