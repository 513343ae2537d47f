"""How a runner plugs into ``fit``: distributed wrapping, device, checkpoints, reports.

``LocalHooks`` is the in-process runner's; Ray Train's are in ``ray_runner``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from movierec.files import write_atomic
from movierec.training.config import TrainConfig

# Settings a resumed run may change: they do not alter what the checkpoint is part of.
RESUMABLE_CHANGES = frozenset({"epochs", "threads", "device", "eval_batch_size"})
# Told each epoch's record as soon as it is finished (live tracking, a driver's progress).
EpochListener = Callable[[dict[str, Any]], None]


def check_same_run(saved: dict[str, Any] | None, config: TrainConfig) -> None:
    """Refuse to resume a checkpoint written under other settings.

    Otherwise a half-trained soup branch, or a selection stopped with another patience,
    would silently become the result.

    Raises:
        ValueError: Naming each setting that differs, with its old and new value.
    """
    if saved is None:  # written before checkpoints recorded their config
        return
    def flat(settings: dict[str, Any]) -> dict[str, Any]:  # model.dropout, not a whole dict
        return {f"{key}.{inner}" if isinstance(value, dict) else key: v
                for key, value in settings.items()
                for inner, v in (value.items() if isinstance(value, dict) else [(key, value)])}

    before, now = flat(saved), flat(config.model_dump(mode="json"))
    changed = sorted(f"{key}: {before.get(key)!r} -> {value!r}" for key, value in now.items()
                     if key not in RESUMABLE_CHANGES and before.get(key) != value)
    if changed:
        raise ValueError("the checkpoint was written with other settings ("
                         + "; ".join(changed) + "): resume with the same config, or start "
                         "over without resume")


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
    """In-process runner: optional checkpoint file per run, resumable.

    ``on_epoch`` hears each epoch's record once its checkpoint is written.
    """

    rank, world_size = 0, 1

    def __init__(self, checkpoint_dir: Path | None = None, resume: bool = False,
                 on_epoch: EpochListener | None = None) -> None:
        self.checkpoint = checkpoint_dir / "checkpoint.pt" if checkpoint_dir else None
        self.resume, self.on_epoch = resume, on_epoch

    def wrap(self, objective: nn.Module) -> nn.Module:
        """No wrapping in-process."""
        return objective

    def device(self, config: TrainConfig) -> torch.device:
        """CUDA when asked for or available under ``auto``, else CPU."""
        if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
            return torch.device("cuda")
        return torch.device("cpu")

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint file, when resuming and it exists.

        Read onto the CPU, so a GPU run's checkpoint resumes on a machine without one;
        loading the weights and the optimiser moves them to the training device.
        """
        if self.resume and self.checkpoint and self.checkpoint.exists():
            return torch.load(self.checkpoint, weights_only=False, map_location="cpu")
        return None

    def report(self, record: dict[str, Any], state: dict[str, Any]) -> None:
        """Write the checkpoint atomically (a crash mid-write keeps the previous one)."""
        if self.checkpoint is not None:
            write_atomic(self.checkpoint, lambda handle: torch.save(state, handle))
        if self.on_epoch is not None:
            self.on_epoch(record)
