"""Per-token classification losses.

Both functions share one contract: logits (..., V) and integer labels (...) give a
per-token loss (...) that is 0 wherever the label equals `ignore_index`. Callers decide
how to normalise (per sequence, per token, per batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.constants import IGNORE_LABEL_ID


def _stablemax_scores(x: torch.Tensor) -> torch.Tensor:
    """s(x) = 1 / (1 - x) for x < 0 and x + 1 otherwise: positive, growing, linear tail."""
    # where() evaluates both branches; clamping keeps the unused one finite for autograd.
    return torch.where(x < 0, 1 / (1 - x.clamp(max=0)), x + 1)


def stablemax_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID
) -> torch.Tensor:
    """-log(s(logit_label) / sum_v s(logit_v)) per token, in float64; 0 where ignored.

    Stablemax replaces exp by s(x) (see `_stablemax_scores`), which grows linearly and so
    does not push logits to huge values; float64 keeps the sums exact (as in TRM).
    """
    valid = labels != ignore_index  # (...)
    scores = _stablemax_scores(logits.to(torch.float64))  # (..., V)
    log_probs = torch.log(scores / scores.sum(dim=-1, keepdim=True))  # (..., V)
    safe_labels = torch.where(valid, labels, 0).long().unsqueeze(-1)  # (..., 1)
    picked = log_probs.gather(-1, safe_labels).squeeze(-1)  # (...)
    return torch.where(valid, -picked, 0.0)


def softmax_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID
) -> torch.Tensor:
    """Ordinary cross-entropy per token, computed in float32; 0 where ignored."""
    vocab_size = logits.shape[-1]
    loss = F.cross_entropy(
        logits.float().reshape(-1, vocab_size),
        labels.long().reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
    )
    return loss.view(labels.shape)
