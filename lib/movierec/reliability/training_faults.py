"""Training fault: ``kill -9`` of ``movierec train`` mid-run, then ``--resume``.

Three runs of the same config and seed, each a ``movierec train`` subprocess: one
uninterrupted, one killed once its checkpoint has reached a given epoch, and the same
command again with ``--resume``. The resumed run must continue after the checkpoint (not
start over) and end within tolerance of the uninterrupted run's validation metric.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from movierec.reliability.harness import FaultSizes, tiny_train_config

METRIC_TOLERANCE = 0.01  # absolute full-ranking NDCG@10 on the validation users


def _checkpoint_epoch(path: Path) -> int:
    """The last finished epoch in a checkpoint file (0 when there is none yet)."""
    import torch  # noqa: PLC0415 - only this scenario needs torch

    if not path.exists():
        return 0
    try:
        return int(torch.load(path, weights_only=False)["loop"]["epoch"])
    except (OSError, RuntimeError, EOFError, KeyError):
        return 0  # replaced while we read it: look again on the next poll


def _train(data: Path, workdir: Path, name: str, sizes: FaultSizes, env: dict[str, str],
           *extra: str) -> subprocess.Popen[bytes]:
    config = workdir / "config.json"
    config.write_text(tiny_train_config(sizes.resume_epochs).model_dump_json())
    argv = [sys.executable, "-m", "movierec.cli.main", "train", "--data", str(data),
            "--config", str(config), "--quiet", "--metrics-out",
            str(workdir / f"{name}.json"), *extra]
    with (workdir / f"{name}.log").open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **env})


def _finish(process: subprocess.Popen[bytes], workdir: Path, name: str) -> dict[str, Any]:
    if process.wait(timeout=600) != 0:
        tail = (workdir / f"{name}.log").read_text()[-1500:]
        raise RuntimeError(f"movierec train ({name}) exited {process.returncode}: {tail}")
    return json.loads((workdir / f"{name}.json").read_text())


def kill_training_mid_run(data: Path, workdir: Path, sizes: FaultSizes,
                          env: dict[str, str]) -> dict[str, Any]:
    """Kill training after ``sizes.resume_kill_after`` epochs, resume, compare (see module).

    Args:
        data: A prepared data folder.
        workdir: Logs, configs, metrics and the checkpoint folder.
        sizes: Epochs and the kill point.
        env: Environment of the training processes (MOVIEREC_HOME, MLflow).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = workdir / "checkpoints"
    checkpoint = checkpoints / "checkpoint.pt"
    # The uninterrupted reference runs alongside the run that is killed (2 cores).
    reference = _train(data, workdir, "uninterrupted", sizes, env)
    victim = _train(data, workdir, "killed", sizes, env, "--checkpoint-dir", str(checkpoints))
    started = time.monotonic()
    while _checkpoint_epoch(checkpoint) < sizes.resume_kill_after:
        if victim.poll() is not None:
            raise RuntimeError(f"training exited ({victim.returncode}) before epoch "
                               f"{sizes.resume_kill_after}: see {workdir / 'killed.log'}")
        if time.monotonic() - started > 300:
            raise TimeoutError("no checkpoint within 300 s")
        time.sleep(0.02)
    victim.kill()
    victim.wait(10)
    killed_at_epoch = _checkpoint_epoch(checkpoint)
    resumed_started = time.monotonic()
    resumed = _train(data, workdir, "resumed", sizes, env, "--checkpoint-dir",
                     str(checkpoints), "--resume")
    first_seen = None  # the first epoch the resumed run writes: proof it did not start over
    while resumed.poll() is None:
        epoch = _checkpoint_epoch(checkpoint)
        if epoch != killed_at_epoch and first_seen is None:
            first_seen = epoch
        time.sleep(0.02)
    resumed_result = _finish(resumed, workdir, "resumed")
    resumed_s = time.monotonic() - resumed_started
    full = _finish(reference, workdir, "uninterrupted")
    metric_full = float(full["valid"]["full"]["ndcg@10"])
    metric_resumed = float(resumed_result["valid"]["full"]["ndcg@10"])
    result = {"epochs": sizes.resume_epochs, "killed_after_epoch": killed_at_epoch,
              "first_epoch_after_resume": first_seen,
              "epochs_redone": (first_seen - killed_at_epoch - 1) if first_seen else None,
              "valid_ndcg10_uninterrupted": round(metric_full, 5),
              "valid_ndcg10_resumed": round(metric_resumed, 5),
              "difference": round(abs(metric_full - metric_resumed), 6),
              "tolerance": METRIC_TOLERANCE,
              "best_epoch_uninterrupted": full["best_epoch"],
              "best_epoch_resumed": resumed_result["best_epoch"],
              "resumed_run_s": round(resumed_s, 1), "impact_s": round(resumed_s, 1),
              "requests": 0, "failed": 0, "lost": 0}
    problems = []
    if first_seen is not None and first_seen <= killed_at_epoch:
        problems.append(f"the resumed run started over (wrote epoch {first_seen})")
    if abs(metric_full - metric_resumed) > METRIC_TOLERANCE:
        problems.append(f"resumed NDCG@10 {metric_resumed:.4f} vs uninterrupted "
                        f"{metric_full:.4f}: beyond {METRIC_TOLERANCE}")
    result["problems"], result["passed"] = problems, not problems
    return result
