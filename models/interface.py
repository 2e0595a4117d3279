"""The contract between a model and the training loop.

Every architecture in `models.registry` builds a `TrainModule`: an `nn.Module` that holds
the network *and* its loss head, and runs one step of work on a batch. The loop in
`utils.train_loop` knows nothing else about the model.

A step may be stateful: TRM carries latents and halting counters across optimiser steps
("continuous batching"), BERT carries nothing. State travels in a `Carry`, a flat dict of
tensors whose first dimension is the batch, so the loop can gather it across ranks for a
checkpoint and slice it again on resume, whatever the number of processes.

Losses and metrics are returned as `(sum, count)` pairs of local tensors. The loop adds
the counts over ranks first, then trains on `sum(weight_i * total_i / global_count_i)`: the
gradient summed over ranks is then exactly the gradient of the global batch, so results
do not depend on how many processes share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

Carry = dict[str, torch.Tensor]
"""Per-slot state carried between steps; every tensor is batch-first."""

SumAndCount = tuple[torch.Tensor, torch.Tensor]
"""A local sum and the local number of items it was summed over (both 0-d tensors)."""


@dataclass
class StepOutput:
    """What one `TrainModule.forward` call returns."""

    carry: Carry
    """State for the next step (detached); `{}` for stateless models."""
    losses: dict[str, SumAndCount]
    """Terms of the training objective, logged under their names (unweighted)."""
    loss_weights: dict[str, float] = field(default_factory=dict)
    """Weight of each loss term in the objective (1.0 when absent): the loop trains on
    sum(weight * total / global count) over the terms."""
    metrics: dict[str, SumAndCount] = field(default_factory=dict)
    """Logged as total / global count; the loss terms are logged as well."""
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    """Batch-first tensors for evaluators (e.g. `preds`, `q_halt_logits`)."""
    all_halted: bool = True
    """In evaluation, whether every slot has finished; stateless models always finish."""


class TrainModule(nn.Module):
    """Base class of every model the loop trains; see the module docstring."""

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> Carry:
        """State before the first step on `batch`; stateless models return `{}`."""
        return {}

    def forward(self, carry: Carry, batch: dict[str, torch.Tensor]) -> StepOutput:  # noqa: D102
        raise NotImplementedError

    def derived_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Extra evaluation metrics computed from the averaged ones (e.g. perplexity)."""
        return {}
