"""`+continue_from=`: start a new run from a checkpoint's weights and optimiser state.

BERT's second phase (NVIDIA's recipe: 7,038 LAMB steps at length 128, then 1,563 at
length 512) continues the first: the same weights and the same Adam/LAMB moments, on
another dataset built with the same tokenizer, under a new schedule. Unlike
`+load_checkpoint`, which resumes a run exactly where it stopped, this starts a new run:

    carried over     the weights, the optimiser state tensor by tensor (the moments and
                     their bias-correction counters), the EMA weights when both runs keep one
    started afresh   the step counter, hence the learning-rate schedule and its warm-up;
                     the data position (the new dataset from its start); the RNG (the run's
                     seed); the optimiser's settings (lr, betas, weight decay: this run's config)

The bias-correction counter belongs to the moments, so it continues with them; NVIDIA's
script resets it with its global step, which for the first phase-2 steps shrinks the Adam
direction against the weight decay (by ~0.3 at step 1). Refused with one line: another
architecture, another vocabulary (`vocab_sha256` of the two datasets), other parameter
shapes (sizes differ; BERT's position table must be `max_position_embeddings` 512 from
phase 1 on, as the presets set), or another optimiser (the moments would mean nothing).
"""

from __future__ import annotations

from pathlib import Path

from core.errors import UserError
from training.checkpoint import (
    load_ema_state,
    load_model_state,
    load_optimizer_states,
    read_checkpoint,
    resolve_checkpoint,
)
from training.init_from import check_vocabulary
from training.state import RunContext, TrainState


def continue_from(state: TrainState, ctx: RunContext, spec: str) -> Path:
    """Load the weights, optimiser state and EMA of the checkpoint `spec` names (a run folder,
    for its newest checkpoint, or a `step_N` folder) into a freshly built run; returns it.

    `state.step`, the stream position and the RNG are left as the new run set them.
    """
    step_dir = resolve_checkpoint(spec, None)
    checkpoint = read_checkpoint(step_dir)
    saved_arch = checkpoint.train_state.get("arch")
    if saved_arch != ctx.arch_config.name:
        raise UserError(f"+continue_from={spec}: {step_dir} was written by arch={saved_arch}, not "
                        f"arch={ctx.arch_config.name}; continue with arch={saved_arch}")
    check_vocabulary(step_dir, ctx.metadata, "+continue_from")
    saved_optimizer = checkpoint.config.get("optimizer")
    if state.optimizer is not None and saved_optimizer != ctx.config.optimizer:
        raise UserError(f"+continue_from={spec}: {step_dir} was trained with optimizer={saved_optimizer}, this run uses "
                        f"optimizer={ctx.config.optimizer}; use optimizer={saved_optimizer}, or +init_from={spec} "
                        "to take the weights only")
    load_model_state(state, ctx, checkpoint.model, step_dir)
    if state.optimizer is not None:
        settings = [{key: value for key, value in group.items() if key != "params"}
                    for group in state.optimizer.param_groups]
        try:
            load_optimizer_states(state, checkpoint.optimizers)
        except ValueError as error:  # torch: other parameter groups
            raise UserError(f"+continue_from={spec}: the optimiser state of {step_dir} does not fit this model "
                            f"({error}); use the arch.* settings of the run that wrote it") from None
        for group, fresh in zip(state.optimizer.param_groups, settings):
            group.update(fresh)  # this run's lr, betas and weight decay, not the checkpoint's
    load_ema_state(state, ctx, checkpoint.ema)
    return step_dir
