"""Compare MLflow runs, and re-evaluate one run in depth (CIs, slices)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from movierec.data.columns import TEST, VALID
from movierec.data.dataset import load_sequences
from movierec.evaluation.protocols import rank_users
from movierec.evaluation.report import comparison_table, detailed_report
from movierec.training.loop import make_scorer
from movierec.training.runner import load_run_model
from movierec.training.tracking import load_run


def unflatten_metrics(metrics: dict[str, float], prefix: str) -> dict[str, dict[str, float]]:
    """Invert ``tracking.metric_items``: ``test_full_ndcg_10`` -> ``{"full": {"ndcg@10"}}``."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("_", 2)
        if len(parts) == 3 and parts[0] == prefix and parts[1] in ("sampled", "full"):
            name = parts[2]
            if name[-1].isdigit():  # ndcg_10 -> ndcg@10; mrr stays
                head, _, k = name.rpartition("_")
                name = f"{head}@{k}"
            out.setdefault(parts[1], {})[name] = value
    return out


def compare_runs(run_ids: list[str], split: str = TEST) -> dict[str, Any]:
    """Rows of ``{"run_id", "name", "data_version", "metrics"}`` and a markdown table."""
    rows = []
    for run_id in run_ids:
        metrics, tags, _ = load_run(run_id)
        rows.append({"run_id": run_id, "name": f"{tags.get('model', '?')} ({run_id[:8]})",
                     "data_version": tags.get("data_version"),
                     "metrics": unflatten_metrics(metrics, split)})
    versions = {r["data_version"] for r in rows}
    note = "" if len(versions) <= 1 else (
        f"\n\nWarning: runs use different data versions {sorted(map(str, versions))}; "
        "their metrics are not comparable.")
    return {"split": split, "runs": rows, "markdown": comparison_table(rows) + note}


def evaluate_run(run_id: str, data_dir: Path, split: str = TEST,
                 seed: int | None = None) -> dict[str, Any]:
    """Reload a run's weights and compute the detailed report (CIs, slices) on ``split``.

    ``seed`` is that of the sampled negatives and of the bootstrap; None takes the run's own
    ``eval_seed``, so the report ranks against the negatives the run's logged metrics used.

    A refit model (``TrainConfig.refit``) learned the validation items, so its report on
    ``valid`` carries a ``warning``; the run's logged ``valid_*`` metrics are the selected
    model's and stay fair.
    """
    model, config, _, tags = load_run_model(run_id, data_dir)
    seed = config.eval_seed if seed is None else seed
    data = load_sequences(data_dir)
    ranked = rank_users(make_scorer(model, torch.device("cpu")), data, split,
                        config.model.max_len, seed=seed, tie_orders=config.model.tie_orders)
    report = {"run_id": run_id, "model": tags.get("model"),
              **detailed_report(ranked, data, split, seed=seed)}
    if split == VALID and config.baseline == "none" and config.refit:
        report["warning"] = ("this model was refit on train + valid items, so its validation "
                             "metrics are optimistic; compare models on test, or on the run's "
                             "logged valid_* metrics (those of the selected model)")
    return report
