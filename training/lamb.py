"""LAMB: Adam moments scaled per tensor by a trust ratio, for batches of tens of thousands.

You, Li, Reddi, Hseu, Kumar, Bhojanapalli, Song, Demmel, Keutzer, Hsieh. *Large Batch
Optimization for Deep Learning: Training BERT in 76 minutes*. arXiv:1904.00962 (ICLR
2020), Algorithm 2, in the variant NVIDIA trains BERT with (DeepLearningExamples,
PyTorch/LanguageModeling/BERT: apex's `FusedLAMB`, `use_nvlamb=False`,
`adam_w_mode=True`). Per parameter tensor p with gradient g at step t:

    m = beta1 * m + (1 - beta1) * g                   v = beta2 * v + (1 - beta2) * g^2
    r = (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * p
    trust = ||p|| / ||r||      (1 when either norm is 0, and for excluded tensors)
    p = p - lr * trust * r

The choices, each as NVIDIA makes them:
- bias correction of both moments (the paper's Algorithm 2 has it; `bias_correction=True`);
- weight decay is decoupled (AdamW-style) but inside the update whose norm the trust ratio
  divides by, so the decay is scaled by the trust ratio too; it comes from the parameter
  group (BERT's groups: 0.01 on matrices and embeddings, 0 on biases and LayerNorms);
- the trust ratio is ||w|| / ||update|| with the identity as the paper's scaling function
  phi (no clipping of ||w||), per tensor ("layer"), and 1 when ||w|| or ||update|| is 0;
- biases and LayerNorm weights (every tensor with fewer than 2 dimensions, the same tensors
  `models.interface.decay_groups` keeps out of weight decay) are excluded from the trust
  ratio as well: NVIDIA applies it only to tensors with weight decay;
- eps = 1e-6 and betas (0.9, 0.999) by default, as NVIDIA; gradient clipping to a global
  norm of 1 (apex's `max_grad_norm`) is the engine's `grad_clip_norm=1.0`, done before
  `step` on the whole gradient as apex does.

Written with multi-tensor (`_foreach`) torch ops, no device sync per step (the trust
ratios stay tensors) and nothing CUDA-only. The state per tensor is Adam's (`step`,
`exp_avg`, `exp_avg_sq`), so checkpoints and `+continue_from` treat it like AdamW's.
"""

from __future__ import annotations

import torch

from training.adam_moments import GroupwiseOptimizer, adam_moments


class Lamb(GroupwiseOptimizer):
    """LAMB as NVIDIA trains BERT with (see the module docstring for the formulas)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"invalid Lamb settings: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _update(self, params: list[torch.Tensor], group: dict) -> None:
        """One LAMB step for `params` of one group."""
        updates, denominators = adam_moments(self, params, group["betas"])
        torch._foreach_add_(denominators, group["eps"])
        torch._foreach_div_(updates, denominators)  # (m_hat / (sqrt(v_hat) + eps)), in m_hat's buffers
        if group["weight_decay"]:
            torch._foreach_add_(updates, params, alpha=group["weight_decay"])
        layers = [index for index, param in enumerate(params) if param.ndim >= 2]
        if layers:
            scaled = [updates[index] for index in layers]
            torch._foreach_mul_(scaled, trust_ratios([params[index] for index in layers], scaled))
        torch._foreach_add_(params, updates, alpha=-group["lr"])


def trust_ratios(params: list[torch.Tensor], updates: list[torch.Tensor]) -> list[torch.Tensor]:
    """||p|| / ||update|| per tensor, 1 where either norm is 0 (as 0-d tensors: no sync)."""
    param_norms = torch._foreach_norm(params)
    update_norms = torch._foreach_norm(updates)
    return [torch.where((p_norm > 0) & (u_norm > 0), p_norm / u_norm, torch.ones_like(p_norm))
            for p_norm, u_norm in zip(param_norms, update_norms)]

