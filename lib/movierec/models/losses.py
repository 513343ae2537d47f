"""Training losses of the sequential recommenders, averaged over non-padded positions."""

from __future__ import annotations

from typing import Any

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


class _MaskOutOfSoftmax(torch.autograd.Function):
    """``masked_fill_(mask, -inf)`` whose backward passes the gradient through unchanged."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.mark_dirty(logits)
        return logits.masked_fill_(mask, float("-inf"))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def mask_out_of_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Set ``logits`` to -inf where ``mask`` is True, in place, for a softmax that follows.

    A softmax gives a -inf logit probability 0, so the cross-entropy's gradient there is
    already exactly 0 and masking it again in backward, as ``masked_fill_`` does, is a
    wasted pass over [N, n_items] (4% of a training step on 2 CPU cores). That holds only
    when the logits go straight into a softmax cross-entropy whose target is never masked
    (``seen_items_mask`` unmasks each row's own target) and without label smoothing, which
    would put a gradient on every class; any other use would see an unmasked gradient.
    """
    return _MaskOutOfSoftmax.apply(logits, mask)


def seen_items_mask(seqs: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor,
                    n_items: int, mode: str) -> torch.Tensor:
    """Items to leave out of the softmax of each selected position (``ce`` loss only).

    Evaluation ranks only the items outside a user's history, and MovieLens has no repeat
    interactions, so a softmax that also pushes down items the user has already seen spends
    capacity on candidates that are never ranked and fights the item-item similarity that
    predicts the next one. Leaving them out aligns training with evaluation.

    Args:
        seqs: Input windows [B, L] (0 is padding).
        targets: Target windows [B, L] (0 is padding).
        rows: Flat indices (``b * L + t``) of the positions the loss uses, [N].
        n_items: Catalogue size; items are 1..n_items.
        mode: ``"window"``: every item of the row's window (inputs and targets);
            ``"prefix"``: the inputs up to and including position ``t``; ``"none"``: nothing.

    Returns:
        Boolean mask [N, n_items] over items 1..n_items; a position's own target is never
        masked (SSE may have drawn a target that also appears in the window).
    """
    batch, length = seqs.shape
    if mode == "none":
        return torch.zeros(rows.shape[0], n_items, dtype=torch.bool, device=seqs.device)
    owner = rows // length
    if mode == "window":
        seen = torch.zeros(batch, n_items + 1, dtype=torch.bool, device=seqs.device)
        seen.scatter_(1, seqs, True)
        seen.scatter_(1, targets, True)
        mask = seen[owner, 1:]
    elif mode == "prefix":
        # First position of every item in each window (``length`` where absent).
        first = torch.full((batch, n_items + 1), length, dtype=torch.long, device=seqs.device)
        first.scatter_reduce_(1, seqs, torch.arange(length, device=seqs.device).expand(batch, -1),
                              reduce="amin")
        mask = first[owner, 1:] <= (rows % length)[:, None]
    else:
        raise ValueError(f"mode must be 'none', 'prefix' or 'window', not {mode!r}")
    own = targets.reshape(-1)[rows] - 1
    mask[torch.arange(rows.shape[0], device=seqs.device), own] = False
    return mask
