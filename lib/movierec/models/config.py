"""Architecture settings of the sequential recommenders (SSE-PT and SASRec)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ModelConfig(BaseModel):
    """Shape and regularisation of an SSE-PT / SASRec model.

    SASRec is SSE-PT with the user embedding switched off, so ``d_user`` and
    ``sse_prob_user`` are ignored for ``kind="sasrec"``. Optimiser settings belong to the
    trainer, not here.

    The defaults are the best configuration measured on ml-100k within the CPU time budget
    (``bench/quality.py``); the reference SSE-PT/SASRec settings are max_len 200, dropout
    0.2 on attention too, and the ``bce`` loss.

    Attributes:
        kind: ``"sse-pt"`` (item and user embeddings) or ``"sasrec"`` (items only).
        max_len: Length of the left-padded input window.
        d_item: Width of the item embedding.
        d_user: Width of the user embedding (SSE-PT only).
        n_blocks: Number of self-attention blocks.
        n_heads: Attention heads; must divide the hidden width.
        dropout: Dropout rate of embeddings and feed-forward layers (at most 0.99).
        attention_dropout: Dropout on attention weights: 0 by default, None for ``dropout``
            (the reference's choice).
        norm_first: Pre-LayerNorm blocks (default) or post-LayerNorm blocks.
        sse_prob_user: Probability of replacing a sequence's user by a random user.
        sse_prob_item: Probability of replacing an input item and its target by random items.
        sse_pt_plus_plus: Sample the training window of long histories (SSE-PT++).
        shuffle_ties: Reorder items with equal timestamps at random every epoch (training
            only; needs the data's timestamps).
        item_init: ``"spectral"`` (default) starts the item embeddings from the training
            interactions' leading singular vectors (``models.spectral``), ``"random"``
            from Xavier-normal noise as the reference does.
        loss: ``"bce"`` (one sampled negative per position) or ``"ce"`` (full softmax).
        ce_mask_seen: With ``ce``, items of the training window left out of each softmax
            (``"window"``, ``"prefix"`` or ``"none"``; see ``losses.seen_items_bias``).
        ce_lookahead_weight: With ``ce``, weight of a second cross-entropy term whose target
            is the item after the next one (``losses.ce_lookahead_loss``); 0 turns it off.
        tie_orders: Scoring only: a history that ends in items of one timestamp is scored
            as the mean over up to this many orders of them (``data.tie_orders``); 1 turns
            it off.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["sse-pt", "sasrec"] = "sse-pt"
    max_len: int = Field(default=100, ge=1)
    d_item: int = Field(default=50, ge=1)
    d_user: int = Field(default=50, ge=0)
    n_blocks: int = Field(default=2, ge=1)
    n_heads: int = Field(default=1, ge=1)
    dropout: float = Field(default=0.3, ge=0.0, le=0.99)  # the mask has 16-bit steps
    attention_dropout: float | None = Field(
        default=0.0, ge=0.0, le=0.99,
        description="dropout on attention weights; None uses `dropout` as the reference "
        "does (0 roughly halves attention cost on CPU)")
    norm_first: bool = True
    sse_prob_user: float = Field(default=0.92, ge=0.0, le=1.0)
    sse_prob_item: float = Field(default=0.1, ge=0.0, le=1.0)
    sse_pt_plus_plus: bool = False
    shuffle_ties: bool = Field(
        default=False,
        description="training only: every epoch, put each run of a user's items that share "
        "one timestamp in a new random order (needs the data's timestamps). Their order in "
        "the data is the file's, which means nothing: 44% of ml-100k's validation items "
        "have the same second as the item before. Off by default: on the nested split "
        "(bench/nested.py, 5 seeds) it raised pseudo-valid NDCG@10 on every seed but not "
        "pseudo-test (sampled +0.003 ± 0.005, full -0.001 ± 0.004), and it trained 40% "
        "more epochs")
    item_init: Literal["random", "spectral"] = Field(
        default="spectral",
        description="initial item embeddings: 'spectral' = the leading singular vectors of "
        "the normalised user-item matrix of the training items (models.spectral), "
        "'random' = Xavier-normal as in the reference. On the nested split "
        "(bench/nested.py, 10 seeds) 'spectral' gains pseudo-test NDCG@10 sampled "
        "+0.0063 ± 0.0014 and full +0.0031 ± 0.0014 at the same learning rate (4e-3), and "
        "selection stops sooner (best epoch 18 instead of 30); a lower rate then gains more "
        "(TrainConfig.lr)")
    loss: Literal["bce", "ce"] = "ce"
    ce_mask_seen: Literal["none", "prefix", "window"] = Field(
        default="window",
        description="ce loss only: leave the items of the user's training window (other than "
        "the target) out of the softmax, as full-ranking evaluation leaves the history out; "
        "'prefix' masks only the inputs seen so far. Chosen on validation: on ml-100k (7 "
        "seeds) 'window' gives valid/test full-ranking NDCG@10 0.135/0.112 vs 0.122/0.106 "
        "for 'none', and sampled test NDCG@10 0.463 vs 0.454")

    ce_lookahead_weight: float = Field(
        default=0.0, ge=0.0,
        description="ce loss only: also learn, at each position, the item after the next "
        "one, with this weight on its cross-entropy (the same softmax; that item stays in "
        "it), since items rated in the same second come in the file's order. Off by "
        "default: 0.25 raised validation NDCG@10 of the selection run on 3 seeds (sampled "
        "+0.004, full +0.0016), but on the nested split (bench/nested.py, 5 seeds) the "
        "pseudo-test gains were within noise (sampled +0.0012 ± 0.0035, full +0.0008 ± "
        "0.0020; both 95% intervals over users span zero), for 31% more epochs")

    tie_orders: int = Field(
        default=1, ge=1,
        description="scoring only (final validation, test and serving; not the per-epoch "
        "validation that picks the epoch): a history whose newest items share one "
        "timestamp is scored as the mean of the scores of up to this many orders of those "
        "items, their cyclic rotations, so that each comes last once; 1 scores the history "
        "as it is. Their order in the data is the file's. Needs the histories' timestamps. "
        "The copies are scored with their batch, so an evaluation batch can grow to this "
        "many times eval_batch_size rows (lower it for large catalogues). "
        "Off by default: 8 raised validation NDCG@10 of the selection run on 3 seeds "
        "(sampled +0.008, full +0.005), and on the nested split (bench/nested.py, 5 seeds, "
        "5/5 won on both) pseudo-test sampled +0.0063 ± 0.0009 and full +0.0043 ± 0.0010, "
        "but the full gain's 95% interval over users spans zero (-0.0016 to +0.0100)")

    @model_validator(mode="after")
    def _check_loss_options(self) -> ModelConfig:
        if self.ce_lookahead_weight and self.loss != "ce":
            raise ValueError(
                f"ce_lookahead_weight={self.ce_lookahead_weight} needs loss='ce' "
                f"(it weights a second cross-entropy term), not loss={self.loss!r}"
            )
        return self

    @model_validator(mode="after")
    def _check_widths(self) -> ModelConfig:
        if self.kind == "sse-pt" and self.d_user < 1:
            raise ValueError(
                f"d_user={self.d_user}: SSE-PT needs a positive user width "
                "(use kind='sasrec' for a model without user embedding)"
            )
        if self.hidden % self.n_heads:
            raise ValueError(
                f"hidden width {self.hidden} (d_item + d_user for sse-pt, d_item for sasrec) "
                f"is not divisible by n_heads={self.n_heads}; change d_item/d_user or n_heads"
            )
        return self

    @property
    def user_width(self) -> int:
        """Width of the user part of the hidden state (0 for SASRec)."""
        return self.d_user if self.kind == "sse-pt" else 0

    @property
    def hidden(self) -> int:
        """Model width: ``d_item + d_user`` for SSE-PT, ``d_item`` for SASRec."""
        return self.d_item + self.user_width
