"""Train TRM or BERT: one loop, chosen with `arch=`.

    python pretrain.py arch=trm data_paths="[data/sudoku-gen]" epochs=2000 eval_interval=1000
    python pretrain.py arch=bert data_paths="[data/sample-mlm]" global_batch_size=32 lr=1e-4 +run_name=demo
    torchrun --nproc-per-node 4 pretrain.py arch=bert data_paths="[data/wiki-mlm]" global_batch_size=256
    python pretrain.py arch=trm data_paths="[data/sudoku-gen]" +load_checkpoint=checkpoints/P/R   # resume
    python pretrain.py arch=trm data_paths="[...]" eval_only=true +load_checkpoint=checkpoints/P/R/step_N

Hydra composes `config/cfg_pretrain.yaml` with `config/arch/<arch>.yaml`; everything
after that is typed (`training.config.PretrainConfig`). Mistakes in the config or the data
end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import os
import sys

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from core.errors import UserError, print_error
from training import distributed
from training.build import eval_only_config, open_metrics_logger, prepare_run_dir, print_banner, setup
from training.config import PretrainConfig, check_overrides, validate
from training.loop import evaluate, fit, record_evaluation
from training.metrics import check_wandb_login
from training.signals import StopRequest, tolerate_lost_output


def launch(raw_config: dict, overrides: list[str] = ()) -> int:
    """Validate, join the process group, build, then train or evaluate; return the exit status.

    `overrides` are the command line's `key=value` strings: an `eval_only` run takes its
    settings from the checkpoint and only these on top. A training run stopped by a signal
    saves and returns 0; an `eval_only` run stopped by one records nothing and returns
    128 + the signal's number.
    """
    status = 0
    tolerate_lost_output()
    config = validate(PretrainConfig, raw_config)
    if config.eval_only:
        config = eval_only_config(config, raw_config, list(overrides))
    else:
        check_wandb_login(config.wandb)
    dist = distributed.init_distributed(config.device)
    if dist.device.type == "cpu":
        threads, why = distributed.choose_cpu_threads(config.cpu_threads)
        torch.set_num_threads(threads)
        if dist.is_main:
            print(f"cpu threads: {threads} ({why})", flush=True)
    try:
        state, ctx, restored_from = setup(config, dist)
        prepare_run_dir(ctx)
        open_metrics_logger(state, ctx)
        banner = print_banner(state, ctx, restored_from)
        if ctx.logger is not None and banner:
            ctx.logger.save_banner(banner)
        if config.eval_only:
            with StopRequest() as stop:
                metrics = evaluate(state, ctx, stop)
            if metrics is None:
                status = stop.exit_status
            elif ctx.dist.is_main:
                record_evaluation(ctx, state.step, restored_from, metrics)
        else:
            fit(state, ctx)
        if ctx.logger is not None:
            ctx.logger.close()
        distributed.barrier()  # leave together: a rank that tears down gloo early can abort
    finally:
        distributed.destroy()
    return status


def exit_with_error(error: UserError) -> None:
    """Print `error` as one line (rank 0 only) and exit with status 2."""
    if os.environ.get("RANK", "0") == "0":
        print_error(error)
    sys.exit(2)


@hydra.main(config_path="config", config_name="cfg_pretrain", version_base=None)
def main(hydra_config: DictConfig) -> None:
    """Hydra entry point: hand the composed config over as a plain dict."""
    raw_config = OmegaConf.to_container(hydra_config, resolve=True)
    try:
        status = launch(raw_config, [argument for argument in sys.argv[1:] if not argument.startswith("-")])
    except UserError as error:
        exit_with_error(error)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    # Hydra's own flags (--help, --cfg, -m ...) go to Hydra untouched; plain overrides are
    # composed once beforehand so that a mistake in them reads like every other one.
    if not any(argument.startswith("-") for argument in sys.argv[1:]):
        try:
            check_overrides(sys.argv[1:])
        except UserError as error:
            exit_with_error(error)
    main()
