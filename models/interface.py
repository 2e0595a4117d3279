"""The contract between a model and the training loop.

An architecture is a plugin: a package `models/<name>/` whose `__init__.py` exports what
`ArchPlugin` lists (its config class, its builder, the data kind it reads, its optimiser
parameter groups, the name of its main loss, how to count a batch and its FLOPs), and one line in
`models.registry`. The builder returns a `TrainModule`: an `nn.Module` that holds the
network *and* its loss head, and runs one step of work on a batch. The training engine
(`training/`) knows nothing else about the model.

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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
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

    def loss_counts(self, carry: Carry, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """The count of every loss term `forward(carry, batch)` will return, computed without
        the forward. The engine adds them over micro-batches and ranks before the first
        backward, which is what lets a step be split into micro-batches exactly; None (the
        default) means the model cannot, and its steps are never split."""
        return None

    def derived_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Extra evaluation metrics computed from the averaged ones (e.g. perplexity)."""
        return {}


class ArchConfig(BaseModel):
    """Base of every architecture's config: what the engine itself reads of the `arch:` section."""

    model_config = ConfigDict(extra="forbid")

    name: str
    """Architecture name in the registry (each architecture narrows it to its own)."""
    forward_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Compute dtype under autocast on accelerators; the training loop applies it (CPU runs
    float32), the model itself never casts."""


class DatasetShape(Protocol):
    """What a builder may read of a dataset's metadata (each data kind has more fields)."""

    vocab_size: int
    seq_len: int


@dataclass
class ParamGroups:
    """How an architecture's parameters are optimised."""

    dense: list[dict[str, Any]]
    """torch.optim parameter groups (`params`, `weight_decay`) of the weights optimiser."""
    sparse_tables: list[nn.Module] = field(default_factory=list)
    """Embedding tables updated row by row with sign-SGD (TRM's puzzle embeddings): each
    exposes `used_rows()` (ids and row gradients since the last step), `gradients_finite()`
    and `clear_uses()`."""


COMPILE_PREFIX = "_orig_mod."
"""Prefix that `torch.compile` adds to state-dict keys of a compiled module."""


def strip_compile_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `_orig_mod.` prefix that a compiled module's state dict carries."""
    return {key.removeprefix(COMPILE_PREFIX): value for key, value in state.items()}


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices, none on biases, norms and other 1-d tensors."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass(frozen=True)
class ArchPlugin:
    """Everything the engine needs to know about one architecture (`models/<name>/__init__.py`)."""

    name: str
    """The `arch.name` it answers to."""
    config_class: type[BaseModel]
    """Pydantic model of the `arch:` section (unknown keys refused)."""
    build: Callable[[Any, Any], TrainModule]
    """(validated arch config, training-split metadata) -> the model, on the CPU."""
    data_kind: str
    """Name of the data kind it reads (`dataset.kinds`)."""
    param_groups: Callable[[TrainModule, float], ParamGroups]
    """(model, weight_decay) -> its parameter groups, sparse tables included."""
    main_loss: str
    """The loss term the progress bar shows (a key of `StepOutput.losses`)."""
    count_batch: Callable[[dict[str, np.ndarray]], dict[str, int]]
    """A host batch -> {"examples": rows, "tokens": real tokens (0 when not meaningful)}."""
    train_flops: Callable[[TrainModule, dict[str, np.ndarray]], int] | None = None
    """(model, host batch) -> floating-point operations of one training forward and backward
    over the batch: 2 per multiply-add of every matmul, as `torch.utils.flop_counter` counts
    them, recomputation not included (model FLOPs). The engine logs `train/tflops` and
    `train/mfu` from it; None: it logs neither."""
    hf_config: Callable[[str, Any], Any] | None = None
    """(HF folder, arch config) -> arch config sized like the HF model (`+init_from_hf`)."""
    hf_load: Callable[[TrainModule, str], Any] | None = None
    """(model, HF folder) -> loads the HF weights into the model; returns a report."""
    checkpoint_config: Callable[[dict, int, Any], Any] | None = None
    """(the `arch` section of a checkpoint's run config, its vocabulary size, arch config) ->
    arch config sized like that checkpoint (`+init_from`, which then loads the weights whose
    names and shapes match)."""
