"""Turn a validated config into a ready-to-train `TrainState` and `RunContext`.

The order is fixed: find the arch plugin and its data kind, resolve the run folder,
build the model on its device, optionally initialise from Hugging Face, build optimisers,
EMA and the data stream, restore a checkpoint, then compile. Compilation comes last so
that checkpoints always hold the plain module's state-dict names.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from core.batching import local_batch_size
from core.errors import ConfigError
from core.files import write_json
from dataset.kinds import get_data_kind
from evaluators.registry import build_evaluators
from models.registry import get_arch
from training import distributed
from training.checkpoint import find_latest, resolve_checkpoint, restore
from training.config import MOVED_KEYS, PretrainConfig, validate
from training.distributed import DistContext
from training.ema import EMA
from training.environment import describe_environment, run_environment
from training.init_from import starting_point
from training.metrics import MetricsLogger
from training.optim import build_optimizers
from training.state import RunContext, TrainState


def resolve_run(config: PretrainConfig, arch_name: str) -> tuple[str, str, Path, Path | None]:
    """(project name, run name, run folder, checkpoint to load) with the documented defaults.

    Resuming from a checkpoint folder continues in that checkpoint's run folder unless
    `+checkpoint_path` says otherwise. A run folder belongs to one run: starting a new run
    in a folder that already holds one is refused, unless `resume=auto` resumes it.
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
    if checkpoint is None and not config.eval_only and _holds_a_run(run_dir):
        checkpoint = find_latest(run_dir)
        if config.resume != "auto":
            found = f"checkpoint {checkpoint.name}" if checkpoint else "metrics.jsonl"
            raise ConfigError(
                f"run folder {run_dir} already holds a run ({found}); resume it with +load_checkpoint={run_dir} "
                "(or resume=auto), or start a new run with another +run_name"
            )
    return project, run_name, run_dir, checkpoint


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
    checkpoint = resolve_checkpoint(config.load_checkpoint, None)
    saved = _read_saved_config(checkpoint)
    # The weights come from the checkpoint, whose arch section is already sized: no starting point.
    merged = {**saved, "eval_only": True, "load_checkpoint": config.load_checkpoint, "resume": None,
              "init_from": None, "init_from_hf": None}
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "arch":
            chosen, trained = composed["arch"].get("name"), saved["arch"].get("name")
            if chosen != trained:
                raise ConfigError(f"checkpoint {checkpoint} was written by arch={trained}; drop arch= or pass "
                                  f"arch={trained}")
            continue
        if key in ("eval_only", "load_checkpoint"):
            continue
        _set_path(merged, key, _get_path(composed, key))
    return validate(PretrainConfig, merged)


def _read_saved_config(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's `config.json`, with the keys that later moved to the `data:` section moved."""
    saved = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
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
    """Build everything a run needs; returns the checkpoint it was restored from, if any."""
    if config.data_paths is None:
        raise ConfigError(f"data_paths is not set; pass data_paths=\"[path/to/dataset]\" (a folder built by "
                          f"dataset/build_*_dataset.py for arch={config.arch.get('name')})")
    plugin = get_arch(str(config.arch.get("name")))
    arch_config = validate(plugin.config_class, config.arch, prefix="arch.")
    data_kind = get_data_kind(plugin.data_kind)
    data_options = validate(data_kind.options_class, config.data, prefix="data.")
    micro_batch_size = _micro_batch_size(config, dist)
    project, run_name, run_dir, checkpoint_path = resolve_run(config, arch_config.name)
    metadata = data_kind.load_metadata(config.data_paths)
    arch_config, model = _build_model(config, plugin, arch_config, metadata, dist)
    optimizer, sparse_optimizer = build_optimizers(
        plugin.param_groups(model, config.weight_decay), config.optimizer, config.lr, (config.beta1, config.beta2),
        config.freeze_weights, config.puzzle_emb_lr, config.puzzle_emb_weight_decay,
    )
    stream = data_kind.train_stream(config.data_paths, data_options, config.seed, config.global_batch_size,
                                    dist.rank, dist.world_size)
    steps_per_epoch = stream.examples_per_epoch / config.global_batch_size
    total_steps = max(1, int(config.epochs * steps_per_epoch))
    if config.lr_warmup_ratio is not None:  # a fraction of the whole run, known only now
        config = config.model_copy(update={"lr_warmup_steps": round(config.lr_warmup_ratio * total_steps)})
    state = TrainState(
        model=model, forward=model, optimizer=optimizer, sparse_optimizer=sparse_optimizer,
        ema=EMA(model, config.ema_rate) if config.ema else None, stream=stream, stream_state=stream.state_dict(),
        step=0, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
    )
    eval_paths = config.data_paths_test or config.data_paths
    evaluator_specs = data_kind.default_evaluators(eval_paths) if config.evaluators is None else config.evaluators
    ctx = RunContext(config=config, arch_config=arch_config, plugin=plugin, data_kind=data_kind,
                     data_options=data_options, dist=dist, run_dir=run_dir, project_name=project, run_name=run_name,
                     metadata=metadata, eval_paths=eval_paths, evaluators=build_evaluators(evaluator_specs, eval_paths),
                     micro_batch_size=micro_batch_size)
    if checkpoint_path is not None:
        restore(state, ctx, checkpoint_path)
    _wrap_forward(state, config, dist)
    return state, ctx, checkpoint_path


def _build_model(config: PretrainConfig, plugin, arch_config, metadata, dist: DistContext):
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


def _wrap_forward(state: TrainState, config: PretrainConfig, dist: DistContext) -> None:
    """What the loop calls: DDP over several training processes, then `torch.compile`
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


def _micro_batch_size(config: PretrainConfig, dist: DistContext) -> int:
    """Rows per forward on this process; refuses sizes that do not split the batch."""
    local = local_batch_size(config.global_batch_size, dist.world_size)
    micro = config.micro_batch_size or local
    if local % micro:
        raise ConfigError(
            f"micro_batch_size ({micro}) must divide each process's share of global_batch_size "
            f"({config.global_batch_size} / {dist.world_size} processes = {local}); pick a divisor of {local}"
        )
    return micro


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


def open_logger(state: TrainState, ctx: RunContext, restored_from: Path | None) -> None:
    """Create the run folder, its config snapshot and the metrics logger, and print the
    banner (rank 0 only). An `eval_only` run leaves the training run's files alone."""
    if not ctx.dist.is_main:
        return
    parameters = sum(param.numel() for param in state.model.parameters())
    local = local_batch_size(ctx.config.global_batch_size, ctx.dist.world_size)
    where = (f"device {ctx.dist.device}, {ctx.dist.world_size} process(es), global batch {ctx.config.global_batch_size} "
             f"= {ctx.dist.world_size} x {local // ctx.micro_batch_size} micro-batch(es) of {ctx.micro_batch_size}")
    if ctx.config.eval_only:
        print(f"evaluating step {state.step} of run {ctx.project_name}/{ctx.run_name} ({restored_from}) on "
              f"{', '.join(ctx.eval_paths)}: {parameters / 1e6:.2f}M parameters, {where}", flush=True)
        return
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    snapshot = ctx.resolved_config()
    write_json(ctx.run_dir / "config.json", snapshot)
    environment = run_environment(ctx.dist.device, ctx.dist.world_size)
    write_json(ctx.run_dir / "environment.json", environment)
    # Records an interrupted run logged after its last checkpoint are logged again from here.
    ctx.logger = MetricsLogger(ctx.run_dir, ctx.config.wandb, ctx.project_name, ctx.run_name,
                               {**snapshot, "environment": environment}, state.step)
    last_step = state.last_step(ctx.config.max_steps)
    steps = f"{last_step} steps" + (f" (max_steps; the schedule spans {state.total_steps})"
                                    if last_step < state.total_steps else "")
    banner = [f"run {ctx.project_name}/{ctx.run_name} in {ctx.run_dir}: {parameters / 1e6:.2f}M parameters, {steps}, "
              f"{state.steps_per_epoch:.3f} steps per epoch, {where}", describe_environment(environment)]
    if restored_from is not None:
        banner.append(f"resumed from {restored_from.name} of {ctx.run_dir} (step {state.step})")
    print("\n".join(banner), flush=True)
    ctx.logger.save_banner("\n".join(banner))
