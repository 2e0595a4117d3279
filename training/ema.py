"""Exponential moving average of a model's parameters (TRM's `ema=True`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """Keeps shadow = rate * shadow + (1 - rate) * param for every trainable parameter.

    Buffers (the puzzle-embedding table among them) are not averaged: evaluation with
    `swapped_in` uses the live buffers and the averaged parameters.
    """

    def __init__(self, model: nn.Module, rate: float):
        self.rate = rate
        self.names = [name for name, param in model.named_parameters() if param.requires_grad]
        parameters = dict(model.named_parameters())
        self.shadow = {name: parameters[name].detach().clone() for name in self.names}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow weights towards the model's current weights."""
        parameters = dict(model.named_parameters())
        shadow = [self.shadow[name] for name in self.names]
        current = [parameters[name].detach() for name in self.names]
        torch._foreach_lerp_(shadow, current, 1.0 - self.rate)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """Temporarily load the shadow weights into `model` (for evaluation or saving)."""
        parameters = dict(model.named_parameters())
        backup = {name: parameters[name].detach().clone() for name in self.names}
        with torch.no_grad():
            for name in self.names:
                parameters[name].copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name in self.names:
                    parameters[name].copy_(backup[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow weights by parameter name."""
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore shadow weights saved by `state_dict`."""
        missing = set(self.names) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}")
        for name in self.names:
            self.shadow[name].copy_(state[name])
