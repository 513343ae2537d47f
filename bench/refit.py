"""Does refitting on train + valid help? Decided on validation data only (bench).

``TrainConfig.refit`` retrains the selected configuration on each user's training items
plus their validation item, then tests that model. Whether it helps must not be decided on
the test items, so this benchmark shifts every user one step back in time:

- pseudo-train = train without its last item,
- pseudo-valid = the last training item (selection and early stopping),
- pseudo-test = the real validation item (the real test item is dropped, never read).

It then trains the default configuration with ``refit`` off and on for each seed (the
selection phase is identical, as training is deterministic under a seed) and compares the
two models on the pseudo-test, paired by seed. Run:

    .venv/bin/python bench/refit.py --seeds 0,1,2,3,4
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
from _common import machine_info, write_json
from quality import prepared_folder

from movierec.data.dataset import SequenceData, load_sequences
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
    return replace(data, folder=folder, train=train, valid_item=valid, test_item=test,
                   _train_counts=None)


def paired(off: list[float], on: list[float]) -> dict[str, Any]:
    """Means, the mean paired gain, its standard error and the number of seeds it won."""
    gains = [b - a for a, b in zip(off, on, strict=True)]
    spread = statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else 0.0
    return {"off": statistics.fmean(off), "on": statistics.fmean(on),
            "gain": statistics.fmean(gains), "gain_stderr": spread,
            "seeds_won": sum(g > 0 for g in gains), "seeds": len(gains)}


def markdown(summary: dict[str, dict[str, Any]]) -> str:
    """Pseudo-test NDCG@10 without and with refit, mean over seeds and paired gain."""
    lines = ["| pseudo-test NDCG@10 | refit off | refit on | gain (± s.e.) | seeds won |",
             "| --- | --- | --- | --- | --- |"]
    for protocol, row in summary.items():
        lines.append(f"| {protocol} | {row['off']:.4f} | {row['on']:.4f} | "
                     f"{row['gain']:+.4f} ± {row['gain_stderr']:.4f} | "
                     f"{row['seeds_won']}/{row['seeds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, help="cap epochs (smoke runs only)")
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/refit.json"))
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in --out and add the seeds it lacks")
    args = parser.parse_args()
    data = shift_back(load_sequences(prepared_folder("ml-100k", args.workdir)),
                      args.workdir / "ml-100k-shifted")
    runs = json.loads(args.out.read_text())["runs"] if args.resume and args.out.exists() else []
    done = {r["seed"] for r in runs}
    for seed in (int(s) for s in args.seeds.split(",") if int(s) not in done):
        raw: dict[str, Any] = {"seed": seed, "threads": args.threads, "device": "cpu"}
        if args.max_epochs:
            raw["epochs"] = args.max_epochs
        for refit in (False, True):
            started = time.perf_counter()
            result = fit(TrainConfig.model_validate({**raw, "refit": refit}), data,
                         progress=False)
            runs.append({"seed": seed, "refit": refit, "best_epoch": result.best_epoch,
                         "refit_epochs": result.refit_epochs,
                         "wall_seconds": time.perf_counter() - started,
                         "pseudo_valid": result.valid, "pseudo_test": result.test})
            print(f"seed {seed} refit {'on ' if refit else 'off'}: best epoch "
                  f"{result.best_epoch}, pseudo-test sampled "
                  f"{result.test['sampled']['ndcg@10']:.4f} full "
                  f"{result.test['full']['ndcg@10']:.4f}, {runs[-1]['wall_seconds']:.0f} s",
                  flush=True)
    summary = {protocol: paired(
        [r["pseudo_test"][protocol]["ndcg@10"] for r in runs if not r["refit"]],
        [r["pseudo_test"][protocol]["ndcg@10"] for r in runs if r["refit"]])
        for protocol in METRICS}
    report = {"split": "nested: pseudo-test = valid item; the test item is not read",
              "config": TrainConfig().model_dump(exclude={"refit", "seed"}),
              "machine": machine_info(["torch"], ["training/loop.py", "models/sampling.py"]),
              "summary": summary, "runs": runs, "markdown": markdown(summary)}
    write_json(report, args.out)
    args.out.with_suffix(".md").write_text(report["markdown"] + "\n")
    print(report["markdown"])


if __name__ == "__main__":
    main()
