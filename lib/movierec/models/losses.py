"""Training losses of the sequential recommenders, averaged over non-padded positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor,
             mask: torch.Tensor) -> torch.Tensor:
    """SASRec's loss: ``-log σ(pos) - log(1 - σ(neg))`` per position, mean over ``mask``.

    As in the SASRec and SSE-PT reference code the two terms are summed per position (so
    all-zero logits give ``2·log 2``); an empty mask gives 0.
    """
    weights = mask.to(pos_logits.dtype)
    per_position = -F.logsigmoid(pos_logits) - F.logsigmoid(-neg_logits)
    return (per_position * weights).sum() / weights.sum().clamp(min=1.0)


def ce_loss(logits_all: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over the catalogue, mean over ``mask`` (Klenitskiy & Vasilev 2023).

    Args:
        logits_all: Logits [..., n_items + 1]; column 0 (padding) is excluded from the softmax.
        targets: Target item ids [...] in 1..n_items where ``mask`` is set.
        mask: Positions that count; an empty mask gives 0.
    """
    keep = mask.bool()
    logits = logits_all[keep][:, 1:]
    if logits.shape[0] == 0:
        # Keeps the result attached to the graph; column 0 may be -inf, so leave it out.
        return logits_all[..., 1:].sum() * 0.0
    return F.cross_entropy(logits, targets[keep] - 1)
