"""The one training loop: step, evaluate, fit.

`pretrain.py` validates the config, `training.build.setup` builds the run, and `fit` or
`evaluate` here runs it. Every architecture goes through the same code; what differs
lives behind its plugin (`models.interface.ArchPlugin`) and its data kind
(`dataset.stream.DataKind`).

One optimiser step:
0. with several processes and trimmed batches, widen this rank's batch to the widest
   rank's (one all-reduce of one number, `widened_to_every_rank`): every rank then
   holds its slice of the batch one process would have served;
1. split this rank's slice of the global batch into micro-batches (`micro_batch_size`)
   and count, before any forward, the items each loss term averages over in the whole
   global batch (one small all-reduce);
2. per micro-batch: forward (bf16 autocast on accelerators) and backward of
   sum(weight * local sum / global count); with several processes the dense gradients
   are summed by DistributedDataParallel, overlapped with the last micro-batch's
   backward (`no_sync` before it), so one step of N micro-batches on any number of
   processes gives the update of one big batch;
3. one collective agrees on "gradients finite?" and "stop signal?"; a non-finite step is
   skipped and counted;
4. optimiser, sparse sign-SGD (its rows gathered over ranks) and EMA updates.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from core.errors import ConfigError, UserError
from models.interface import Carry, StepOutput
from training import distributed
from training.checkpoint import best_checkpoint, list_checkpoints, save_train_state
from training.config import PretrainConfig
from training.environment import memory_metrics, peak_tflops
from training.metrics import (
    MetricAccumulator,
    ThroughputMeter,
    format_record,
    natural_key,
    progress_display,
    progress_fields,
)
from training.prefetch import device_batches, to_device, widened_to_every_rank
from training.signals import StopRequest
from training.state import RunContext, TrainState


def global_loss_counts(state: TrainState, carries: list[Carry], micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor] | None:
    """Items each loss term is averaged over in the whole global batch, before any forward
    (one small all-reduce), or None when the model cannot count ahead (then one micro-batch
    per step, counted after its forward)."""
    per_micro = [state.model.loss_counts(carry, micro) for carry, micro in zip(carries, micro_batches)]
    if per_micro[0] is None:
        return None
    names = sorted(per_micro[0])
    local = torch.stack([sum(counts[name].float() for counts in per_micro) for name in names])
    return dict(zip(names, distributed.all_reduce_sum(local)))


def compute_objective(out: StepOutput, counts: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """sum(weight * local sum / global count) over the loss terms; the gradients summed over
    micro-batches and ranks are then exactly those of the global batch's mean loss."""
    names = list(out.losses)
    if counts is None:
        reduced = distributed.all_reduce_sum(torch.stack([out.losses[name][1].detach().float() for name in names]))
        counts = dict(zip(names, reduced))
    objective = 0.0
    for name in names:
        weight = out.loss_weights.get(name, 1.0)
        objective = objective + weight * out.losses[name][0] / counts[name].clamp(min=1.0)
    return objective


def split_rows(tensors: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive row blocks of `size` of every (batch-first) tensor."""
    rows = next(iter(tensors.values())).shape[0]
    return [{key: value[start : start + size] for key, value in tensors.items()} for start in range(0, rows, size)]


def train_step(state: TrainState, ctx: RunContext, batch: dict[str, torch.Tensor], stop: StopRequest,
               accumulator: MetricAccumulator, num_tokens: int = 0) -> bool:
    """One optimiser step over this rank's share of the global batch, `micro_batch_size` rows
    per forward; returns whether every rank agreed to stop after it. `num_tokens`, the real
    tokens of this rank's batch, is summed over ranks into `state.tokens_seen`."""
    if state.carry is None:
        state.carry = state.model.initial_carry(batch)
    size = ctx.layout.micro_batch_size
    micro_batches = split_rows(batch, size)
    carries = split_rows(state.carry, size) if state.carry else [{}] * len(micro_batches)
    counts = global_loss_counts(state, carries, micro_batches)
    if counts is None and len(micro_batches) > 1:
        raise ConfigError(f"arch {ctx.arch_config.name} cannot count its losses ahead, so it cannot split a step; "
                          "remove micro_batch_size")
    outputs = []
    for index, (carry, micro) in enumerate(zip(carries, micro_batches)):
        # Gradients are summed over ranks once, after the last micro-batch's backward.
        syncing = index == len(micro_batches) - 1
        with ctx.autocast(), (contextlib.nullcontext() if syncing else state.no_sync()):
            out = state.forward(carry, micro)
            compute_objective(out, counts).backward()
        outputs.append(out)
    if state.carry:
        # One micro-batch: its carry as it is (a concatenation would copy the latents every step).
        state.carry = {key: outputs[0].carry[key] if len(outputs) == 1 else torch.cat([out.carry[key] for out in outputs])
                       for key in state.carry}
    grad_norm = gradient_norm(state.model, ctx.config.grad_clip_norm)
    # float64: the token count stays exact.
    flags = torch.stack([
        (~torch.isfinite(grad_norm.float())).float().to(ctx.dist.device),
        _sparse_grads_nonfinite(state).to(ctx.dist.device),
        torch.tensor(float(stop.requested), device=ctx.dist.device),
        torch.tensor(float(num_tokens), device=ctx.dist.device),
    ]).double()
    nonfinite, sparse_nonfinite, stop_votes, tokens = distributed.all_reduce_sum(flags).tolist()
    state.tokens_seen += int(tokens)
    if nonfinite or sparse_nonfinite:
        _skip_step(state, ctx)
    else:
        _apply_update(state, ctx)
        for out in outputs:
            accumulator.add("train", {**out.losses, **out.metrics})
        accumulator.add("train", {"grad_norm": (grad_norm.detach().float(), torch.ones(()))})
    state.step += 1
    return stop_votes > 0


def gradient_norm(model: torch.nn.Module, clip_norm: float) -> torch.Tensor:
    """The global norm of `model`'s gradients, which are then scaled down to `clip_norm` when
    it is positive and exceeded (without clipping they are only read, never rewritten)."""
    params = [param for param in model.parameters() if param.grad is not None]
    if not params:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm([param.grad for param in params])
    if clip_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, clip_norm, norm)
    return norm


def _sparse_grads_nonfinite(state: TrainState) -> torch.Tensor:
    if state.sparse_optimizer is None:
        return torch.zeros(())
    finite = torch.stack([table.gradients_finite() for table in state.sparse_optimizer.embeddings]).all()
    return (~finite).float().cpu()


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
    update = state.step + 1  # state.step counts the updates done before this one
    if state.optimizer is not None:
        for group in state.optimizer.param_groups:
            group["lr"] = ctx.schedule.lr(update, "weights")
        state.optimizer.step()
    if state.sparse_optimizer is not None:
        state.sparse_optimizer.lr = ctx.schedule.lr(update, "sparse")
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


def stop_agreed(stop: StopRequest | None, ctx: RunContext) -> bool:
    """Whether a stop signal reached any rank (one small all-reduce with several processes,
    so every rank decides alike and none is left waiting in a collective)."""
    requested = stop is not None and stop.requested
    vote = torch.tensor(float(requested), device=ctx.dist.device)
    return distributed.all_reduce_sum(vote).item() > 0


@torch.no_grad()
def evaluate(state: TrainState, ctx: RunContext, stop: StopRequest | None = None) -> dict[str, float] | None:
    """Run the test split (and the evaluators) with the EMA weights when there are any.

    Returns the metrics (the same on every rank), or None when a stop signal came: the
    ranks agree after every batch, and abandon the evaluation together.
    """
    accumulator = MetricAccumulator()
    batches = ctx.data_kind.eval_batches(ctx.eval_paths, ctx.data_options, ctx.config.seed, ctx.layout)
    for evaluator in ctx.evaluators:
        evaluator.begin()
    swap = state.ema.swapped_in(state.model) if state.ema is not None else contextlib.nullcontext()
    progress = EvalProgress(ctx.dist.is_main, state.step)
    state.model.eval()
    try:
        with swap:
            for set_name, numpy_batch in batches:
                _evaluate_batch(state, ctx, set_name, to_device(numpy_batch, ctx.dist.device, pin=False), accumulator)
                progress.update(set_name)
                if stop_agreed(stop, ctx):
                    progress.abandon()
                    return None
    finally:
        state.model.train()
        progress.close()
    metrics = accumulator.reduce()
    for set_name in {key.split("/")[0] for key in metrics}:
        averaged = {key.split("/", 1)[1]: value for key, value in metrics.items() if key.startswith(set_name + "/")}
        metrics.update({f"{set_name}/{k}": v for k, v in state.model.derived_metrics(averaged).items()})
    for evaluator in ctx.evaluators:
        result = evaluator.finish(ctx.run_dir if ctx.dist.is_main else None, ctx.dist.rank, ctx.dist.world_size)
        if result:
            metrics.update(result)
    return distributed.broadcast_object(metrics)  # evaluators score on rank 0


class EvalProgress:
    """What rank 0 shows while evaluating: a bar per set when the bars' stream (stderr) is a
    terminal, as for training (`progress_display`); otherwise (a log file, a pipe) a line
    when the evaluation starts and one per finished set."""

    def __init__(self, enabled: bool, step: int) -> None:
        self.enabled, self.step = enabled, step
        self.terminal = enabled and sys.stderr.isatty()
        self.set_name: str | None = None
        self.num_batches, self.started = 0, time.monotonic()
        self.bar: tqdm | None = None
        if enabled and not self.terminal:
            print(f"evaluating at step {step}", flush=True)

    def update(self, set_name: str) -> None:
        """One batch of `set_name` done."""
        if not self.enabled:
            return
        if set_name != self.set_name:
            self._finish_set()
            self.set_name, self.num_batches, self.started = set_name, 0, time.monotonic()
            if self.terminal:
                self.bar = tqdm(desc=f"eval {set_name}", unit="batch", leave=False, dynamic_ncols=True)
        self.num_batches += 1
        if self.bar is not None:
            self.bar.update(1)

    def abandon(self) -> None:
        """Say that the evaluation stops here, unfinished."""
        if self.enabled:
            self._close_bar()
            tqdm.write(f"evaluation at step {self.step} abandoned after {self.num_batches} batch(es) of set "
                       f"{self.set_name}: a stop signal came; its metrics are not logged")
            self.enabled = False

    def close(self) -> None:
        """The evaluation ended (finished or not)."""
        if self.enabled:
            self._finish_set()
            self.enabled = False

    def _finish_set(self) -> None:
        self._close_bar()
        if self.set_name is not None and not self.terminal:
            print(f"eval at step {self.step}: set {self.set_name} done, {self.num_batches} batch(es) in "
                  f"{time.monotonic() - self.started:.1f} s", flush=True)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _evaluate_batch(state: TrainState, ctx: RunContext, set_name: str, batch: dict[str, torch.Tensor],
                    accumulator: MetricAccumulator) -> None:
    carry = state.model.initial_carry(batch)
    while True:
        with ctx.autocast():
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


def fit(state: TrainState, ctx: RunContext) -> None:
    """Train until the end (or a stop signal), evaluating and checkpointing on schedule."""
    config = ctx.config
    last_step = state.last_step(config.max_steps)
    # A run cut short by max_steps still ends with an evaluation.
    evaluations = sorted({step for step in eval_steps(config, state) if state.step < step < last_step} | {last_step})
    if state.step >= last_step and ctx.dist.is_main:
        print(f"nothing to train: the run is at step {state.step} and ends at step {last_step}; "
              "raise epochs or max_steps to continue", flush=True)
    stop = StopRequest()
    stop.install()
    progress = progress_display(last_step, state.step, enabled=ctx.dist.is_main)
    accumulator = MetricAccumulator()
    meter = ThroughputMeter(peak_tflops(ctx.dist.device, config.logging.peak_tflops))
    # Read ahead in a background thread on CUDA; checkpoints keep the trained batch's position.
    batches = device_batches(state.stream, ctx.dist.device)
    saved, saved_this_step, stopping = None, False, False  # `saved` is None on ranks other than 0
    try:
        while state.step < last_step and not stopping:
            with meter.waiting():
                item = next(batches)
            # Outside the data wait: on CUDA the all-reduce also waits for the last step's queued work.
            item = widened_to_every_rank(item, state.stream.column_padding, ctx.dist.device)
            counts = ctx.plugin.count_batch(item.host)
            stopping = train_step(state, ctx, item.device, stop, accumulator, counts["tokens"])
            state.stream_state = item.stream_state
            flops = ctx.plugin.train_flops(state.model, item.host) if ctx.plugin.train_flops else None
            meter.add(counts, ctx.dist.world_size, flops)
            progress.update(1)
            if state.step % config.logging.interval == 0 or state.step == last_step or stopping:
                _log_train(state, ctx, accumulator, meter, progress)
            if state.step == last_step or stopping:
                progress.close()  # its last line stays; what follows is printed below it, once
            saved, saved_this_step = None, False
            if evaluations and state.step >= evaluations[0]:
                evaluations.pop(0)
                with meter.excluded():  # evaluation and saving are not training throughput
                    metrics = _log_eval(state, ctx, stop)
                    stopping = stopping or metrics is None  # abandoned for a stop signal: save this step, stop
                    if config.checkpointing.every_eval or state.step == last_step or stopping:
                        saved, saved_this_step = save_train_state(state, ctx, metrics), True
        if stopping and not saved_this_step:
            saved = save_train_state(state, ctx)
    finally:
        batches.close()
        stop.uninstall()
        progress.close()  # before any closing message, so the bar is not drawn again after it
    if ctx.dist.is_main and state.step > 0:
        _closing_message(state, ctx, stop.signal_name if stopping else None, stopping, saved)


def _closing_message(state: TrainState, ctx: RunContext, signal_name: str | None, stopped: bool,
                     saved: Path | None) -> None:
    if stopped:
        reason = signal_name or "a stop signal on another rank"
        print(f"stopped by {reason} after step {state.step}; checkpoint {saved}\n"
              f"resume with the same command plus +load_checkpoint={ctx.run_dir}", flush=True)
    elif saved is not None:
        print(f"finished at step {state.step}; checkpoint: {saved}", flush=True)
    retention = ctx.config.checkpointing
    best = best_checkpoint(list_checkpoints(ctx.run_dir), retention.keep_best, retention.best_mode) if (
        retention.keep_best) else None
    if best is not None:
        print(f"best checkpoint by {retention.keep_best} ({retention.best_mode}): {best[0]} ({best[1]:.6g})", flush=True)


def _log_train(state: TrainState, ctx: RunContext, accumulator: MetricAccumulator, meter: ThroughputMeter,
               progress: tqdm) -> None:
    metrics = accumulator.reduce()
    metrics.update(meter.report())
    metrics.update(memory_metrics(ctx.dist.device))
    metrics["train/lr"] = ctx.schedule.lr(state.step)  # the last update's
    metrics["train/nonfinite_steps"] = float(state.nonfinite_total)
    metrics["train/epoch"] = state.step / state.steps_per_epoch
    if state.tokens_seen:
        metrics["train/tokens_seen"] = float(state.tokens_seen)
    if ctx.logger is not None:
        ctx.logger.log(state.step, metrics)
        progress.set_postfix(progress_fields(metrics, ctx.plugin.main_loss), refresh=False)


def _log_eval(state: TrainState, ctx: RunContext, stop: StopRequest) -> dict[str, float] | None:
    metrics = evaluate(state, ctx, stop)
    if ctx.logger is not None and metrics:
        ctx.logger.log(state.step, metrics)
        ordered = sorted(metrics.items(), key=lambda item: natural_key(item[0]))
        summary = ", ".join(f"{key}={value:.4f}" for key, value in ordered if math.isfinite(value))
        tqdm.write(f"eval at step {state.step}: {summary}")
    return metrics


def record_evaluation(ctx: RunContext, step: int, step_dir: Path, metrics: dict[str, float]) -> None:
    """Print an `eval_only` result and append it to `<run>/evaluations.jsonl` (not to the
    training curve): what was evaluated, on what data, and the metrics."""
    for name, value in sorted(metrics.items(), key=lambda item: natural_key(item[0])):
        print(f"{name}: {value:.6f}")
    record = {"step": step, "time": time.time(), "checkpoint": str(step_dir), "data_paths": ctx.eval_paths,
              "global_batch_size": ctx.layout.global_batch_size, "world_size": ctx.dist.world_size,
              **format_record(metrics)}
    path = ctx.run_dir / "evaluations.jsonl"
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")
    print(f"appended to {path}", flush=True)
