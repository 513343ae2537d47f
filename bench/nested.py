"""Compare training configurations on a nested split that never reads the test items.

Choices about the default training (refit on train + valid, shuffling tied timestamps, the
refit's weight soup) must not be made on the test items, so this benchmark shifts every
user one step back in time:

- pseudo-train = train without its last item,
- pseudo-valid = the last training item (selection and early stopping),
- pseudo-test = the real validation item (the real test item is dropped, never read).

Each variant is a JSON of ``TrainConfig`` overrides; the first is the baseline, and every
other one is compared with it on the pseudo-test, paired by seed. Run:

    .venv/bin/python bench/nested.py --seeds 0,1,2,3,4 \
        --variant 'no-refit={"refit": false}' --variant 'default={}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, resumable_runs, write_json
from quality import prepared_folder

from movierec.data.dataset import SequenceData, load_sequences
from movierec.evaluation.metrics import bootstrap_ci, ndcg_at_k
from movierec.evaluation.protocols import RankedUsers
from movierec.training.config import TrainConfig
from movierec.training.loop import fit

METRICS = ("sampled", "full")


def shift_back(data: SequenceData, folder: Path) -> SequenceData:
    """The nested split: pseudo-test = valid item, pseudo-valid = last train item.

    ``folder`` receives the pseudo-split's fixed sampled negatives (kept apart from the real
    split's). Users with fewer than two training items have no pseudo-valid and no
    pseudo-test.
    """
    folder.mkdir(parents=True, exist_ok=True)
    long_enough = np.array([len(items) >= 2 for items in data.train])
    long_enough[0] = False
    train = [items[:-1] if keep else items for items, keep in zip(data.train, long_enough,
                                                                    strict=True)]
    valid = np.array([items[-1] if keep else 0 for items, keep in zip(data.train, long_enough,
                                                                        strict=True)])
    test = np.where(long_enough, data.valid_item, 0)
    times, valid_time = None, None
    if data.train_times is not None:  # the timestamps move with the items
        pairs = list(zip(data.train_times, long_enough, strict=True))
        times = [t[:-1] if keep else t for t, keep in pairs]
        valid_time = np.array([t[-1] if keep else 0 for t, keep in pairs])
    return replace(data, folder=folder, train=train, valid_item=valid, test_item=test,
                   train_times=times, valid_time=valid_time, _train_counts=None)


def paired(base: list[float], other: list[float]) -> dict[str, Any]:
    """Means, the mean paired gain, its standard error and the number of seeds it won.

    The standard error counts seeds only: every seed is scored on the same pseudo-test
    items, so the noise of those items is in ``user_interval`` instead.
    """
    gains = [b - a for a, b in zip(base, other, strict=True)]
    spread = statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else 0.0
    return {"baseline": statistics.fmean(base), "variant": statistics.fmean(other),
            "gain": statistics.fmean(gains), "gain_stderr": spread,
            "seeds_won": sum(g > 0 for g in gains), "seeds": len(gains)}


def user_interval(base: list[list[float]], other: list[list[float]]) -> tuple[float, float]:
    """95% bootstrap interval over users of the seed-averaged gain ([seeds][users] NDCG).

    Resampling the users (the pseudo-test items) adds the noise that every seed shares:
    on ml-100k it is about as large as the gains of the choices compared here.
    """
    gains = (np.asarray(other, dtype=np.float64) - np.asarray(base, dtype=np.float64))
    return bootstrap_ci(gains.mean(axis=0), n_resamples=2000)


def summarize_runs(runs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Each non-baseline variant against the first, per protocol, on the seeds both have."""
    by_name = {n: {r["seed"]: r for r in runs if r["variant"] == n} for n in names}
    summary: dict[str, Any] = {}
    for name in names[1:]:
        seeds = sorted(by_name[names[0]].keys() & by_name[name].keys())
        if not seeds:
            continue
        pair = (by_name[names[0]], by_name[name])
        summary[name] = {}
        for protocol in METRICS:
            row = paired(*([runs[s]["pseudo_test"][protocol]["ndcg@10"] for s in seeds]
                           for runs in pair))
            # Runs made before per-user scores were recorded have no interval.
            if all("pseudo_test_per_user" in runs[s] for runs in pair for s in seeds):
                row["gain_ci95_users"] = user_interval(*(
                    [runs[s]["pseudo_test_per_user"][protocol] for s in seeds]
                    for runs in pair))
            summary[name][protocol] = row
    return summary


def markdown(summary: dict[str, Any], baseline: str) -> str:
    """Pseudo-test NDCG@10 of each variant against the baseline, mean over seeds."""
    lines = [f"| variant (vs {baseline}) | pseudo-test NDCG@10 | {baseline} | variant | "
             "gain (± s.e. over seeds) | 95% interval over users | seeds won |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, rows in summary.items():
        for protocol, row in rows.items():
            low, high = row.get("gain_ci95_users", (None, None))
            interval = f"{low:+.4f} to {high:+.4f}" if low is not None else "-"
            lines.append(f"| {name} | {protocol} | {row['baseline']:.4f} | {row['variant']:.4f} "
                         f"| {row['gain']:+.4f} ± {row['gain_stderr']:.4f} | {interval} | "
                         f"{row['seeds_won']}/{row['seeds']} |")
    return "\n".join(lines)


def per_user_ndcg(ranked: RankedUsers | None) -> dict[str, list[float]]:
    """Each pseudo-test user's NDCG@10 under both protocols (the order of ``rank_users``)."""
    if ranked is None:
        raise ValueError("fit returned no per-user test ranks (in-process runs always do)")
    return {"sampled": np.round(ndcg_at_k(ranked.sampled_ranks, 10), 6).tolist(),
            "full": np.round(ndcg_at_k(ranked.full_ranks, 10), 6).tolist()}


# The library files whose sha256 the report pins: the training and scoring code a variant
# can change.
NESTED_LIB_FILES = ("training/loop.py", "training/soup.py", "models/sampling.py",
                    "models/losses.py", "models/config.py", "evaluation/protocols.py",
                    "data/tie_orders.py")


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=JSON`` into its name and its ``TrainConfig`` overrides (validated here)."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=JSON")
    overrides = json.loads(raw)
    TrainConfig.model_validate(overrides)  # fail before hours of training, not after
    return name, overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", type=parse_variant, action="append", required=True,
                        help="NAME=JSON of TrainConfig overrides; the first is the baseline")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, help="cap epochs (smoke runs only)")
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/nested.json"))
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in --out (same code, CPU and threads) and add "
                        "the ones it lacks")
    args = parser.parse_args()
    variants = dict(args.variant)
    data = shift_back(load_sequences(prepared_folder("ml-100k", args.workdir)),
                      args.workdir / "ml-100k-shifted")
    machine = machine_info(["torch"], NESTED_LIB_FILES, args.threads)
    runs = resumable_runs(args.out, machine, None) if args.resume and args.out.exists() else []
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, overrides in variants.items():
            if any(r["seed"] == seed and r["variant"] == name for r in runs):
                continue
            raw: dict[str, Any] = {**overrides, "seed": seed, "threads": args.threads,
                                   "device": "cpu"}
            if args.max_epochs:
                raw["epochs"] = args.max_epochs
            config = TrainConfig.model_validate(raw)
            started = time.perf_counter()
            result = fit(config, data, progress=False)
            # The whole resolved config: what a variant meant survives later default changes.
            runs.append({"variant": name, "overrides": overrides, "seed": seed,
                         "config": config.model_dump(exclude={"seed", "threads", "device"}),
                         "best_epoch": result.best_epoch, "refit_epochs": result.refit_epochs,
                         "wall_seconds": time.perf_counter() - started,
                         "pseudo_valid": result.valid, "pseudo_test": result.test,
                         "pseudo_test_per_user": per_user_ndcg(result.test_ranks)})
            print(f"seed {seed} {name}: best epoch {result.best_epoch}, pseudo-test sampled "
                  f"{result.test['sampled']['ndcg@10']:.4f} full "
                  f"{result.test['full']['ndcg@10']:.4f}, {runs[-1]['wall_seconds']:.0f} s",
                  flush=True)
            write_json({"machine": machine, "runs": runs}, args.out)  # a crash keeps them
    names = list(variants)
    summary = summarize_runs(runs, names)
    report = {"split": "nested: pseudo-test = valid item; the test item is not read",
              "variants": variants, "baseline": names[0],
              "machine": machine,
              "summary": summary, "runs": runs, "markdown": markdown(summary, names[0])}
    write_json(report, args.out)
    args.out.with_suffix(".md").write_text(report["markdown"] + "\n")
    print(report["markdown"])


if __name__ == "__main__":
    main()
