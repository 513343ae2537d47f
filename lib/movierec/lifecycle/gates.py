"""The offline gate: decides whether a candidate may go to staging.

The candidate and the production model are both scored, as exported bundles (what would
actually be served), on one frozen panel: users who never send replayed traffic, so their
sequences and held-out items are the same in every data version and no feedback leaks into
either model's training. The gate passes when the candidate's full-ranking NDCG@10 beats
production's by ``min_gain`` (optionally with a paired bootstrap interval above zero), or
when there is no production model yet; parity checks of the export must pass in any case.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from movierec.evaluation.metrics import bootstrap_ci, ndcg_at_k, pessimistic_ranks
from movierec.lifecycle.config import GateConfig

SCORE_BATCH = 256


@dataclass(frozen=True)
class Panel:
    """Frozen evaluation users, in original MovieLens ids.

    Attributes:
        user_ids: One entry per user.
        histories: Each user's movies before the held-out one, oldest first.
        targets: The held-out movie per user.
        tie_tails: How many of each history's newest movies share its newest timestamp
            (``data.tie_orders``), so that a bundle with ``tie_orders`` is scored as it
            serves; None when the data has no timestamps.
    """

    user_ids: np.ndarray
    histories: list[np.ndarray]
    targets: np.ndarray
    tie_tails: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.user_ids.size)


@dataclass(frozen=True)
class GateResult:
    """What the gate decided and the numbers behind it (saved in the run's summary)."""

    passed: bool
    reason: str
    users: int
    candidate_ndcg: float | None  # None: not scored (its export failed parity)
    production_ndcg: float | None
    gain: float | None
    gain_ci: tuple[float, float] | None
    parity_passed: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def offline_gate(candidate: np.ndarray | None, production: np.ndarray | None,
                 config: GateConfig, parity_passed: bool = True, seed: int = 0) -> GateResult:
    """Decide from per-user NDCG@10 of candidate and production on the same panel.

    Args:
        candidate: Per-user NDCG@10 of the candidate; None when it was not scored because
            its export failed parity (the gate then fails, and reports no invented score).
        production: Per-user NDCG@10 of production on the same users, or None when no
            model is in production yet.
        config: Thresholds.
        parity_passed: Whether the export's parity checks passed.
        seed: Seed of the bootstrap resampling.

    With ``require_significant``, the gain must have the lower end of its two-sided
    ``level`` interval above 0: a one-sided test at ``(1 - level) / 2`` (2.5% for 95%).
    """
    if candidate is None:
        if parity_passed:
            raise ValueError("a candidate that passed parity must be scored")
        users = 0 if production is None else int(production.size)
        return GateResult(False, "export parity checks failed: the candidate was not scored",
                          users, None,
                          None if production is None else float(production.mean()),
                          None, None, False)
    cand = float(np.mean(candidate)) if candidate.size else float("nan")
    if not np.isfinite(candidate).all():
        return GateResult(False, "the candidate's panel NDCG@10 is not finite (a diverged "
                          "model?)", int(candidate.size), cand,
                          None if production is None else float(production.mean()),
                          None, None, parity_passed)
    if production is None:
        reason = ("no production model yet" if parity_passed
                  else "export parity checks failed")
        return GateResult(parity_passed, reason, int(candidate.size), cand, None, None, None,
                          parity_passed)
    if production.shape != candidate.shape:
        raise ValueError(f"candidate ({candidate.shape}) and production ({production.shape}) "
                         "must be scored on the same panel")
    diff = candidate - production
    gain = float(diff.mean())
    low, high = bootstrap_ci(diff, config.bootstrap_resamples, config.level, seed)
    beats = gain > config.min_gain and (low > 0 or not config.require_significant)
    if not parity_passed:
        passed, reason = False, "export parity checks failed"
    elif beats:
        passed, reason = True, (f"NDCG@10 gain {gain:+.4f} over production "
                                f"({config.level:.0%} CI {low:+.4f}..{high:+.4f})")
    else:
        passed, reason = False, (f"NDCG@10 gain {gain:+.4f} does not beat production by "
                                 f"more than {config.min_gain:g} ({config.level:.0%} CI "
                                 f"{low:+.4f}..{high:+.4f})")
    return GateResult(passed, reason, int(candidate.size), cand, float(production.mean()),
                      gain, (low, high), parity_passed)


def full_ranks(scores: np.ndarray, histories: list[np.ndarray], targets: np.ndarray) -> np.ndarray:
    """Pessimistic 0-based rank of each target among all items the user has not seen.

    Args:
        scores: ``[B, n_items + 1]`` (column 0 is padding and never ranked).
        histories: Seen item indices per row (excluded from the ranking).
        targets: Held-out item index per row.
    """
    scores = scores.astype(np.float64, copy=True)
    rows = np.arange(len(targets))
    positive = scores[rows, targets].copy()
    scores[:, 0] = -np.inf
    scores[rows, targets] = -np.inf  # the target does not compete with itself
    for row, seen in enumerate(histories):
        scores[row, seen[seen != targets[row]]] = -np.inf
    # As evaluation ranks: a NaN score counts against the model, never for it.
    return pessimistic_ranks(positive, scores)


def bundle_panel_ndcg(bundle_dir: Path, panel: Panel) -> np.ndarray:
    """Per-user full-ranking NDCG@10 of a bundle's fp32 ONNX model on ``panel``.

    Scored as the bundle serves: a model with ``tie_orders`` averages the orders of each
    history's tied newest movies.

    Raises:
        ValueError: A panel target is unknown to the bundle (the panel must be frozen).
    """
    from movierec.serving.engine import OnnxModel, load_bundle  # noqa: PLC0415 - onnxruntime

    bundle = load_bundle(Path(bundle_dir), "fp32", threads=1)
    assert isinstance(bundle.model, OnnxModel)  # in process: it scores, not only ranks
    catalog = bundle.catalog
    targets, unknown = catalog.to_indices([int(t) for t in panel.targets])
    if unknown:
        raise ValueError(f"bundle {bundle_dir} does not know panel movies {unknown[:5]}: the "
                         "panel must only hold movies of the base data")
    users = np.asarray([catalog.user_idx_by_id.get(int(u), 0) for u in panel.user_ids])
    histories = [catalog.to_indices([int(m) for m in h])[0] for h in panel.histories]
    out = np.empty(len(panel), dtype=np.float64)
    for start in range(0, len(panel), SCORE_BATCH):
        stop = start + SCORE_BATCH
        ties = None if panel.tie_tails is None else panel.tie_tails[start:stop]
        scores = bundle.model.scores(users[start:stop], histories[start:stop], ties)
        ranks = full_ranks(scores, histories[start:stop], targets[start:stop])
        out[start:stop] = ndcg_at_k(ranks, 10)
    return out
