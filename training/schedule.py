"""The learning-rate schedule: the one place that says the learning rate of an update.

Linear warm-up, then a decay of the chosen shape to a floor (`lr_min_ratio`); every
optimiser of a run follows the same curve, scaled by its own base rate (the weights'
`lr`, TRM's puzzle embeddings' `puzzle_emb_lr`). A new decay shape is one entry in
`SHAPES` (then `lr_schedule=<name>` selects it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

SHAPES: dict[str, Callable[[float], float]] = {
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "linear": lambda progress: 1.0 - progress,
}
"""Decay shapes by `lr_schedule` name: progress in [0, 1] -> factor from 1 down to 0."""
SHORT_RUN_SHARE = 0.1
"""A run that stops before this share of its decaying schedule is warned at start."""


def learning_rate(
    step: int, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float, schedule: str = "cosine"
) -> float:
    """Learning rate of the `step`-th optimiser update (1-based, as in TRM's code).

    Linear warmup: update k < `warmup_steps` gets `base_lr * k / warmup_steps`, so update 1
    already moves the weights; then decay from `base_lr` (at update `warmup_steps`) to
    `base_lr * min_ratio` at `total_steps`, shaped by `SHAPES[schedule]`.
    """
    if step < warmup_steps:
        return base_lr * step / max(1, warmup_steps)
    if schedule not in SHAPES:
        raise ValueError(f"unknown lr_schedule {schedule!r}: use {' or '.join(SHAPES)}")
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * (min_ratio + (1.0 - min_ratio) * SHAPES[schedule](progress))


@dataclass(frozen=True)
class LRSchedule:
    """A run's schedule: `lr(update, optimizer)` for every optimiser it drives."""

    base_lrs: dict[str, float]
    """Optimiser name (`weights`, `sparse`) -> its rate at the end of warm-up."""
    warmup_steps: int
    total_steps: int
    min_ratio: float
    shape: str

    @classmethod
    def of(cls, settings: ScheduleSettings, total_steps: int) -> LRSchedule:
        """The schedule of a run of `total_steps` updates (a warm-up ratio resolved to steps)."""
        warmup = settings.warmup_steps
        if settings.warmup_ratio is not None:  # a fraction of the whole run, known only now
            warmup = round(settings.warmup_ratio * total_steps)
        return cls(dict(settings.base_lrs), warmup, total_steps, settings.min_ratio, settings.shape)

    def lr(self, update: int, optimizer: str = "weights") -> float:
        """The learning rate of `optimizer` for the `update`-th update (1-based)."""
        # The curve's factor first, then the base rate: the product TRM's code computes.
        factor = learning_rate(update, 1.0, self.warmup_steps, self.total_steps, self.min_ratio, self.shape)
        return self.base_lrs[optimizer] * factor

    def peak_lr(self, last_step: int, optimizer: str = "weights") -> float:
        """The highest rate of `optimizer` over updates 1..`last_step`: the end of warm-up,
        or the last update when the run stops inside it (the decay never rises again)."""
        return self.lr(max(1, min(last_step, self.warmup_steps)), optimizer)

    def describe(self, last_step: int) -> str:
        """One banner line: the planned curve, then what a run stopping at `last_step` reaches."""
        base = self.base_lrs["weights"]
        decay = ("constant after it" if self.min_ratio == 1.0 else
                 f"{self.shape} decay to {base * self.min_ratio:.3g} at step {self.total_steps}")
        return (f"learning rate: {self.warmup_steps} warm-up steps to lr={base:.3g}, {decay}; this run "
                f"peaks at {self.peak_lr(last_step):.3g} and ends at {self.lr(last_step):.3g} (step {last_step})")

    def short_run_problem(self, last_step: int) -> str | None:
        """Why a run stopping at `last_step` does not follow its schedule (None when it does):
        it stops inside warm-up, or before `SHORT_RUN_SHARE` of a decaying schedule."""
        base = self.base_lrs["weights"]
        if last_step < self.warmup_steps:
            peak = self.peak_lr(last_step)
            return (f"stops at step {last_step}, inside the {self.warmup_steps}-step warm-up: its learning rate "
                    f"peaks at {peak:.3g}, {peak / base:.1%} of lr={base:.3g}")
        if self.min_ratio < 1.0 and last_step < SHORT_RUN_SHARE * self.total_steps:
            return (f"stops at step {last_step}, {last_step / self.total_steps:.1%} of the {self.total_steps}-step "
                    f"schedule: its learning rate never decays (it ends at {self.lr(last_step):.3g})")
        return None


@dataclass(frozen=True)
class ScheduleSettings:
    """The run config's schedule keys (`lr`, `puzzle_emb_lr`, `lr_warmup_*`, `lr_min_ratio`, `lr_schedule`)."""

    base_lrs: dict[str, float]
    warmup_steps: int
    warmup_ratio: float | None
    min_ratio: float
    shape: str
