"""SSE-PT (Wu et al., RecSys 2020): a causal transformer over [item ‖ user] embeddings.

Item ids run 1..n_items and user ids 1..n_users; 0 is padding (items) or an unknown user.
Sequences are left padded, so position -1 always holds the most recent item. SASRec is the
same network with the user embedding switched off (``ModelConfig.kind == "sasrec"``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from movierec.models.config import ModelConfig
from movierec.models.dropout import Dropout

# The reference implementation normalises with this epsilon; PyTorch's 1e-5 would change
# nothing measurable but keeping it makes side-by-side comparisons exact.
LAYER_NORM_EPS = 1e-8
# Subtracted from masked attention scores when looking for a row's maximum in
# ``score_last``, so the maximum is an allowed key's.
MASKED = 1e9


def _softmax_weighted(scores: torch.Tensor, allowed: torch.Tensor, penalty: torch.Tensor,
                      values: torch.Tensor) -> torch.Tensor:
    """``softmax(scores over allowed keys) @ values``, written out for the exported graph.

    ONNX Runtime's Softmax is 3-4x slower on rows whose masked scores are pushed towards
    -inf (its exp takes a slow path near float underflow), so every exp here gets an
    ordinary score and the 0/1 mask ``allowed`` multiplies after. The shift is the maximum
    over allowed keys (``penalty`` is large where a key is masked), so a row with any
    allowed key sums to at least exp(0) = 1 (masked scores above the shift are capped at 0
    so none overflows); the floor of 1 only turns an empty row into zeros instead of 0/0.
    Row sums come from a product with ones, not a ReduceSum, whose vector lanes would make
    a score depend on how much left padding its batch has; the division runs on the
    weighted values, not on the [L, L] weights.
    """
    top = (scores - penalty).amax(-1, keepdim=True)
    exps = torch.exp((scores - top).clamp(max=0.0)) * allowed
    sums = exps @ torch.ones(exps.shape[-1], 1, dtype=exps.dtype, device=exps.device)
    return (exps @ values) / sums.clamp(min=1.0)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a boolean "may attend" mask.

    As in the reference code there is no output projection: the heads are concatenated and
    added to the residual stream directly.
    """

    def __init__(self, width: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.weight_dropout = Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Attend over ``x`` [B, L, H] where ``allowed`` [B, 1, L, L] is True."""
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        if self.training and self.weight_dropout.draws_own_mask(x.device):
            # SDPA would drop weights with PyTorch's own mask, which is slow there (see
            # models.dropout); its math path, written out, takes the cheap mask instead.
            scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
            weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
            out = self.weight_dropout(weights) @ v
        else:
            p = self.weight_dropout.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        return out.transpose(1, 2).flatten(-2)


class FeedForward(nn.Module):
    """Point-wise two-layer network of the reference (width -> width -> width, ReLU)."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(), Dropout(dropout),
            nn.Linear(width, width), Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform every position independently."""
        return self.net(x)


class Block(nn.Module):
    """One transformer block: causal attention then feed-forward, each with a residual."""

    def __init__(self, width: int, n_heads: int, dropout: float, norm_first: bool,
                 attention_dropout: float) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attention = CausalSelfAttention(width, n_heads, attention_dropout)
        self.attention_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.feed_forward = FeedForward(width, dropout)
        self.feed_forward_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Apply the block and zero the padded positions again (as the reference does)."""
        if self.norm_first:
            x = x + self.attention(self.attention_norm(x), allowed)
            x = x + self.feed_forward(self.feed_forward_norm(x))
        else:
            x = self.attention_norm(x + self.attention(x, allowed))
            x = self.feed_forward_norm(x + self.feed_forward(x))
        return x * valid


class SSEPT(nn.Module):
    """SSE-PT / SASRec sequential recommender.

    Scores are dot products between the last hidden state and a candidate embedding
    ``[e_item ; e_user]`` whose user part is the scored user's own embedding.
    """

    def __init__(self, config: ModelConfig, n_users: int, n_items: int) -> None:
        super().__init__()
        if n_users < 1 or n_items < 1:
            raise ValueError(f"n_users={n_users}, n_items={n_items}: both must be at least 1")
        self.config = config
        self.n_users = n_users
        self.n_items = n_items
        self.max_len = config.max_len
        self.d_item = config.d_item
        width = config.hidden
        self.item_embedding = nn.Embedding(n_items + 1, config.d_item, padding_idx=0)
        # User 0 (unknown) gets the zero vector, so a cold-start user is scored from items only.
        self.user_embedding = (
            nn.Embedding(n_users + 1, config.user_width, padding_idx=0)
            if config.user_width else None
        )
        self.item_scale = math.sqrt(config.d_item)
        self.user_scale = math.sqrt(max(config.user_width, 1))
        self.position_embedding = nn.Embedding(config.max_len, width)
        self.embedding_dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(width, config.n_heads, config.dropout, config.norm_first,
                  config.dropout if config.attention_dropout is None
                  else config.attention_dropout)
            for _ in range(config.n_blocks)
        )
        # Post-LN blocks already end in a LayerNorm; a second one would only add parameters.
        self.final_norm: nn.Module = (
            nn.LayerNorm(width, eps=LAYER_NORM_EPS) if config.norm_first else nn.Identity()
        )
        padding_column = torch.zeros(n_items + 1, dtype=torch.bool)
        padding_column[0] = True
        self.register_buffer("padding_column", padding_column, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-normal weights, zero biases, unit LayerNorms, zero padding rows."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.xavier_normal_(module.weight)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
            if self.user_embedding is not None:
                self.user_embedding.weight[0].zero_()

    def next_item_logits(self, hidden: torch.Tensor,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [N, n_items] of items 1..n_items for hidden states [N, H], for softmax.

        The user part of every candidate is the same vector, so it shifts all logits of a row
        equally and cancels in a softmax: only the item part is computed (and no padding
        column), which is the cheap path for the CE loss. ``bias`` [N, n_items] (e.g.
        ``losses.seen_items_bias``) is added inside the product (``addmm``; ``hidden`` must
        then be 2-D), instead of in a pass of its own. The bias is scratch memory: outside
        autocast the logits are written into it, which saves copying it (3 ms of a
        3,200-position CE step on 2 CPU cores), so pass one that is not needed again.
        """
        items = self.item_embedding.weight[1:].T
        if bias is None:
            return hidden[..., : self.d_item] @ items
        if torch.is_autocast_enabled(hidden.device.type):  # autocast casts out-of-place ops only
            return torch.addmm(bias, hidden[:, : self.d_item], items)
        return bias.to(items.dtype).addmm_(hidden[:, : self.d_item], items)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor | None:
        """Scaled user embeddings [B, d_user] (None for SASRec)."""
        if self.user_embedding is None:
            return None
        return self.user_embedding(users) * self.user_scale

    def _embed(self, users: torch.Tensor,
               seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                            torch.Tensor | None]:
        """Item (and user) embeddings plus positions, not yet masked; key and row masks.

        Returns:
            ``x`` [B, L, H], ``key_valid`` [B, L] (real items), ``valid`` [B, L, 1] (the
            same as a float multiplier) and the user vectors (None without users).
        """
        length = seqs.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len={self.max_len}; "
                             "keep only the last max_len items")
        key_valid = seqs != 0
        valid = key_valid.unsqueeze(-1).to(self.position_embedding.weight.dtype)
        x = self.item_embedding(seqs) * self.item_scale
        user = self.user_vectors(users)
        if user is not None:
            x = torch.cat([x, user.unsqueeze(1).expand(-1, length, -1)], dim=-1)
        x = x + self.position_embedding.weight[self.max_len - length:]
        return x, key_valid, valid, user

    def forward(self, users: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, H] of left-padded item sequences [B, L] (L <= max_len).

        Position embeddings are aligned to the right, so a shorter input is equivalent to
        the same input left padded to ``max_len``.
        """
        x, key_valid, valid, _ = self._embed(users, seqs)
        length = seqs.shape[1]
        x = self.embedding_dropout(x) * valid
        # Causal mask; a padded query may see itself only, so no softmax row is all -inf,
        # and no real position ever sees a padded key.
        causal = torch.ones(length, length, dtype=torch.bool, device=seqs.device).tril()
        itself = torch.eye(length, dtype=torch.bool, device=seqs.device)
        allowed = causal & (key_valid[:, None, None, :] | itself)
        for block in self.blocks:
            x = block(x, allowed, valid)
        return self.final_norm(x) * valid

    def candidate_embeddings(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Candidate embeddings [B, C, H]: ``[e_item ; e_user]`` for SSE-PT, ``e_item`` else."""
        item = self.item_embedding(items)
        user = self.user_vectors(users)
        if user is None:
            return item
        shape = (*items.shape, user.shape[-1])
        return torch.cat([item, user.view(user.shape[0], *([1] * (items.dim() - 1)), -1)
                          .expand(shape)], dim=-1)

    def catalogue_scores(self, hidden: torch.Tensor,
                                  user: torch.Tensor | None) -> torch.Tensor:
        """Scores [..., n_items + 1] of hidden states [..., H]; ``user`` broadcasts to them."""
        scores = hidden[..., : self.d_item] @ self.item_embedding.weight.T
        if user is not None:
            # The user part of every candidate is the same vector: one dot product per row.
            scores = scores + (hidden[..., self.d_item:] * user).sum(-1, keepdim=True)
        return scores.masked_fill(self.padding_column, float("-inf"))

    def score_candidates(self, users: torch.Tensor, seqs: torch.Tensor,
                         items: torch.Tensor) -> torch.Tensor:
        """Scores [B, C] of candidate items [B, C] after the last position."""
        last = self(users, seqs)[:, -1]
        return (self.candidate_embeddings(users, items) * last.unsqueeze(1)).sum(-1)

    def score_all(self, users: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        """Scores [B, n_items + 1] of the whole catalogue; column 0 (padding) is -inf."""
        last = self(users, seqs)[:, -1]
        return self.catalogue_scores(last, self.user_vectors(users))

    def score_last(self, users: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        """``score_all`` computed only where it is read: the serving (export) path.

        Same scores as :meth:`score_all` (up to float rounding) at a fraction of the cost:
        the last block runs its attention for the last query only (keys and values still
        span every position) and its feed-forward, final norm and catalogue product for the
        last position only. The mask is a 0/1 factor built once for all blocks (the exported
        graph then needs no per-block NaN guard). Inference only (no dropout).
        """
        x, key_valid, valid, user = self._embed(users, seqs)
        length = seqs.shape[1]
        *first, last_block = self.blocks
        # The mask, built once: causal, and real keys only. A real query's masked keys get
        # exactly zero weight and a padded query's row is all zero (forward lets it see
        # itself instead): so padded positions never reach a real one, and unlike
        # ``forward`` this path need not zero them after every block (only the output of an
        # empty history is zeroed, below).
        causal = torch.ones(length, length, dtype=x.dtype, device=x.device).tril()
        allowed = key_valid.to(x.dtype)[:, None, None, :] * causal
        penalty = (1.0 - allowed) * MASKED
        for block in first:
            x = self._block(block, x, length, allowed, penalty)
        last = self._block(last_block, x, 1, allowed[:, :, -1:], penalty[:, :, -1:])
        hidden = (self.final_norm(last) * valid[:, -1:])[:, 0]
        return self.catalogue_scores(hidden, user)

    @staticmethod
    def _block(block: Block, x: torch.Tensor, n_queries: int, allowed: torch.Tensor,
               penalty: torch.Tensor) -> torch.Tensor:
        """``block(x)`` [B, L, H] at its last ``n_queries`` positions: [B, n_queries, H].

        Written for the exported graph: positions go through every linear layer and norm as
        one [B * L, H] matrix, which ONNX Runtime runs as one Gemm with its bias (a 3-D input
        costs a MatMul plus an Add), and one head needs no head axis, so no Transpose either
        (8% less time per served row on ml-100k).
        """
        attention = block.attention
        batch, length, width = x.shape
        heads = attention.n_heads

        def attend(keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
            q = attention.query(queries).view(batch, n_queries, width)
            k = attention.key(keys).view(batch, length, width)
            v = attention.value(keys).view(batch, length, width)
            mask, below = (allowed[:, 0], penalty[:, 0]) if heads == 1 else (allowed, penalty)
            if heads > 1:
                q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
            out = _softmax_weighted(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, mask, below, v)
            return (out if heads == 1 else out.transpose(1, 2)).reshape(batch * n_queries, width)

        def attend_last(keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
            # One query per row: q . (W_k n + b_k) = (q W_k) . n + q . b_k, and q . b_k is
            # the same for every key, so it cancels in the softmax; likewise the weighted
            # values are W_v (sum_i a_i n_i) + b_v, as the weights of a row sum to one. So
            # the keys and values of the L positions are never computed: one [H, H] product
            # per row replaces two per position. An empty history's row gets b_v instead of
            # zero; its output is zeroed at the end anyway.
            head = width // heads
            q = attention.query(queries).view(batch, heads, head)
            keys = keys.view(batch, length, width)
            folded = (q @ attention.key.weight if heads == 1 else  # [B, heads, H]
                      (q.unsqueeze(-2) @ attention.key.weight.view(heads, head, width))
                      .squeeze(-2))
            scores = folded @ keys.transpose(-2, -1) * head ** -0.5  # [B, heads, L]
            context = _softmax_weighted(scores, allowed[:, 0], penalty[:, 0], keys)
            if heads == 1:
                return attention.value(context.view(batch, width))
            weight = attention.value.weight.view(heads, head, width)
            out = (context.unsqueeze(-2) @ weight.transpose(-2, -1)).view(batch, width)
            return out + attention.value.bias

        def tail(rows: torch.Tensor) -> torch.Tensor:  # the last n_queries positions' rows
            if n_queries == length:
                return rows
            return rows.view(batch, length, width)[:, -n_queries:].reshape(-1, width)

        attention_of = attend_last if n_queries == 1 else attend
        rows = x.reshape(batch * length, width)
        if block.norm_first:
            normed = block.attention_norm(rows)
            out = tail(rows) + attention_of(normed, tail(normed))
            out = out + block.feed_forward(block.feed_forward_norm(out))
        else:
            out = block.attention_norm(tail(rows) + attention_of(rows, tail(rows)))
            out = block.feed_forward_norm(out + block.feed_forward(out))
        return out.view(batch, n_queries, width)

    def training_logits(self, users: torch.Tensor, seqs: torch.Tensor, pos: torch.Tensor,
                        neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position logits [B, L] of the positive and the sampled negative items."""
        hidden = self(users, seqs)
        pos_logits = (hidden * self.candidate_embeddings(users, pos)).sum(-1)
        neg_logits = (hidden * self.candidate_embeddings(users, neg)).sum(-1)
        return pos_logits, neg_logits

    def training_logits_all(self, users: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        """Per-position logits [B, L, n_items + 1] of every item (column 0 is -inf)."""
        hidden = self(users, seqs)
        user = self.user_vectors(users)
        return self.catalogue_scores(hidden, None if user is None else user[:, None])
