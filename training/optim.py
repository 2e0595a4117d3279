"""Optimisers.

- `AdamAtan2`: Adam with the update m / (sqrt(v) + eps) replaced by atan2(m, sqrt(v))
  (no epsilon), as TRM trains with; pure PyTorch, so it runs on any device.
- `SparseSignSGD`: TRM's optimiser for the puzzle-embedding table: only the rows used in
  the batch move, by the sign of their gradient (duplicate ids summed, then over ranks).
- `OPTIMIZERS`: the weights optimisers by `optimizer=` name (a new one is one entry here):
  AdamW, Adam-atan2 and LAMB (`training.lamb.Lamb`).
- `build_optimizers`: the run's optimisers over the architecture's parameter groups.

The learning rate of each update is set from `training.schedule`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from models.interface import ParamGroups
from training.adam_moments import GroupwiseOptimizer, adam_moments
from training.lamb import Lamb


class AdamAtan2(GroupwiseOptimizer):
    """Adam-atan2 with decoupled weight decay.

    Per parameter p with gradient g at step t:
        m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2
        p = p * (1 - lr * weight_decay) - lr * atan2(m / (1 - beta1^t), sqrt(v / (1 - beta2^t)))
    """

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.0):
        if lr < 0 or weight_decay < 0 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"invalid AdamAtan2 settings: lr={lr}, betas={betas}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    def _update(self, params: list[torch.Tensor], group: dict) -> None:
        """One step for `params` of one group with multi-tensor (`_foreach`) kernels."""
        lr, weight_decay = group["lr"], group["weight_decay"]
        m_hat, v_hat = adam_moments(self, params, group["betas"])
        torch._foreach_mul_(params, 1 - lr * weight_decay)
        for m, v in zip(m_hat, v_hat):
            m.atan2_(v)  # no _foreach_atan2 in PyTorch; in place into m_hat's buffers
        torch._foreach_add_(params, m_hat, alpha=-lr)


class SparseSignSGD:
    """Sign-SGD on the rows of `SparsePuzzleEmbedding` tables that the last batch used.

    p[ids] <- p[ids] * (1 - lr * weight_decay) - lr * sign(sum of the rows' gradients),
    where the sum runs over duplicate ids in the batch and over all ranks.
    Stateless: nothing to checkpoint beyond the tables themselves.
    """

    def __init__(self, embeddings: list[nn.Module], lr: float, weight_decay: float):
        self.embeddings = embeddings
        self.lr = lr
        self.weight_decay = weight_decay

    @torch.no_grad()
    def step(self) -> None:
        """Apply the update for the rows each table recorded since the last step."""
        for embedding in self.embeddings:
            used = embedding.used_rows()
            if used is None:
                continue
            ids, grads = _gather_rows(*used)
            unique_ids, inverse = torch.unique(ids, return_inverse=True)
            summed = torch.zeros(len(unique_ids), grads.shape[1], dtype=grads.dtype, device=grads.device)
            summed.index_add_(0, inverse, grads)  # (U, D)
            table = embedding.weight
            updated = table[unique_ids] * (1 - self.lr * self.weight_decay) - self.lr * summed.sign().to(table.dtype)
            table[unique_ids] = updated
            embedding.clear_uses()

    def zero_grad(self) -> None:
        """Forget the rows of the last batch (their gradients go with them)."""
        for embedding in self.embeddings:
            embedding.clear_uses()


def _gather_rows(ids: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate every rank's (ids, row gradients); ranks hold equal-sized batches."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ids, grads
    world_size = dist.get_world_size()
    all_ids = [torch.empty_like(ids) for _ in range(world_size)]
    all_grads = [torch.empty_like(grads) for _ in range(world_size)]
    dist.all_gather(all_ids, ids.contiguous())
    dist.all_gather(all_grads, grads.contiguous())
    return torch.cat(all_ids), torch.cat(all_grads)


@dataclass(frozen=True)
class OptimizerSettings:
    """The run config's optimiser keys (`optimizer`, `lr`, `beta1`/`beta2`, `freeze_weights`,
    `puzzle_emb_lr`, `puzzle_emb_weight_decay`; `weight_decay` goes into the plugin's groups)."""

    name: str
    lr: float
    betas: tuple[float, float]
    freeze_weights: bool = False
    sparse_lr: float = 1e-2
    sparse_weight_decay: float = 0.1


def _adam_atan2(groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    return AdamAtan2(groups, lr=lr, betas=betas)


def _lamb(groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    return Lamb(groups, lr=lr, betas=betas)


def _adamw(groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    params = [param for group in groups for param in group["params"]]
    fused = bool(params) and params[0].device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


OPTIMIZERS: dict[str, Callable[[list[dict], float, tuple[float, float]], torch.optim.Optimizer]] = {
    "adam_atan2": _adam_atan2,
    "adamw": _adamw,
    "lamb": _lamb,
}
"""Weights optimisers by `optimizer=` name: (dense parameter groups, lr, betas) -> optimiser."""


def build_optimizers(groups: ParamGroups, settings: OptimizerSettings) -> tuple[torch.optim.Optimizer | None, SparseSignSGD | None]:
    """The weights optimiser over `groups.dense` (None when frozen) and the sparse one (if any tables)."""
    sparse = (SparseSignSGD(groups.sparse_tables, settings.sparse_lr, settings.sparse_weight_decay)
              if groups.sparse_tables else None)
    if settings.freeze_weights:
        for group in groups.dense:
            for param in group["params"]:
                param.requires_grad_(False)
        return None, sparse
    return OPTIMIZERS[settings.name](groups.dense, settings.lr, settings.betas), sparse
