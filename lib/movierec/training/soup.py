"""The refit's soup: when its branches fork, how each is seeded, and its records' keys.

Kept apart from the loop so that readers of the records (learning-curve plots, tests)
need not import the trainer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # a type only: readers of the records need not import torch
    from movierec.training.config import TrainConfig


def refit_key(name: str, branch: int) -> str:
    """Record key of a refit figure (``name`` is ``loss`` or ``train_seconds``).

    ``refit_<name>`` for the trunk and soup branch 0, ``refit_<name>_<b>`` for branch b:
    tracking logs every phase and branch with epoch steps, so each needs keys of its own.
    """
    return f"refit_{name}_{branch}" if branch else f"refit_{name}"


def refit_loss_branch(key: str) -> int | None:
    """The soup branch whose loss ``key`` records (0: trunk and branch 0); None otherwise."""
    base = refit_key("loss", 0)
    if key == base:
        return 0
    suffix = key.removeprefix(f"{base}_")
    return int(suffix) if suffix != key and suffix.isdigit() else None


def branch_seed(seed: int, branch: int) -> int:
    """Seed of a soup branch's batches and dropout (branch 0 keeps the run's own stream)."""
    if branch == 0:
        return seed
    return int(np.random.SeedSequence([seed, branch]).generate_state(1)[0])


def soup_plan(config: TrainConfig, epochs: int) -> tuple[int, int]:
    """(fork epoch, branches) of a refit of ``epochs`` epochs; (0, 1) means no soup."""
    fork = round(config.soup_fork * epochs)
    if config.soup_branches < 2 or not 1 <= fork < epochs:
        return 0, 1
    return fork, config.soup_branches
