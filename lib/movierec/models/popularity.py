"""Most-popular baseline: the same ranking for everyone, by training interaction counts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


class PopularityModel(nn.Module):
    """Scores items by how often they occur in the training data.

    The score of an item is ``n_items - rank`` where rank 0 is the most frequent item and ties
    go to the lower item id, so rankings are deterministic and exact in float32. It mirrors
    ``SSEPT``'s ``score_all``/``score_candidates`` so evaluation treats both alike.
    """

    def __init__(self, n_items: int) -> None:
        super().__init__()
        if n_items < 1:
            raise ValueError(f"n_items={n_items}: must be at least 1")
        self.n_items = n_items
        self.register_buffer("counts", torch.zeros(n_items + 1, dtype=torch.int64))
        scores = torch.zeros(n_items + 1)
        scores[0] = float("-inf")
        self.register_buffer("scores", scores)

    def fit(self, items: np.ndarray | Sequence[np.ndarray]) -> PopularityModel:
        """Count training items (a flat id array or per-user sequences; 0s are ignored)."""
        flat = (np.concatenate([np.asarray(s, dtype=np.int64).reshape(-1) for s in items])
                if isinstance(items, Sequence) and len(items) else np.asarray(items, np.int64))
        flat = flat.reshape(-1)
        flat = flat[flat != 0]
        if flat.size and (flat.min() < 1 or flat.max() > self.n_items):
            raise ValueError(f"item ids must be in 1..{self.n_items} (0 = padding); got "
                             f"{int(flat.min())}..{int(flat.max())}")
        counts = np.bincount(flat, minlength=self.n_items + 1)
        counts[0] = 0
        # lexsort's last key is primary: most counts first, then lower item id.
        ids = np.arange(1, self.n_items + 1)
        order = ids[np.lexsort((ids, -counts[1:]))]
        scores = np.full(self.n_items + 1, -np.inf, dtype=np.float32)
        scores[order] = self.n_items - np.arange(self.n_items, dtype=np.float32)
        # On the device the model was moved to, as the registered buffers were.
        self.counts = torch.from_numpy(counts).to(self.counts.device)
        self.scores = torch.from_numpy(scores).to(self.scores.device)
        return self

    def score_all(self, users: torch.Tensor, seqs: torch.Tensor | None = None) -> torch.Tensor:
        """Scores [B, n_items + 1] (column 0 is -inf); ``seqs`` is ignored."""
        return self.scores.unsqueeze(0).repeat(users.shape[0], 1)

    def score_candidates(self, users: torch.Tensor, seqs: torch.Tensor | None,
                         items: torch.Tensor) -> torch.Tensor:
        """Scores [B, C] of candidate items [B, C]."""
        return self.scores[items]
