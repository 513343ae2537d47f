"""Dropout whose mask is cheap to draw on every CPU, not only on Intel's.

PyTorch draws a CPU dropout mask with ``bernoulli_``, which is vectorised (through MKL)
only on Intel processors; elsewhere it draws one 64-bit number per element. On the AMD
build machine that made the five dropout masks of an SSE-PT training step 14% of its time
(``bench/README.md``). Here one 64-bit draw gives four 16-bit lanes, each compared with a
threshold, which is 3-4x cheaper there. Where PyTorch's own mask is fast (Intel CPUs with
MKL, GPUs) it is used unchanged. Both are seeded by torch's generator, so runs stay
deterministic under a seed; the two paths draw different masks, as PyTorch's own CPU and
GPU paths do. Dropout on attention weights (``ModelConfig.attention_dropout``, 0 by
default) happens inside ``scaled_dot_product_attention`` where PyTorch's mask is fast;
elsewhere the attention is written out so that its weights go through this module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from movierec.machine import cpu_vendor

LANE_BITS = 16
LANES_PER_DRAW = 64 // LANE_BITS
LANE_VALUES = 1 << LANE_BITS
# Draws over the whole int64 range fill all 64 bits (torch's unbounded int64 `random_()`
# stops at 2**63 - 1, which would leave every fourth lane's sign bit at zero). With these
# bounds torch takes a 64-bit draw modulo 2**64 - 1: the lowest value comes twice as often
# as the others and the highest never, a bias of 2**-64. `random_(DRAW_LOW, None)` would
# avoid it and is no faster here, but flips every draw's sign bit: every seed's masks would
# change.
DRAW_LOW, DRAW_HIGH = -(1 << 63), (1 << 63) - 1


def quantised_drop_probability(p: float) -> float:
    """The drop probability a 16-bit lane can express nearest to ``p`` (within 2**-17)."""
    return round(p * LANE_VALUES) / LANE_VALUES


def keep_threshold(p: float) -> int:
    """The lane value from which an element is kept.

    Exactly ``round(p * 2**16)`` of the 2**16 signed 16-bit values lie below it.
    """
    return round(p * LANE_VALUES) - LANE_VALUES // 2


def keep_mask(shape: torch.Size | tuple[int, ...], p: float,
              device: torch.device | str = "cpu",
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean mask of ``shape``, each element True (kept) with probability ``1 - p``.

    Each element reads one signed 16-bit lane of uniform 64-bit draws and is kept when the
    lane is at least :func:`keep_threshold`, so the drop probability is ``p`` rounded to a
    multiple of 2**-16 (:func:`quantised_drop_probability`).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability {p} outside [0, 1]")
    if quantised_drop_probability(p) == 1.0:  # the threshold would not fit in 16 bits
        return torch.zeros(shape, dtype=torch.bool, device=device)
    count = math.prod(shape)
    draws = torch.empty(-(-count // LANES_PER_DRAW), dtype=torch.int64, device=device)
    draws.random_(DRAW_LOW, DRAW_HIGH, generator=generator)
    lanes = draws.view(torch.int16)[:count].view(shape)
    return lanes >= keep_threshold(p)


def torch_mask_is_fast(device: torch.device) -> bool:
    """Whether PyTorch's own dropout mask is vectorised on ``device``."""
    if device.type != "cpu":
        return True
    return torch.backends.mkl.is_available() and cpu_vendor() == "GenuineIntel"


class Dropout(nn.Module):
    """``nn.Dropout`` with a cheap mask where PyTorch's is slow (see the module docstring).

    Same contract: in training, zero each element with probability ``p`` and scale the
    rest by ``1 / (1 - p)``; in evaluation, return the input unchanged.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0 or quantised_drop_probability(p) == 1.0:
            raise ValueError(f"dropout probability {p} outside [0, 1)")
        self.p = p

    def extra_repr(self) -> str:
        """Shown by ``print(model)``, as for ``nn.Dropout``."""
        return f"p={self.p}"

    def draws_own_mask(self, device: torch.device) -> bool:
        """Whether training draws the 16-bit-lane mask on ``device`` (False: PyTorch's or none)."""
        return self.p > 0.0 and not torch_mask_is_fast(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Drop and rescale ``x`` in training; the identity in evaluation."""
        if not self.training or self.p == 0.0:
            return x
        if not self.draws_own_mask(x.device):
            return F.dropout(x, self.p, training=True)
        # Rescale by the probability the lanes express, so the expectation stays exact.
        scale = 1.0 / (1.0 - quantised_drop_probability(self.p))
        return x * (keep_mask(x.shape, self.p, x.device).to(x.dtype) * scale)
