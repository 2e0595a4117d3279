"""What the Adam-family optimisers (`training.optim.AdamAtan2`, `training.lamb.Lamb`) share:
the step over each parameter group, and Adam's bias-corrected moments computed with
multi-tensor (`_foreach`) kernels."""

from __future__ import annotations

import torch


class GroupwiseOptimizer(torch.optim.Optimizer):
    """An optimiser whose `step` hands each group's parameters that have a gradient to `_update`."""

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            if params:
                self._update(params, group)
        return None

    def _update(self, params: list[torch.Tensor], group: dict) -> None:
        raise NotImplementedError


def adam_moments(optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
                 betas: tuple[float, float]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Advance Adam's moments of `params` (one group; state made on first use) by their
    gradients; returns new tensors (m / (1 - beta1^t), sqrt(v / (1 - beta2^t))).

    A handful of kernel launches per group; the step counters stay on the CPU, so the bias
    corrections cost no device sync.
    """
    beta1, beta2 = betas
    for param in params:
        if not optimizer.state[param]:
            optimizer.state[param] = {"step": torch.zeros((), dtype=torch.float32),
                                      "exp_avg": torch.zeros_like(param), "exp_avg_sq": torch.zeros_like(param)}
    states = [optimizer.state[param] for param in params]
    grads = [param.grad for param in params]
    exp_avgs = [state["exp_avg"] for state in states]
    exp_avg_sqs = [state["exp_avg_sq"] for state in states]
    steps = [state["step"] for state in states]
    torch._foreach_add_(steps, 1.0)
    step_values = [step.item() for step in steps]  # CPU tensors: no device sync
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    m_hat = torch._foreach_div(exp_avgs, [1 - beta1**step for step in step_values])
    v_hat = torch._foreach_div(exp_avg_sqs, [1 - beta2**step for step in step_values])
    torch._foreach_sqrt_(v_hat)
    return m_hat, v_hat
