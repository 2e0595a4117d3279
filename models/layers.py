"""Small layers shared by the models: initialisation, RMS norm, rotary positions,
attention, SwiGLU and the sparse puzzle-embedding table.

Every layer is device- and dtype-agnostic: mixed precision is applied from outside with
`torch.autocast`, so the code here never casts to a compute dtype itself (apart from the
few places that must run in float32 for accuracy, which say so).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TRUNCATION_BOUND = 2.0
"""Truncated-normal samples are cut at +-2 (corrected) standard deviations."""


def _truncated_std_factor(bound: float) -> float:
    """Standard deviation of a standard normal truncated to [-bound, bound]."""
    density = math.exp(-0.5 * bound * bound) / math.sqrt(2 * math.pi)
    mass = math.erf(bound / math.sqrt(2))
    return math.sqrt(1 - 2 * bound * density / mass)


def trunc_normal_init_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """Fill `tensor` in place from a zero-mean normal truncated at +-2 sigma.

    Cutting the tails shrinks the spread (to 0.88 sigma at 2 sigma), so sigma is enlarged
    first: the samples then have exactly the requested `std`.
    """
    if std == 0:
        return tensor.zero_()
    sigma = std / _truncated_std_factor(TRUNCATION_BOUND)
    bound = TRUNCATION_BOUND * sigma
    with torch.no_grad():
        return nn.init.trunc_normal_(tensor, mean=0.0, std=sigma, a=-bound, b=bound)


def lecun_linear(in_features: int, out_features: int, bias: bool = False) -> nn.Linear:
    """An `nn.Linear` with truncated LeCun-normal weights (std 1/sqrt(fan_in)), zero bias."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    trunc_normal_init_(layer.weight, std=1.0 / math.sqrt(in_features))
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS normalisation over the last axis, without a learnable scale.

    Computed in float32 (bfloat16 squares lose too much), returned in the input dtype.
    """
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.square().mean(dim=-1, keepdim=True) + eps)
    return x32.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE) for `max_positions` positions of `head_dim`.

    Uses the "rotate half" convention: channel i is paired with channel i + head_dim/2.
    cos/sin tables are derived values, so they are not saved in checkpoints.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head dimension, got {head_dim}")
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)  # (T, Dh/2)
        angles = torch.cat((angles, angles), dim=-1)  # (T, Dh)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=-1)
        return torch.cat((-second, first), dim=-1)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate queries and keys shaped (B, H, T, Dh) by their positions 0..T-1."""
        length = q.shape[-2]
        cos, sin = self.cos[:length], self.sin[:length]  # (T, Dh)
        q_rotated = q * cos + self._rotate_half(q) * sin
        k_rotated = k * cos + self._rotate_half(k) * sin
        # The float32 tables would otherwise promote bfloat16 q/k under autocast.
        return q_rotated.to(q.dtype), k_rotated.to(k.dtype)


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with a fused QKV projection, no biases."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv_proj = lecun_linear(hidden_size, 3 * hidden_size)
        self.o_proj = lecun_linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, rotary: RotaryEmbedding | None = None) -> torch.Tensor:
        """Attend over all positions of x (B, T, D); apply `rotary` to q and k if given."""
        batch, length, hidden = x.shape
        qkv = self.qkv_proj(x).view(batch, length, 3, self.num_heads, self.head_dim)  # (B, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, Dh)
        if rotary is not None:
            q, k = rotary(q, k)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=False)  # (B, H, T, Dh)
        out = out.transpose(1, 2).reshape(batch, length, hidden)  # (B, T, D)
        return self.o_proj(out)


def swiglu_inner_size(hidden_size: int, expansion: float) -> int:
    """Inner width of `SwiGLU`: expansion * hidden * 2/3, rounded up to a multiple of 256.

    The product is first rounded to the nearest integer (as TRM does), which also keeps
    float error such as 256.00000001 from jumping to the next multiple.
    """
    width = round(expansion * hidden_size * 2 / 3)
    return -(-width // 256) * 256


class SwiGLU(nn.Module):
    """Gated feed-forward block silu(x W_gate) * (x W_up) W_down, fused gate/up, no biases."""

    def __init__(self, hidden_size: int, expansion: float):
        super().__init__()
        inner = swiglu_inner_size(hidden_size, expansion)
        self.gate_up_proj = lecun_linear(hidden_size, 2 * inner)
        self.down_proj = lecun_linear(inner, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block over the last axis of x (..., D)."""
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # each (..., inner)
        return self.down_proj(F.silu(gate) * up)


class SparsePuzzleEmbedding(nn.Module):
    """A table of one vector per puzzle, trained by the loop's sparse sign-SGD.

    The table is a persistent buffer, not a parameter, so Adam, weight decay groups and
    the EMA never see it. In training mode `forward` hands out a detached copy of the
    rows it uses as a leaf tensor and records (ids, rows) in `uses`: autograd fills each
    `rows.grad`, and the loop updates `weight[ids]` from all the uses of a step (several
    with gradient accumulation). Duplicate ids get separate rows; the loop sums them.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim))
        self.uses: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of the table for `ids` (B,) -> (B, dim)."""
        if not self.training:
            return self.weight[ids]
        rows = self.weight[ids].detach().clone().requires_grad_(True)
        self.uses.append((ids, rows))
        return rows

    @property
    def last_ids(self) -> torch.Tensor | None:
        """The ids of the latest training forward since `clear_uses`."""
        return self.uses[-1][0] if self.uses else None

    @property
    def last_rows(self) -> torch.Tensor | None:
        """The leaf rows of the latest training forward since `clear_uses`."""
        return self.uses[-1][1] if self.uses else None

    def used_rows(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(ids, row gradients) of every use since `clear_uses` that got a gradient, or None."""
        graded = [(ids, rows.grad) for ids, rows in self.uses if rows.grad is not None]
        if not graded:
            return None
        return torch.cat([ids for ids, _ in graded]), torch.cat([grad for _, grad in graded])

    def gradients_finite(self) -> torch.Tensor:
        """bool (): whether every row gradient recorded since `clear_uses` is finite."""
        checks = [torch.isfinite(rows.grad).all() for _, rows in self.uses if rows.grad is not None]
        return torch.stack(checks).all() if checks else torch.ones((), dtype=torch.bool)

    def clear_uses(self) -> None:
        """Forget the recorded rows (their gradients go with them)."""
        self.uses = []
