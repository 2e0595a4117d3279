"""Turn a validated config into a ready-to-train `TrainState` and `RunContext`, piece by piece.

`setup` calls the pieces in a fixed order: find the arch plugin and its data kind, lay out
the batch, resolve the run folder, build the model on its device (optionally initialised
from Hugging Face or one of our checkpoints), the train state (optimisers, EMA, data
stream), the learning-rate schedule, restore a step folder, then wrap the forward (DDP,
compile). Compilation comes last so that checkpoints always hold the plain module's
state-dict names. `build_model`, `new_train_state` and `wrap_forward` are public so that
benchmarks build a run from the same pieces.

Words: the run folder (`run_dir`, the `+checkpoint_path` key) holds a run's files and its
checkpoints; a checkpoint is one `step_<N>` folder in it (`step_dir`).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from core.batching import BatchLayout
from core.errors import ConfigError
from core.files import write_json
from dataset.kinds import get_data_kind
from dataset.stream import DataKind, TrainStream
from evaluators.registry import build_evaluators
from models.interface import ArchPlugin, TrainModule
from models.registry import get_arch
from training import distributed
from training.checkpoint import find_latest, resolve_checkpoint, restore_train_state
from training.config import MOVED_KEYS, PretrainConfig, validate
from training.continue_from import continue_from
from training.distributed import DistContext
from training.ema import EMA
from training.environment import describe_environment, run_environment
from training.init_from import starting_point
from training.metrics import MetricsLogger
from training.optim import build_optimizers
from training.schedule import LRSchedule
from training.state import RunContext, TrainState


def resolve_run(config: PretrainConfig, arch_name: str) -> tuple[str, str, Path, Path | None]:
    """(project name, run name, run folder, step folder to restore) with the documented defaults.

    Resuming from a step folder continues in that folder's run folder unless
    `+checkpoint_path` says otherwise. A run folder belongs to one run: starting a new run
    in a folder that already holds one is refused, unless `resume=auto` resumes it.
    """
    project = config.logging.project_name or f"{Path(config.data_paths[0]).name}-{arch_name}"
    checkpointing = config.checkpointing
    step_dir = None
    run_name = config.logging.run_name
    run_dir = checkpointing.run_dir
    if checkpointing.load:
        default_dir = run_dir or (Path("checkpoints") / project / run_name if run_name else None)
        step_dir = resolve_checkpoint(checkpointing.load, default_dir)
        run_dir = run_dir or step_dir.parent
        run_name = run_name or run_dir.name
    if run_name is None:
        run_name = distributed.broadcast_object(f"{arch_name}-{datetime.now():%Y%m%d-%H%M%S}")
    run_dir = run_dir or Path("checkpoints") / project / run_name
    if step_dir is None and not config.eval_only and _holds_a_run(run_dir):
        step_dir = find_latest(run_dir)
        if checkpointing.resume != "auto":
            found = f"checkpoint {step_dir.name}" if step_dir else "metrics.jsonl"
            raise ConfigError(
                f"run folder {run_dir} already holds a run ({found}); resume it with +load_checkpoint={run_dir} "
                "(or resume=auto), or start a new run with another +run_name"
            )
    return project, run_name, run_dir, step_dir


def _holds_a_run(run_dir: Path) -> bool:
    """Whether a run already wrote its curve or a checkpoint into `run_dir`."""
    metrics = run_dir / "metrics.jsonl"
    return (metrics.is_file() and metrics.stat().st_size > 0) or any(run_dir.glob("step_*"))


def eval_only_config(config: PretrainConfig, composed: dict[str, Any], overrides: list[str]) -> PretrainConfig:
    """The config an `eval_only` run evaluates with: the checkpoint's own, then the keys the
    command line sets explicitly (`overrides`, Hydra's `key=value` strings) on top.

    `composed` is the config Hydra made of those overrides, so each overridden value is
    taken from it already parsed.
    """
    if not config.load_checkpoint or config.load_checkpoint == "latest":
        raise ConfigError("eval_only=true needs +load_checkpoint=PATH (a run folder or a step_<N> folder)")
    step_dir = resolve_checkpoint(config.load_checkpoint, None)
    saved = _read_saved_config(step_dir)
    # The weights come from the checkpoint, whose arch section is already sized: no starting point.
    merged = {**saved, "eval_only": True, "load_checkpoint": config.load_checkpoint, "resume": None,
              "init_from": None, "init_from_hf": None, "continue_from": None}
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "arch":
            chosen, trained = composed["arch"].get("name"), saved["arch"].get("name")
            if chosen != trained:
                raise ConfigError(f"checkpoint {step_dir} was written by arch={trained}; drop arch= or pass "
                                  f"arch={trained}")
            continue
        if key in ("eval_only", "load_checkpoint"):
            continue
        _set_path(merged, key, _get_path(composed, key))
    return validate(PretrainConfig, merged)


def _read_saved_config(step_dir: Path) -> dict[str, Any]:
    """A step folder's `config.json`, with the keys that later moved to the `data:` section moved."""
    saved = json.loads((step_dir / "config.json").read_text(encoding="utf-8"))
    saved.setdefault("data", {})
    for old, new in MOVED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        if old_key in saved.get(old_section, {}):
            saved.setdefault(new_section, {}).setdefault(new_key, saved[old_section].pop(old_key))
    return saved


def _get_path(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def setup(config: PretrainConfig, dist: DistContext) -> tuple[TrainState, RunContext, Path | None]:
    """Build everything a run needs; returns the step folder it was restored from, if any."""
    if config.data_paths is None:
        raise ConfigError(f"data_paths is not set; pass data_paths=\"[path/to/dataset]\" (a folder built by "
                          f"dataset/build_*_dataset.py for arch={config.arch.get('name')})")
    plugin = get_arch(str(config.arch.get("name")))
    arch_config = validate(plugin.config_class, config.arch, prefix="arch.")
    data_kind = get_data_kind(plugin.data_kind)
    data_options = validate(data_kind.options_class, config.data, prefix="data.")
    layout = BatchLayout.of(config.global_batch_size, dist.rank, dist.world_size, config.micro_batch_size)
    project, run_name, run_dir, step_dir = resolve_run(config, arch_config.name)
    config = resolved_data_paths(config, data_kind)
    metadata = data_kind.load_metadata(config.data_paths)
    arch_config, model = build_model(config, plugin, arch_config, metadata, dist)
    stream = data_kind.train_stream(config.data_paths, data_options, config.seed, layout)
    state = new_train_state(config, plugin, model, stream, *run_length(config, stream))
    eval_paths = config.data_paths_test or config.data_paths
    evaluator_specs = data_kind.default_evaluators(eval_paths) if config.evaluators is None else config.evaluators
    ctx = RunContext(config=config, arch_config=arch_config, plugin=plugin, data_kind=data_kind,
                     data_options=data_options, dist=dist, layout=layout,
                     schedule=LRSchedule.of(config.schedule_settings, state.total_steps), run_dir=run_dir,
                     project_name=project, run_name=run_name, metadata=metadata, eval_paths=eval_paths,
                     evaluators=build_evaluators(evaluator_specs, eval_paths))
    if step_dir is not None:
        restore_train_state(state, ctx, step_dir)
    elif config.continue_from:
        continued = continue_from(state, ctx, config.continue_from)
        if dist.is_main:
            print(f"continued from {continued}: weights and optimizer state; step, schedule and data position "
                  "start afresh", flush=True)
    wrap_forward(state, config, dist)
    return state, ctx, step_dir


def resolved_data_paths(config: PretrainConfig, data_kind: DataKind) -> PretrainConfig:
    """`config` with `data_paths` and `data_paths_test` naming dataset folders (a folder of
    parts or a glob expanded by the data kind), as the run and its checkpoints record them."""
    update = {"data_paths": data_kind.resolve_paths(config.data_paths)}
    if config.data_paths_test:
        update["data_paths_test"] = data_kind.resolve_paths(config.data_paths_test)
    return config.model_copy(update=update)


def run_length(config: PretrainConfig, stream: TrainStream) -> tuple[int, float]:
    """(optimiser steps of the whole run, steps per epoch): `total_steps` when set, else
    `epochs` passes over `stream`."""
    steps_per_epoch = stream.examples_per_epoch / config.global_batch_size
    return config.total_steps or max(1, int(config.epochs * steps_per_epoch)), steps_per_epoch


def new_train_state(config: PretrainConfig, plugin: ArchPlugin, model: TrainModule, stream: TrainStream | None,
                    total_steps: int, steps_per_epoch: float) -> TrainState:
    """Step 0 of a run: the optimisers over the plugin's parameter groups, EMA, the stream."""
    groups = plugin.param_groups(model, config.weight_decay)
    optimizer, sparse_optimizer = build_optimizers(groups, config.optimizer_settings)
    return TrainState(
        model=model, forward=model, optimizer=optimizer, sparse_optimizer=sparse_optimizer,
        ema=EMA(model, config.ema_rate) if config.ema else None, stream=stream,
        stream_state=stream.state_dict() if stream is not None else {},
        step=0, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
    )


def build_model(config: PretrainConfig, plugin: ArchPlugin, arch_config, metadata, dist: DistContext):
    """(arch config, model on its device): sized and initialised from `+init_from_hf` or
    `+init_from` when given, with a banner line saying what was loaded."""
    if config.init_from_hf:
        arch_config = _hf_sized_config(config, plugin, arch_config, metadata)
    start = starting_point(config.init_from, plugin, arch_config, metadata) if config.init_from else None
    arch_config = start.arch_config if start else arch_config
    torch.manual_seed(config.seed)
    model = plugin.build(arch_config, metadata).to(dist.device)
    banner = None
    if config.init_from_hf:
        report = plugin.hf_load(model, config.init_from_hf)
        banner = (f"initialised from {config.init_from_hf}: {len(report.loaded)} tensors loaded; "
                  f"freshly initialised: {', '.join(report.missing) or 'none'}; "
                  f"ignored: {', '.join(report.unused) or 'none'}")
    if start is not None:
        banner = start.load(model).banner()
    if banner and dist.is_main:
        print(banner, flush=True)
    return arch_config, model


def wrap_forward(state: TrainState, config: PretrainConfig, dist: DistContext) -> None:
    """Set what the loop calls: DDP over several training processes, then `torch.compile`
    (compilation last, so checkpoints keep the plain module's state-dict names)."""
    forward = state.model
    if dist.world_size > 1 and not config.eval_only and state.optimizer is not None:
        forward = distributed.wrap_ddp(state.model, dist)
        state.no_sync = forward.no_sync
    if compiles(config, dist.device):
        forward = torch.compile(forward)
    state.forward = forward


def compiles(config: PretrainConfig, device: torch.device) -> bool:
    """Whether the training forward is compiled (`compile`: auto on GPUs, true, false)."""
    return config.compile is True or (config.compile == "auto" and device.type == "cuda")


def _hf_sized_config(config: PretrainConfig, plugin, arch_config, metadata):
    """The arch config sized like the `+init_from_hf` model, checked against the dataset."""
    if plugin.hf_config is None:
        raise ConfigError(f"+init_from_hf is not supported for arch {arch_config.name}; remove it")
    arch_config = plugin.hf_config(config.init_from_hf, arch_config)
    hf_vocab = getattr(arch_config, "vocab_size", None)
    if hf_vocab is not None and hf_vocab != metadata.vocab_size:
        raise ConfigError(
            f"the dataset's vocabulary has {metadata.vocab_size} tokens but the model in {config.init_from_hf} "
            f"has {hf_vocab}; rebuild the dataset with --tokenizer {config.init_from_hf}"
        )
    return arch_config


def prepare_run_dir(ctx: RunContext) -> None:
    """Create the run folder and write its config snapshot `config.json` and what it runs on,
    `environment.json` (rank 0 of a training run; an `eval_only` run leaves the training
    run's files alone)."""
    if ctx.dist.is_main and not ctx.config.eval_only:
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(ctx.run_dir / "config.json", ctx.resolved_config())
        ctx.environment = run_environment(ctx.dist.device, ctx.dist.world_size)
        write_json(ctx.run_dir / "environment.json", ctx.environment)


def open_metrics_logger(state: TrainState, ctx: RunContext) -> None:
    """Set `ctx.logger` to the run folder's metrics logger (rank 0 of a training run; the
    folder exists: `prepare_run_dir`)."""
    if ctx.dist.is_main and not ctx.config.eval_only:
        # Records an interrupted run logged after its last checkpoint are logged again from here.
        logging = ctx.config.logging
        ctx.logger = MetricsLogger(ctx.run_dir, logging.wandb, ctx.project_name, ctx.run_name,
                                   {**ctx.resolved_config(), "environment": ctx.environment}, state.step)


def print_banner(state: TrainState, ctx: RunContext, restored_from: Path | None) -> str | None:
    """Say what runs (rank 0): the run or the evaluated step, its size, length, batch layout
    and environment. Returns a training run's banner, for `MetricsLogger.save_banner`."""
    if not ctx.dist.is_main:
        return None
    parameters = sum(param.numel() for param in state.model.parameters())
    layout = ctx.layout
    where = (f"device {ctx.dist.device}, {layout.world_size} process(es), global batch {layout.global_batch_size} "
             f"= {layout.world_size} x {layout.accumulation_steps} micro-batch(es) of {layout.micro_batch_size}")
    if ctx.config.eval_only:
        print(f"evaluating step {state.step} of run {ctx.project_name}/{ctx.run_name} ({restored_from}) on "
              f"{', '.join(ctx.eval_paths)}: {parameters / 1e6:.2f}M parameters, {where}", flush=True)
        return None
    last_step = state.last_step(ctx.config.max_steps)
    steps = f"{last_step} steps" + (f" (max_steps; the schedule spans {state.total_steps})"
                                    if last_step < state.total_steps else "")
    banner = [f"run {ctx.project_name}/{ctx.run_name} in {ctx.run_dir}: {parameters / 1e6:.2f}M parameters, {steps}, "
              f"{state.steps_per_epoch:.3f} steps per epoch, {where}", describe_environment(ctx.environment)]
    if restored_from is not None:
        banner.append(f"resumed from {restored_from.name} of {ctx.run_dir} (step {state.step})")
    print("\n".join(banner), flush=True)
    return "\n".join(banner)
