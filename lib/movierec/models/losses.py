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


def seen_items_bias(seqs: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor,
                    n_items: int, mode: str) -> torch.Tensor | None:
    """Additive logit bias that leaves seen items out of each softmax (``ce`` loss only).

    Evaluation ranks only the items outside a user's history, and MovieLens has no repeat
    interactions, so a softmax that also pushes down items the user has already seen spends
    capacity on candidates that are never ranked and fights the item-item similarity that
    predicts the next one. Leaving them out aligns training with evaluation.

    The mask is a bias of 0 or -inf, not a boolean: ``SSEPT.next_item_logits`` accumulates
    the catalogue product onto it (``addmm_``), which gives exactly the logits of a
    ``masked_fill`` after the product (while the product is finite) without the fill's slow
    pass over [N, n_items] (5 ms of a training step on 2 AMD cores). The gradient needs no
    mask: a softmax already gives a -inf logit a zero gradient. That holds only for a
    softmax cross-entropy whose target is never masked (its own target is always unmasked
    here) and without label smoothing, which would put a gradient on every class.

    Args:
        seqs: Input windows [B, L] (0 is padding).
        targets: Target windows [B, L] (0 is padding).
        rows: Flat indices (``b * L + t``) of the positions the loss uses, [N].
        n_items: Catalogue size; items are 1..n_items.
        mode: ``"window"``: every item of the row's window (inputs and targets);
            ``"prefix"``: the inputs up to and including position ``t``; ``"none"``: nothing.

    Returns:
        Float bias [N, n_items] over items 1..n_items, -inf where an item is left out and 0
        elsewhere (a position's own target is always 0: SSE may have drawn a target that
        also appears in the window), or None for ``"none"``.
    """
    batch, length = seqs.shape
    if mode == "none":
        return None
    owner = rows // length
    if mode == "window":
        # Built per window ([B, n_items], small), then copied to each of its rows.
        seen = torch.zeros(batch, n_items + 1, device=seqs.device)
        seen.scatter_(1, seqs, float("-inf"))
        seen.scatter_(1, targets, float("-inf"))
        bias = seen[:, 1:].contiguous().index_select(0, owner)
    elif mode == "prefix":
        # First position of every item in each window (``length`` where absent).
        first = torch.full((batch, n_items + 1), length, dtype=torch.long, device=seqs.device)
        first.scatter_reduce_(1, seqs, torch.arange(length, device=seqs.device).expand(batch, -1),
                              reduce="amin")
        bias = torch.where(first[owner, 1:] <= (rows % length)[:, None], float("-inf"), 0.0)
    else:
        raise ValueError(f"mode must be 'none', 'prefix' or 'window', not {mode!r}")
    own = targets.reshape(-1)[rows] - 1
    bias[torch.arange(rows.shape[0], device=seqs.device), own] = 0.0
    return bias
