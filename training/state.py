"""The two objects a run is made of: what never changes (`RunContext`) and what does
(`TrainState`; a checkpoint stores what a resumed run cannot rebuild from the config)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from core.batching import BatchLayout
from dataset.stream import DataKind, TrainStream
from evaluators.base import Evaluator
from models.interface import ArchConfig, ArchPlugin, Carry, TrainModule
from training.config import PretrainConfig
from training.distributed import DistContext
from training.ema import EMA
from training.metrics import MetricsLogger
from training.optim import SparseSignSGD
from training.schedule import LRSchedule


@dataclass
class RunContext:
    """What does not change during a run."""

    config: PretrainConfig
    arch_config: ArchConfig
    plugin: ArchPlugin
    data_kind: DataKind
    data_options: BaseModel
    dist: DistContext
    layout: BatchLayout
    """The batch's split over processes and micro-batches (checked once, in `setup`)."""
    schedule: LRSchedule
    """The learning rate of every update (`ctx.schedule.lr(update, optimizer)`)."""
    run_dir: Path
    """The run folder (`+checkpoint_path`): config snapshot, metrics, `step_<N>` checkpoints."""
    project_name: str
    run_name: str
    metadata: Any
    eval_paths: list[str]
    evaluators: list[Evaluator] = field(default_factory=list)
    logger: MetricsLogger | None = None
    environment: dict[str, Any] | None = None
    """What the run runs on (`training.environment.run_environment`); rank 0 of a training
    run only, set by `prepare_run_dir`."""

    def resolved_config(self) -> dict[str, Any]:
        """The run config with the validated (and possibly HF-derived) arch and data sections,
        and the warm-up in steps (`lr_warmup_ratio` resolved)."""
        resolved = self.config.model_dump()
        resolved["lr_warmup_steps"] = self.schedule.warmup_steps
        resolved["arch"] = self.arch_config.model_dump()
        resolved["data"] = self.data_options.model_dump()
        return resolved

    def autocast(self):
        """bf16/fp16 autocast on accelerators (the arch's `forward_dtype`); a no-op on CPU."""
        if self.dist.device.type != "cuda":
            return contextlib.nullcontext()
        dtype = getattr(torch, self.arch_config.forward_dtype)
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.dist.device.type, dtype=dtype)


@dataclass
class TrainState:
    """Everything that changes during a run. A checkpoint stores the model, optimiser and
    EMA states, the carry, `step`, `total_steps`, `stream_state` and `nonfinite_total`
    (`training.checkpoint.train_counters`); `forward`, `no_sync` and `nonfinite_in_a_row`
    are rebuilt or restart on resume."""

    model: TrainModule
    forward: Any
    """`model`, or its compiled version: call this, keep `model` for state dicts."""
    optimizer: torch.optim.Optimizer | None
    sparse_optimizer: SparseSignSGD | None
    ema: EMA | None
    stream: TrainStream
    stream_state: dict[str, int]
    """Position of the stream after the last batch that was trained on."""
    step: int
    total_steps: int
    steps_per_epoch: float
    carry: Carry | None = None
    no_sync: Callable[[], Any] = contextlib.nullcontext
    """Context in which backward does not sum gradients over ranks (DDP's `no_sync`)."""
    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0
    tokens_seen: int = 0
    """Real tokens trained on so far, summed over ranks (`ArchPlugin.count_batch`)."""

    def last_step(self, max_steps: int | None) -> int:
        """The step this run stops at: the schedule's end, or `max_steps` when that comes first."""
        return self.total_steps if max_steps is None else min(self.total_steps, max_steps)
