"""Turn a validated config into a ready-to-train `TrainState` and `RunContext`.

The order is fixed: resolve the run folder, build the data stream and the model on its
device, optionally initialise from Hugging Face, build optimisers and EMA, restore a
checkpoint, then compile. Compilation comes last so that checkpoints always hold the
plain module's state-dict names.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import torch

from dataset.common import UserError
from evaluators.registry import build_evaluators
from models.registry import get_arch
from utils import distributed
from utils.checkpoint import load_checkpoint, resolve_checkpoint
from utils.config import ConfigError, PretrainConfig, validate
from utils.distributed import DistContext
from utils.ema import EMA
from utils.metrics_logger import MetricsLogger
from utils.train_loop import RunContext, TrainState, build_optimizers, restore_rng, slice_carry


def resolve_run(config: PretrainConfig, arch_name: str) -> tuple[str, str, Path, Path | None]:
    """(project name, run name, run folder, checkpoint to load) with the documented defaults.

    Resuming from a checkpoint folder continues in that checkpoint's run folder unless
    `+checkpoint_path` says otherwise.
    """
    project = config.project_name or f"{Path(config.data_paths[0]).name}-{arch_name}"
    checkpoint = None
    run_name = config.run_name
    run_dir = Path(config.checkpoint_path) if config.checkpoint_path else None
    if config.load_checkpoint:
        default_dir = run_dir or (Path("checkpoints") / project / run_name if run_name else None)
        checkpoint = resolve_checkpoint(config.load_checkpoint, default_dir)
        run_dir = run_dir or checkpoint.parent
        run_name = run_name or run_dir.name
    if run_name is None:
        run_name = distributed.broadcast_object(f"{arch_name}-{datetime.now():%Y%m%d-%H%M%S}")
    run_dir = run_dir or Path("checkpoints") / project / run_name
    return project, run_name, run_dir, checkpoint


def setup(config: PretrainConfig, dist: DistContext) -> tuple[TrainState, RunContext, Path | None]:
    """Build everything a run needs; returns the checkpoint it was restored from, if any."""
    arch_name = config.arch.get("name")
    spec = get_arch(str(arch_name))
    arch_config = validate(spec.config_class, config.arch, prefix="arch.")
    if config.global_batch_size % dist.world_size:
        raise ConfigError(
            f"global_batch_size ({config.global_batch_size}) is not divisible by the number of processes "
            f"({dist.world_size}); pick a multiple of {dist.world_size}"
        )
    project, run_name, run_dir, checkpoint_path = resolve_run(config, arch_config.name)
    metadata = spec.data.load_metadata(config.data_paths)
    if config.init_from_hf:
        if spec.hf_config is None:
            raise ConfigError(f"+init_from_hf is not supported for arch {arch_config.name}; remove it")
        arch_config = spec.hf_config(config.init_from_hf, arch_config)
        hf_vocab = getattr(arch_config, "vocab_size", None)
        if hf_vocab is not None and hf_vocab != metadata.vocab_size:
            raise ConfigError(
                f"the dataset's vocabulary has {metadata.vocab_size} tokens but the model in {config.init_from_hf} "
                f"has {hf_vocab}; rebuild the dataset with --tokenizer {config.init_from_hf}"
            )
    torch.manual_seed(config.seed)
    model = spec.build(arch_config, metadata).to(dist.device)
    if config.init_from_hf:
        report = spec.hf_load(model, config.init_from_hf)
        if dist.is_main:
            print(f"initialised from {config.init_from_hf}: {len(report.loaded)} tensors loaded; "
                  f"freshly initialised: {', '.join(report.missing) or 'none'}; "
                  f"ignored: {', '.join(report.unused) or 'none'}", flush=True)
    optimizer, sparse_optimizer = build_optimizers(model, config)
    stream = spec.data.train_stream(config.data_paths, config.seed, config.global_batch_size, dist.rank,
                                    dist.world_size, arch_config)
    steps_per_epoch = stream.examples_per_epoch / config.global_batch_size
    state = TrainState(
        model=model, forward=model, optimizer=optimizer, sparse_optimizer=sparse_optimizer,
        ema=EMA(model, config.ema_rate) if config.ema else None, stream=stream, stream_state=stream.state_dict(),
        step=0, total_steps=max(1, int(config.epochs * steps_per_epoch)), steps_per_epoch=steps_per_epoch,
    )
    eval_paths = config.data_paths_test or config.data_paths
    ctx = RunContext(config=config, arch_config=arch_config, spec=spec, dist=dist, run_dir=run_dir,
                     project_name=project, run_name=run_name, metadata=metadata, eval_paths=eval_paths,
                     evaluators=build_evaluators(config.evaluators, eval_paths))
    if checkpoint_path is not None:
        restore(state, ctx, checkpoint_path)
    if config.compile and dist.device.type == "cuda":
        state.forward = torch.compile(model)
    return state, ctx, checkpoint_path


def restore(state: TrainState, ctx: RunContext, path: Path) -> None:
    """Load a checkpoint into `state`: weights, optimiser, EMA, carry, data position, RNG."""
    checkpoint = load_checkpoint(path)
    saved_arch = checkpoint.train_state.get("arch")
    if saved_arch != ctx.arch_config.name:
        raise UserError(f"checkpoint {path} was written by arch={saved_arch}, not arch={ctx.arch_config.name}; "
                        f"use arch={saved_arch} or another checkpoint")
    try:
        state.model.load_state_dict({name: t.to(ctx.dist.device) for name, t in checkpoint.model.items()})
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()
        raise UserError(f"checkpoint {path} does not fit this model ({first}); "
                        "use the arch.* settings of the run that wrote it") from None
    if state.optimizer is not None and "weights" in checkpoint.optimizers:
        state.optimizer.load_state_dict(checkpoint.optimizers["weights"])
    if state.ema is not None:
        if checkpoint.ema is not None:
            state.ema.load_state_dict({name: t.to(ctx.dist.device) for name, t in checkpoint.ema.items()})
        else:
            state.ema = EMA(state.model, ctx.config.ema_rate)
    carry_batch = next(iter(checkpoint.carry.values())).shape[0] if checkpoint.carry else None
    if carry_batch == ctx.config.global_batch_size:
        state.carry = slice_carry(checkpoint.carry, ctx)
    elif carry_batch is not None and ctx.dist.is_main:
        print(f"note: global_batch_size changed ({carry_batch} -> {ctx.config.global_batch_size}); "
              "every slot starts a fresh example")
    state.stream.load_state_dict(checkpoint.train_state["stream"])
    state.stream_state = state.stream.state_dict()
    state.step = int(checkpoint.train_state["step"])
    state.nonfinite_total = int(checkpoint.train_state.get("nonfinite_total", 0))
    restore_rng(checkpoint.rng, ctx)


def open_logger(state: TrainState, ctx: RunContext) -> None:
    """Create the run folder, its config snapshot and the metrics logger (rank 0 only)."""
    if not ctx.dist.is_main:
        return
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    snapshot = ctx.resolved_config()
    (ctx.run_dir / "config.json").write_text(json.dumps(snapshot, indent=2), encoding="utf-8")
    resume_step = state.step if state.step > 0 and not ctx.config.eval_only else None
    ctx.logger = MetricsLogger(ctx.run_dir, ctx.config.wandb, ctx.project_name, ctx.run_name, snapshot, resume_step)
    parameters = sum(param.numel() for param in state.model.parameters())
    print(f"run {ctx.project_name}/{ctx.run_name} in {ctx.run_dir}: {parameters / 1e6:.2f}M parameters, "
          f"{state.total_steps} steps ({state.steps_per_epoch:.3f} per epoch), device {ctx.dist.device}, "
          f"{ctx.dist.world_size} process(es)", flush=True)
