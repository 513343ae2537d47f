"""Random search over SSE-PT-CE configurations, many runs at once (bench, GPU or CPU).

Stage 1 trains random configurations (plus the current default as a control) with seed 0
until its time budget is spent; stage 2 trains the best ``--top`` of them by validation
full-ranking NDCG@10 with more seeds. Selection uses validation only: test figures are
recorded, never used to choose. Every finished run is appended to ``runs.jsonl`` at once (a
killed sweep keeps what it finished); ``summary.json`` ranks configurations by mean
validation NDCG@10 over seeds. Run (with the prepared data of ``movierec data prepare``):

    .venv/bin/python bench/sweep.py --data .cache/bench/ml-100k --out /tmp/sweep --workers 2

Timings from a GPU sweep say nothing about the 2-core machine: re-time a winner there with
``bench/quality.py`` before making it the default.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_common.py
from _common import machine_info, write_json

# Choices per key, sampled independently; "model." keys go to ModelConfig.
SPACE: dict[str, list[Any]] = {
    "model.max_len": [50, 100, 200],
    "model.d_item": [32, 50, 64, 100, 128],
    "model.d_user": [16, 32, 50, 64, 100],
    "model.n_blocks": [1, 2, 3],
    "model.n_heads": [1, 2],
    "model.dropout": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    "model.attention_dropout": [0.0, 0.1, 0.2],
    "model.norm_first": [True, False],
    "model.sse_prob_user": [0.5, 0.8, 0.92, 0.98],
    "model.sse_prob_item": [0.0, 0.05, 0.1, 0.2, 0.3],
    "model.ce_mask_seen": ["window", "prefix"],
    "model.sse_pt_plus_plus": [False, True],
    "lr": [1e-3, 2e-3, 4e-3, 8e-3],
    "batch_size": [16, 32, 64, 128],
    "weight_decay": [0.0, 1e-5, 1e-4],
}

_DATA: Any = None  # the worker process's SequenceData, loaded once


def sample(rng: random.Random) -> dict[str, Any]:
    """One random configuration (nested like TrainConfig), valid widths only."""
    while True:
        flat = {key: rng.choice(choices) for key, choices in SPACE.items()}
        if (flat["model.d_item"] + flat["model.d_user"]) % flat["model.n_heads"] == 0:
            return nest(flat)


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"model.x": 1, "lr": 2}`` -> ``{"model": {"x": 1}, "lr": 2}``."""
    raw: dict[str, Any] = {"model": {}}
    for key, value in flat.items():
        if key.startswith("model."):
            raw["model"][key[6:]] = value
        else:
            raw[key] = value
    return raw


def _load(folder: str) -> None:
    global _DATA
    import torch

    from movierec.data.dataset import load_sequences
    torch.set_num_threads(1)
    _DATA = load_sequences(Path(folder))


def train(raw: dict[str, Any], seed: int, device: str, max_epochs: int) -> dict[str, Any]:
    """Fit one configuration in this worker; figures or the error, never an exception."""
    from movierec.training.config import TrainConfig
    from movierec.training.loop import fit
    config = TrainConfig.model_validate({**raw, "seed": seed, "device": device, "threads": 1,
                                         "epochs": max_epochs})
    started = time.perf_counter()
    try:
        result = fit(config, _DATA, progress=False)
    except Exception:  # a bad configuration must not end the sweep
        return {"config": raw, "seed": seed, "error": traceback.format_exc(limit=4)}
    return {"config": raw, "seed": seed, "best_epoch": result.best_epoch,
            "epochs_run": len(result.history), "seconds": time.perf_counter() - started,
            "valid": {p: result.valid[p]["ndcg@10"] for p in ("sampled", "full")},
            "test": {p: result.test[p]["ndcg@10"] for p in ("sampled", "full")}}


def run_all(pool: ProcessPoolExecutor, tasks: list[tuple[dict, int]], deadline: float,
            args: argparse.Namespace, log: Any) -> list[dict[str, Any]]:
    """Keep ``workers`` runs in flight until the tasks or the time run out."""
    pending: set[Future] = set()
    done_runs: list[dict[str, Any]] = []
    queue = list(tasks)
    while queue or pending:
        while queue and len(pending) < args.workers and time.time() < deadline:
            raw, seed = queue.pop(0)
            pending.add(pool.submit(train, raw, seed, args.device, args.max_epochs))
        if not pending:
            break
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            run = future.result()
            done_runs.append(run)
            log.write(json.dumps(run) + "\n")
            log.flush()
            if "error" not in run:
                print(f"[{len(done_runs)}] seed {run['seed']} valid full "
                      f"{run['valid']['full']:.4f} epochs {run['epochs_run']} "
                      f"{run['seconds']:.0f}s", flush=True)
            else:
                print(f"[{len(done_runs)}] error: {run['error'].splitlines()[-1]}", flush=True)
    return done_runs


def rank(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Configurations by mean validation full NDCG@10 over their seeds, best first.

    Those run with several seeds come before single-seed ones: a single seed's lucky draw
    (noise of about 0.005 on ml-100k) should not outrank a mean.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if "error" not in run:
            groups.setdefault(json.dumps(run["config"], sort_keys=True), []).append(run)
    rows = []
    for key, mine in groups.items():
        def mean(split: str, protocol: str, mine: list = mine) -> float:
            return statistics.fmean(r[split][protocol] for r in mine)
        rows.append({"config": json.loads(key), "seeds": sorted(r["seed"] for r in mine),
                     "valid_full": mean("valid", "full"),
                     "valid_sampled": mean("valid", "sampled"),
                     "test_full": mean("test", "full"), "test_sampled": mean("test", "sampled"),
                     "epochs_run": statistics.fmean(r["epochs_run"] for r in mine),
                     "seconds": statistics.fmean(r["seconds"] for r in mine)})
    return sorted(rows, key=lambda r: (len(r["seeds"]) > 1, r["valid_full"]), reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--stage1-seconds", type=float, default=300.0)
    parser.add_argument("--stage2-seconds", type=float, default=200.0)
    parser.add_argument("--top", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=3, help="extra seeds in stage 2")
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--space-seed", type=int, default=0)
    parser.add_argument("--configs", type=Path,
                        help="JSON list of configurations to train with seeds 0..--seeds "
                             "instead of a random search (one stage, both budgets)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.space_seed)
    default: dict[str, Any] = {"model": {}}
    context = get_context("spawn")  # CUDA cannot be forked
    with (ProcessPoolExecutor(args.workers, mp_context=context, initializer=_load,
                              initargs=(str(args.data),)) as pool,
          (args.out / "runs.jsonl").open("a") as log):
        if args.configs:
            grid = json.loads(args.configs.read_text())
            tasks = [(raw, seed) for seed in range(args.seeds + 1) for raw in grid]
            budget = args.stage1_seconds + args.stage2_seconds
            runs = run_all(pool, tasks, time.time() + budget, args, log)
        else:
            stage1 = [(default, 0)] + [(sample(rng), 0) for _ in range(2000)]
            runs = run_all(pool, stage1, time.time() + args.stage1_seconds, args, log)
            best = [row["config"] for row in rank(runs)[: args.top]]
            if default not in best:
                best.append(default)
            stage2 = [(raw, seed) for seed in range(1, args.seeds + 1) for raw in best]
            runs += run_all(pool, stage2, time.time() + args.stage2_seconds, args, log)
    ranked = rank(runs)
    summary = {"device": args.device, "workers": args.workers, "runs": len(runs),
               "errors": sum("error" in r for r in runs),
               "machine": machine_info(["torch", "numpy"], ["training/loop.py"]),
               "ranked": ranked[:20]}
    write_json(summary, args.out / "summary.json")
    for row in ranked[:10]:
        print(f"valid full {row['valid_full']:.4f} sampled {row['valid_sampled']:.4f} "
              f"seeds {row['seeds']} epochs {row['epochs_run']:.0f}: {row['config']}")


if __name__ == "__main__":
    main()
