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
                    n_items: int, mode: str,
                    keep: torch.Tensor | None = None) -> torch.Tensor | None:
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
        keep: Another item per row ([N], 0 for none) that stays in the softmax because the
            row also learns it (``lookahead_targets``).

    Returns:
        Float bias [N, n_items] over items 1..n_items, -inf where an item is left out and 0
        elsewhere (a position's own target, and its ``keep`` item, are always 0: SSE may
        have drawn a target that also appears in the window), or None for ``"none"``.
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
    index = torch.arange(rows.shape[0], device=seqs.device)
    own = targets.reshape(-1)[rows]
    bias[index, own - 1] = 0.0
    if keep is not None:  # rows without a kept item clear their own target again
        bias[index, torch.where(keep != 0, keep, own) - 1] = 0.0
    return bias


def lookahead_targets(targets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The item after each position's target, at the loss's positions.

    Args:
        targets: Target windows [B, L] (0 is padding; position ``t``'s target is the item
            at ``t + 1``, so the item after it is position ``t + 1``'s target).
        rows: Flat indices (``b * L + t``) of the positions the loss uses, [N].

    Returns:
        Item ids [N], 0 where the window ends before the item after the target.
    """
    after = torch.zeros_like(targets)
    after[:, :-1] = targets[:, 1:]
    return after.reshape(-1)[rows]


def ce_lookahead_loss(logits: torch.Tensor, targets: torch.Tensor,
                      after: torch.Tensor | None, weight: float) -> torch.Tensor:
    """Cross-entropy of the next item plus ``weight`` times that of the item after it.

    Both terms share one log-softmax per position (in float32 at least, as
    ``F.cross_entropy`` computes under autocast). Positions whose window ends first
    (``after`` 0) add no second term; each term is a mean over its own positions. Written
    without boolean indexing, so a GPU step does not wait on the host.

    Args:
        logits: [N, n_items] over items 1..n_items (the seen-item bias already added, with
            the ``after`` items kept in: ``seen_items_bias(..., keep=after)``).
        targets: Next items [N] in 1..n_items.
        after: Items after them [N], 0 where there is none (None: no second term).
        weight: Weight of the second term; 0 gives plain ``F.cross_entropy``.
    """
    if after is None or weight == 0:
        return F.cross_entropy(logits, targets - 1)
    log_probs = F.log_softmax(logits, dim=-1,
                              dtype=torch.promote_types(logits.dtype, torch.float32))
    present = after != 0
    # Rows without an item after gather a stand-in (item 1, maybe -inf) that `where` drops.
    picked = log_probs.gather(1, (after - 1).clamp(min=0)[:, None]).squeeze(1)
    after_loss = -torch.where(present, picked, 0.0).sum() / present.sum().clamp(min=1)
    return F.nll_loss(log_probs, targets - 1) + weight * after_loss
