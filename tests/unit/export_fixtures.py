"""Tiny untrained models and their configs, shared by the export tests."""

from __future__ import annotations

from pathlib import Path

import torch

from movierec.data.dataset import load_sequences
from movierec.models import ModelConfig, PopularityModel, build_model
from movierec.training.config import TrainConfig

MAX_LEN = 12
TINY = {"max_len": MAX_LEN, "d_item": 8, "d_user": 4, "n_blocks": 1, "dropout": 0.0}


def tiny_config(kind: str) -> TrainConfig:
    """A training config for ``kind`` (``sse-pt``, ``sasrec`` or ``pop``) at the tiny shape."""
    if kind == "pop":
        return TrainConfig(baseline="pop", model=ModelConfig(**TINY))
    return TrainConfig(model=ModelConfig(kind=kind, **TINY))


def tiny_model(kind: str, prepared: Path) -> torch.nn.Module:
    """A popularity model fitted on ``prepared``, or a seeded untrained transformer."""
    data = load_sequences(prepared)
    if kind == "pop":
        return PopularityModel(data.n_items).fit(data.train)
    torch.manual_seed(0)
    return build_model(tiny_config(kind).model, data.n_users, data.n_items).eval()
