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
from omegaconf import DictConfig, OmegaConf

from core.errors import UserError, print_error
from training import distributed
from training.build import open_logger, setup
from training.config import PretrainConfig, check_overrides, validate
from training.loop import evaluate, fit


def launch(raw_config: dict) -> None:
    """Validate, join the process group, build, then train or evaluate."""
    config = validate(PretrainConfig, raw_config)
    dist = distributed.init_distributed(config.device)
    try:
        state, ctx, _ = setup(config, dist)
        open_logger(state, ctx)
        if config.eval_only:
            metrics = evaluate(state, ctx)
            if ctx.logger is not None:
                ctx.logger.log(state.step, metrics)
                for name, value in sorted(metrics.items()):
                    print(f"{name}: {value:.6f}")
        else:
            fit(state, ctx)
        if ctx.logger is not None:
            ctx.logger.close()
    finally:
        distributed.destroy()


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
        launch(raw_config)
    except UserError as error:
        exit_with_error(error)


if __name__ == "__main__":
    # Hydra's own flags (--help, --cfg, -m ...) go to Hydra untouched; plain overrides are
    # composed once beforehand so that a mistake in them reads like every other one.
    if not any(argument.startswith("-") for argument in sys.argv[1:]):
        try:
            check_overrides(sys.argv[1:])
        except UserError as error:
            exit_with_error(error)
    main()
