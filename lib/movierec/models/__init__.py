"""Sequential recommenders (SSE-PT, SASRec), the popularity baseline, losses and sampling."""

from __future__ import annotations

from movierec.models.config import ModelConfig
from movierec.models.losses import (
    bce_loss,
    ce_lookahead_loss,
    ce_loss,
    lookahead_targets,
    seen_items_bias,
)
from movierec.models.popularity import PopularityModel
from movierec.models.sampling import (
    TrainingBatches,
    sample_negatives,
    sse_corrupt,
    training_window,
)
from movierec.models.sse_pt import SSEPT

__all__ = [
    "SSEPT",
    "ModelConfig",
    "PopularityModel",
    "TrainingBatches",
    "bce_loss",
    "build_model",
    "ce_lookahead_loss",
    "ce_loss",
    "lookahead_targets",
    "sample_negatives",
    "seen_items_bias",
    "sse_corrupt",
    "training_window",
]


def build_model(config: ModelConfig, n_users: int, n_items: int) -> SSEPT:
    """Build the network ``config`` describes (SASRec is SSE-PT without user embedding)."""
    return SSEPT(config, n_users, n_items)
