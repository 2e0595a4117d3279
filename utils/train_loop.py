"""The one training loop: set up, train, evaluate, checkpoint, resume.

`pretrain.py` validates the config and calls `run`. The order of things is fixed and
visible here: build the model on its device, restore a checkpoint if asked, compile,
then step. Every architecture goes through the same code; what differs lives behind
`models.registry.ArchSpec` (config class, builder, data kind).

One optimiser step:
1. forward on this rank's slice of the global batch (bf16 autocast on accelerators);
2. add the loss-term counts over ranks, so that the loss is normalised by global counts;
3. backward, then sum the gradients over ranks (no DDP wrapper: the sparse puzzle
   embedding needs its own all-gather, and summing keeps 1-rank and N-rank runs equal);
4. one collective agrees on "gradients finite?" and "stop signal?"; a non-finite step is
   skipped and counted;
5. optimiser, sparse sign-SGD and EMA updates.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from tqdm import tqdm

from dataset.common import UserError
from dataset.stream import TrainStream
from evaluators.base import Evaluator
from models.interface import Carry, StepOutput, TrainModule
from models.registry import ArchSpec
from utils import distributed
from utils.checkpoint import Checkpoint, save_checkpoint
from utils.config import PretrainConfig
from utils.distributed import DistContext
from utils.ema import EMA
from utils.metrics_logger import MetricsLogger
from utils.optim import AdamAtan2, SparseSignSGD, learning_rate, split_decay_groups
from utils.prefetch import device_batches
from utils.signals import StopRequest


@dataclass
class RunContext:
    """What does not change during a run."""

    config: PretrainConfig
    arch_config: BaseModel
    spec: ArchSpec
    dist: DistContext
    run_dir: Path
    project_name: str
    run_name: str
    metadata: Any
    eval_paths: list[str]
    evaluators: list[Evaluator] = field(default_factory=list)
    logger: MetricsLogger | None = None

    def resolved_config(self) -> dict[str, Any]:
        """The run config with the validated (and possibly HF-derived) arch section."""
        resolved = self.config.model_dump()
        resolved["arch"] = self.arch_config.model_dump()
        return resolved

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The compute dtype under autocast: the arch's `forward_dtype` on CUDA, none on CPU."""
        if self.dist.device.type != "cuda":
            return None
        dtype = getattr(torch, getattr(self.arch_config, "forward_dtype", "float32"))
        return None if dtype == torch.float32 else dtype


@dataclass
class TrainState:
    """Everything that changes during a run; a checkpoint stores all of it."""

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
    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0


def build_optimizers(model: TrainModule, config: PretrainConfig) -> tuple[torch.optim.Optimizer | None, SparseSignSGD | None]:
    """The weights optimiser (None when frozen) and the sparse puzzle-embedding one (if any)."""
    sparse_tables = [module for module in model.modules() if hasattr(module, "last_rows")]
    sparse = SparseSignSGD(sparse_tables, config.puzzle_emb_lr, config.puzzle_emb_weight_decay) if sparse_tables else None
    if config.freeze_weights:
        for param in model.parameters():
            param.requires_grad_(False)
        return None, sparse
    betas = (config.beta1, config.beta2)
    if config.optimizer == "adam_atan2":
        # As in TRM: decoupled weight decay on every weight.
        params = [param for param in model.parameters() if param.requires_grad]
        return AdamAtan2(params, lr=config.lr, betas=betas, weight_decay=config.weight_decay), sparse
    fused = next(model.parameters()).device.type == "cuda"
    groups = split_decay_groups(model, config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, betas=betas, fused=fused), sparse


def batch_to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Numpy arrays -> tensors on `device` (pinned, asynchronous copies on CUDA)."""
    tensors = {}
    for key, array in batch.items():
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if device.type == "cuda":
            tensor = tensor.pin_memory().to(device, non_blocking=True)
        tensors[key] = tensor
    return tensors


def _autocast(ctx: RunContext):
    dtype = ctx.autocast_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=ctx.dist.device.type, dtype=dtype)


class MetricAccumulator:
    """Sums (total, count) pairs locally; `reduce` adds them over ranks and averages."""

    def __init__(self) -> None:
        self.sums: dict[str, list[torch.Tensor]] = {}

    def add(self, prefix: str, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Add this step's pairs under `<prefix>/<name>`."""
        for name, (total, count) in pairs.items():
            key = f"{prefix}/{name}"
            pair = torch.stack([total.detach().float(), count.detach().float()])
            if key in self.sums:
                self.sums[key][0] += pair
            else:
                self.sums[key] = [pair]

    def reduce(self) -> dict[str, float]:
        """Global means (a collective: every rank must call it with the same keys)."""
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        stacked = distributed.all_reduce_sum(torch.stack([self.sums[key][0] for key in keys]))
        values = stacked.cpu().tolist()
        self.sums.clear()
        return {key: total / count for key, (total, count) in zip(keys, values) if count > 0}


def compute_objective(out: StepOutput) -> torch.Tensor:
    """sum(weight * local sum / global count) over the loss terms (one small all-reduce)."""
    names = list(out.losses)
    counts = distributed.all_reduce_sum(torch.stack([out.losses[name][1].detach().float() for name in names]))
    objective = 0.0
    for index, name in enumerate(names):
        weight = out.loss_weights.get(name, 1.0)
        objective = objective + weight * out.losses[name][0] / counts[index].clamp(min=1.0)
    return objective


def train_step(state: TrainState, ctx: RunContext, batch: dict[str, torch.Tensor], stop: StopRequest,
               accumulator: MetricAccumulator) -> bool:
    """One optimiser step; returns whether every rank agreed to stop after it."""
    if state.carry is None:
        state.carry = state.model.initial_carry(batch)
    with _autocast(ctx):
        out = state.forward(state.carry, batch)
    state.carry = out.carry
    compute_objective(out).backward()
    params = [param for param in state.model.parameters() if param.grad is not None]
    distributed.all_reduce_gradients(params)
    max_norm = ctx.config.grad_clip_norm if ctx.config.grad_clip_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros(())
    flags = torch.stack([
        (~torch.isfinite(grad_norm.float())).float().to(ctx.dist.device),
        _sparse_grads_nonfinite(state).to(ctx.dist.device),
        torch.tensor(float(stop.requested), device=ctx.dist.device),
    ])
    nonfinite, sparse_nonfinite, stop_votes = distributed.all_reduce_sum(flags).tolist()
    if nonfinite or sparse_nonfinite:
        _skip_step(state, ctx)
    else:
        _apply_update(state, ctx)
        accumulator.add("train", {**out.losses, **out.metrics})
        accumulator.add("train", {"grad_norm": (grad_norm.detach().float(), torch.ones(()))})
    state.step += 1
    return stop_votes > 0


def _sparse_grads_nonfinite(state: TrainState) -> torch.Tensor:
    if state.sparse_optimizer is None:
        return torch.zeros(())
    bad = [~torch.isfinite(t.last_rows.grad).all() for t in state.sparse_optimizer.embeddings
           if getattr(t, "last_rows", None) is not None and t.last_rows.grad is not None]
    return torch.stack(bad).any().float().cpu() if bad else torch.zeros(())


def _skip_step(state: TrainState, ctx: RunContext) -> None:
    state.nonfinite_in_a_row += 1
    state.nonfinite_total += 1
    _zero_grads(state)
    if ctx.dist.is_main:
        # Steps are numbered as in the metrics: step N is the N-th update (state.step counts the done ones).
        tqdm.write(f"warning: step {state.step + 1}: non-finite loss or gradients, step skipped "
                   f"({state.nonfinite_in_a_row} in a row, {state.nonfinite_total} in total)")
    if state.nonfinite_in_a_row >= ctx.config.max_nonfinite_steps:
        raise UserError(
            f"loss or gradients were not finite for {state.nonfinite_in_a_row} steps in a row (step {state.step + 1}); "
            "lower lr, check the data, or raise max_nonfinite_steps"
        )


def _apply_update(state: TrainState, ctx: RunContext) -> None:
    config = ctx.config
    fraction = learning_rate(state.step, 1.0, config.lr_warmup_steps, state.total_steps, config.lr_min_ratio,
                             config.lr_schedule)
    if state.optimizer is not None:
        for group in state.optimizer.param_groups:
            group["lr"] = config.lr * fraction
        state.optimizer.step()
    if state.sparse_optimizer is not None:
        state.sparse_optimizer.lr = config.puzzle_emb_lr * fraction
        state.sparse_optimizer.step()
    if state.ema is not None:
        state.ema.update(state.model)
    state.nonfinite_in_a_row = 0
    _zero_grads(state)


def _zero_grads(state: TrainState) -> None:
    if state.optimizer is not None:
        state.optimizer.zero_grad(set_to_none=True)
    if state.sparse_optimizer is not None:
        state.sparse_optimizer.zero_grad()


def eval_steps(config: PretrainConfig, state: TrainState) -> list[int]:
    """Optimiser steps after which to evaluate: every `eval_interval` epochs, and the end."""
    points = {state.total_steps}
    if config.eval_interval is not None:
        for epoch in range(config.eval_interval, config.epochs + 1, config.eval_interval):
            if epoch >= (config.min_eval_interval or 0):
                points.add(min(state.total_steps, max(1, int(round(epoch * state.steps_per_epoch)))))
    return sorted(points)


@torch.no_grad()
def evaluate(state: TrainState, ctx: RunContext) -> dict[str, float]:
    """Run the test split (and the evaluators) with the EMA weights when there are any."""
    accumulator = MetricAccumulator()
    batches = ctx.spec.data.eval_batches(ctx.eval_paths, ctx.config.global_batch_size, ctx.dist.rank,
                                         ctx.dist.world_size, ctx.arch_config, ctx.config.seed)
    for evaluator in ctx.evaluators:
        evaluator.begin()
    swap = state.ema.swapped_in(state.model) if state.ema is not None else contextlib.nullcontext()
    state.model.eval()
    try:
        with swap:
            for set_name, numpy_batch in batches:
                _evaluate_batch(state, ctx, set_name, batch_to_device(numpy_batch, ctx.dist.device), accumulator)
    finally:
        state.model.train()
    metrics = accumulator.reduce()
    for set_name in {key.split("/")[0] for key in metrics}:
        averaged = {key.split("/", 1)[1]: value for key, value in metrics.items() if key.startswith(set_name + "/")}
        metrics.update({f"{set_name}/{k}": v for k, v in state.model.derived_metrics(averaged).items()})
    for evaluator in ctx.evaluators:
        result = evaluator.finish(ctx.run_dir if ctx.dist.is_main else None, ctx.dist.rank, ctx.dist.world_size)
        if result:
            metrics.update(result)
    return metrics


def _evaluate_batch(state: TrainState, ctx: RunContext, set_name: str, batch: dict[str, torch.Tensor],
                    accumulator: MetricAccumulator) -> None:
    carry = state.model.initial_carry(batch)
    while True:
        with _autocast(ctx):
            out = state.forward(carry, batch)
        carry = out.carry
        if out.all_halted:
            break
    accumulator.add(set_name, {**out.losses, **out.metrics})
    if ctx.evaluators:
        cpu_batch = {key: value.cpu() for key, value in batch.items()}
        cpu_outputs = {key: value.detach().float().cpu() if value.is_floating_point() else value.cpu()
                       for key, value in out.outputs.items()}
        for evaluator in ctx.evaluators:
            evaluator.update(set_name, cpu_batch, cpu_outputs)


def gather_carry(carry: Carry | None) -> dict[str, torch.Tensor]:
    """Every rank's carry concatenated along the batch (a collective)."""
    if not carry:
        return {}
    gathered = {}
    for name in sorted(carry):
        tensor = carry[name]
        as_bytes = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor
        full = distributed.all_gather_batch_first(as_bytes)
        gathered[name] = full.to(torch.bool) if tensor.dtype == torch.bool else full
    return gathered


def slice_carry(carry: dict[str, torch.Tensor], ctx: RunContext) -> Carry | None:
    """This rank's part of a saved global carry, on this rank's device."""
    if not carry:
        return None
    local = ctx.config.global_batch_size // ctx.dist.world_size
    start = ctx.dist.rank * local
    return {name: tensor[start : start + local].to(ctx.dist.device) for name, tensor in carry.items()}


def rng_states(ctx: RunContext) -> dict[str, torch.Tensor]:
    """Every rank's torch RNG states, keyed `rank<r>.cpu` / `rank<r>.cuda` (a collective)."""
    local = {"cpu": torch.get_rng_state()}
    if ctx.dist.device.type == "cuda":
        local["cuda"] = torch.cuda.get_rng_state(ctx.dist.device)
    everyone = [local]
    if distributed.is_distributed():
        everyone = [None] * ctx.dist.world_size
        torch.distributed.all_gather_object(everyone, local)
    return {f"rank{rank}.{kind}": tensor for rank, states in enumerate(everyone) for kind, tensor in states.items()}


def restore_rng(rng: dict[str, torch.Tensor], ctx: RunContext) -> None:
    """Set this rank's RNG states from a checkpoint (missing ranks keep their seeds)."""
    prefix = f"rank{ctx.dist.rank}."
    if prefix + "cpu" in rng:
        torch.set_rng_state(rng[prefix + "cpu"])
    if ctx.dist.device.type == "cuda" and prefix + "cuda" in rng:
        torch.cuda.set_rng_state(rng[prefix + "cuda"], ctx.dist.device)


def save(state: TrainState, ctx: RunContext) -> Path | None:
    """Write a checkpoint of the current step (collective; rank 0 writes)."""
    carry = gather_carry(state.carry)
    rng = rng_states(ctx)
    path = None
    if ctx.dist.is_main:
        optimizers = {}
        if state.optimizer is not None:
            optimizers["weights"] = state.optimizer.state_dict()
        checkpoint = Checkpoint(
            path=ctx.run_dir, model=state.model.state_dict(), ema=state.ema.state_dict() if state.ema else None,
            optimizers=optimizers, carry=carry, rng=rng, config=ctx.resolved_config(),
            train_state={
                "step": state.step, "total_steps": state.total_steps, "stream": state.stream_state,
                "nonfinite_total": state.nonfinite_total, "world_size": ctx.dist.world_size, "time": time.time(),
                "arch": ctx.arch_config.name,
            },
        )
        path = save_checkpoint(ctx.run_dir, checkpoint, _dataset_files(ctx.config.data_paths[0]))
    distributed.barrier()
    return path


def _dataset_files(data_path: str) -> list[Path]:
    """Dataset files a checkpoint keeps a copy of (metadata and tokenizer), when present."""
    root = Path(data_path)
    return [path for path in (root / "dataset.json", root / "tokenizer") if path.exists()]


def fit(state: TrainState, ctx: RunContext) -> None:
    """Train until the end (or a stop signal), evaluating and checkpointing on schedule."""
    config = ctx.config
    last_step = state.total_steps if config.max_steps is None else min(state.total_steps, config.max_steps)
    # A run cut short by max_steps still ends with an evaluation.
    evaluations = sorted({step for step in eval_steps(config, state) if state.step < step < last_step} | {last_step})
    if state.step >= last_step and ctx.dist.is_main:
        print(f"nothing to train: the run is at step {state.step} and ends at step {last_step}; "
              "raise epochs or max_steps to continue", flush=True)
    stop = StopRequest()
    stop.install()
    progress = tqdm(total=last_step, initial=state.step, disable=not ctx.dist.is_main, dynamic_ncols=True)
    accumulator = MetricAccumulator()
    meter = _ThroughputMeter()
    # Read ahead in a background thread on CUDA; checkpoints keep the trained batch's position.
    batches = device_batches(state.stream, ctx.dist.device)
    try:
        while state.step < last_step:
            item = next(batches)
            stopping = train_step(state, ctx, item.device, stop, accumulator)
            state.stream_state = item.stream_state
            meter.add(item.host, ctx.dist.world_size)
            progress.update(1)
            if state.step % config.log_interval == 0 or state.step == last_step or stopping:
                _log_train(state, ctx, accumulator, meter, progress)
            saved = None
            if evaluations and state.step >= evaluations[0]:
                evaluations.pop(0)
                _log_eval(state, ctx)
                if config.checkpoint_every_eval or state.step == last_step:
                    saved = save(state, ctx)
            if stopping:
                _stop_gracefully(state, ctx, stop.signal_name, saved)
                return
            if state.step == last_step and ctx.dist.is_main:
                tqdm.write(f"finished at step {state.step}; checkpoint: {saved}")
    finally:
        batches.close()
        stop.uninstall()
        progress.close()


def _stop_gracefully(state: TrainState, ctx: RunContext, signal_name: str | None, saved: Path | None) -> None:
    path = saved or save(state, ctx)
    if ctx.dist.is_main:
        reason = signal_name or "a stop signal on another rank"
        print(f"stopped by {reason} after step {state.step}; checkpoint {path}\n"
              f"resume with the same command plus +load_checkpoint={ctx.run_dir}", flush=True)


class _ThroughputMeter:
    """Examples and non-padding tokens per second since the last report."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.examples = 0
        self.tokens = 0

    def add(self, batch: dict[str, np.ndarray], world_size: int) -> None:
        first = next(iter(batch.values()))
        self.examples += first.shape[0] * world_size
        if "attention_mask" in batch:
            self.tokens += int(batch["attention_mask"].sum()) * world_size

    def report(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rates = {"train/examples_per_s": self.examples / elapsed}
        if self.tokens:
            rates["train/tokens_per_s"] = self.tokens / elapsed
        self.__init__()
        return rates


def _log_train(state: TrainState, ctx: RunContext, accumulator: MetricAccumulator, meter: _ThroughputMeter,
               progress: tqdm) -> None:
    metrics = accumulator.reduce()
    metrics.update(meter.report())
    fraction = learning_rate(max(state.step - 1, 0), 1.0, ctx.config.lr_warmup_steps, state.total_steps,
                             ctx.config.lr_min_ratio, ctx.config.lr_schedule)
    metrics["train/lr"] = ctx.config.lr * fraction
    metrics["train/nonfinite_steps"] = float(state.nonfinite_total)
    if ctx.logger is not None:
        ctx.logger.log(state.step, metrics)
        progress.set_postfix(_progress_fields(metrics), refresh=False)


def _progress_fields(metrics: dict[str, float]) -> dict[str, str]:
    loss_key = next((key for key in ("train/lm_loss", "train/mlm_loss") if key in metrics), None)
    fields = {}
    if loss_key:
        fields["loss"] = f"{metrics[loss_key]:.4f}"
    fields["lr"] = f"{metrics['train/lr']:.2e}"
    rate_key = "train/tokens_per_s" if "train/tokens_per_s" in metrics else "train/examples_per_s"
    fields[rate_key.split("/")[1].replace("_per_s", "/s")] = f"{metrics[rate_key]:.0f}"
    return fields


def _log_eval(state: TrainState, ctx: RunContext) -> dict[str, float]:
    metrics = evaluate(state, ctx)
    if ctx.logger is not None and metrics:
        ctx.logger.log(state.step, metrics)
        summary = ", ".join(f"{key}={value:.4f}" for key, value in sorted(metrics.items()) if math.isfinite(value))
        tqdm.write(f"eval at step {state.step}: {summary}")
    return metrics
