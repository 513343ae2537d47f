"""How a runner plugs into ``fit``: distributed wrapping, device, checkpoints, reports.

``LocalHooks`` is the in-process runner's; Ray Train's are in ``ray_runner``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from movierec.training.config import TrainConfig


class Hooks(Protocol):
    """What a runner provides to ``fit``."""

    rank: int
    world_size: int

    def wrap(self, objective: nn.Module) -> nn.Module:
        """Wrap the objective for distributed training (identity in-process)."""

    def device(self, config: TrainConfig) -> torch.device:
        """The device this worker trains on."""

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The latest checkpoint state to resume from, if any."""

    def report(self, record: dict[str, Any], state: dict[str, Any]) -> None:
        """Called after every epoch with its metrics and the checkpoint state."""


class LocalHooks:
    """In-process runner: optional checkpoint file per run, resumable."""

    rank, world_size = 0, 1

    def __init__(self, checkpoint_dir: Path | None = None, resume: bool = False) -> None:
        self.checkpoint = checkpoint_dir / "checkpoint.pt" if checkpoint_dir else None
        self.resume = resume

    def wrap(self, objective: nn.Module) -> nn.Module:
        """No wrapping in-process."""
        return objective

    def device(self, config: TrainConfig) -> torch.device:
        """CUDA when asked for or available under ``auto``, else CPU."""
        if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
            return torch.device("cuda")
        return torch.device("cpu")

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint file, when resuming and it exists."""
        if self.resume and self.checkpoint and self.checkpoint.exists():
            return torch.load(self.checkpoint, weights_only=False)
        return None

    def report(self, record: dict[str, Any], state: dict[str, Any]) -> None:
        """Write the checkpoint atomically (a crash mid-write keeps the previous one)."""
        if self.checkpoint is None:
            return
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint)
