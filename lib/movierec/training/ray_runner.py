"""Ray Train runner: the same ``fit`` on N workers (DDP over gloo on CPU, NCCL on GPU).

Every epoch each worker reports its metrics and rank 0 attaches a checkpoint of the whole
loop state; when a worker dies, ``FailureConfig`` restarts the group, which resumes from
the latest checkpoint. Ray is imported lazily so the rest of movierec does not need it.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from movierec.config import get_settings
from movierec.data.dataset import load_sequences
from movierec.models import build_model
from movierec.training.config import TrainConfig
from movierec.training.hooks import EpochListener
from movierec.training.loop import FitResult, fit

STATE_FILE = "state.pt"
# Default for ``fit_on_ray(storage=...)``: lets a deployment (the lifecycle workflow) send Ray
# checkpoints to object storage without a flag on every command that trains.
ENV_RAY_STORAGE = "MOVIEREC_RAY_STORAGE"


class RayHooks:
    """Hooks for ``fit`` inside a Ray Train worker."""

    def __init__(self, crash_once_at_epoch: int | None = None,
                 crash_marker: Path | None = None) -> None:
        import ray.train  # noqa: PLC0415

        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self._crash_at, self._crash_marker = crash_once_at_epoch, crash_marker

    def wrap(self, objective: nn.Module) -> nn.Module:
        """DDP-wrap the objective (gloo on CPU, NCCL on GPU)."""
        import ray.train.torch  # noqa: PLC0415

        return ray.train.torch.prepare_model(objective, move_to_device=True)

    def device(self, config: TrainConfig) -> torch.device:
        """The device Ray assigned to this worker."""
        import ray.train.torch  # noqa: PLC0415

        del config
        return ray.train.torch.get_device()

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The latest reported checkpoint (after a restart), if any."""
        import ray.train  # noqa: PLC0415

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return torch.load(Path(folder) / STATE_FILE, weights_only=False,
                              map_location="cpu")

    def report(self, record: dict[str, Any], state: dict[str, Any]) -> None:
        """Report the epoch's metrics; rank 0 attaches the checkpoint."""
        import ray.train  # noqa: PLC0415

        metrics = {k: float(v) for k, v in record.items()}
        if self.rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(state, Path(folder) / STATE_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)
        self._maybe_crash(int(record["epoch"]))

    def _maybe_crash(self, epoch: int) -> None:
        """Test hook: fail once at a given epoch, to exercise resume-after-failure."""
        if self._crash_at is None or epoch != self._crash_at or self._crash_marker is None:
            return
        if self.rank == 0 and not self._crash_marker.exists():
            self._crash_marker.write_text("crashed once\n")
            raise RuntimeError(f"injected failure after epoch {epoch}")


def worker_data(source: str, generation: str | None) -> Path:
    """A worker's own copy of the prepared data, of the generation the driver read.

    The nodes of a cluster share no disk, so each worker downloads an ``s3://`` folder for
    itself; an upload to the same prefix meanwhile would have it train on other data.

    Raises:
        RuntimeError: The data changed between the driver's read and the worker's.
    """
    from movierec.storage import materialize  # noqa: PLC0415

    folder = materialize(source)
    if generation is not None and folder.name != generation:
        raise RuntimeError(f"{source} changed as training started: the driver read "
                           f"{generation}, this worker {folder.name}; train again")
    return folder


def _train_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker."""
    import ray.train  # noqa: PLC0415

    config = TrainConfig.model_validate(loop_config["config"])
    torch.set_num_threads(config.threads or 1)
    data = load_sequences(worker_data(loop_config["data"], loop_config.get("generation")))
    marker = loop_config.get("crash_marker")
    hooks = RayHooks(loop_config.get("crash_once_at_epoch"), Path(marker) if marker else None)
    result = fit(config, data, hooks, progress=False)
    final = {"final": 1.0, "best_epoch": float(result.best_epoch), "seconds": result.seconds,
             "seconds_to_best": result.seconds_to_best}
    # Every worker must call report the same number of times; rank 0 carries the weights.
    if hooks.rank == 0:
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"model": result.model.state_dict(), "valid": result.valid,
                        "test": result.test, "history": result.history,
                        "refit_history": result.refit_history, "resumes": result.resumes},
                       Path(folder) / "final.pt")
            ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(folder))
    else:
        ray.train.report(final)


def init_ray(**options: Any) -> None:
    """``ray.init(**options)`` unless Ray runs, keeping this process's SIGTERM handler.

    ``ray.init`` replaces it with one that calls ``sys.exit``: the CLI's handler turns
    SIGTERM into an interruption, so a stopped pod's tracked run ends KILLED (exit 130),
    which a bare ``SystemExit`` would skip.
    """
    import ray  # noqa: PLC0415

    if ray.is_initialized():
        return
    handler = signal.getsignal(signal.SIGTERM)
    ray.init(**options)
    if threading.current_thread() is threading.main_thread() and handler is not None:
        signal.signal(signal.SIGTERM, handler)


def run_storage(storage: str | Path | None) -> tuple[str, Any]:
    """Ray Train's ``(storage_path, storage_filesystem)`` for a folder or ``s3://`` URI.

    ``None`` falls back to ``$MOVIEREC_RAY_STORAGE``, then ``$MOVIEREC_HOME/ray_results``. On a
    multi-node cluster the workers' checkpoints must reach shared storage: s3:// does that.
    """
    from movierec.storage import pyarrow_location  # noqa: PLC0415

    chosen = storage or os.environ.get(ENV_RAY_STORAGE) or get_settings().home / "ray_results"
    return pyarrow_location(str(chosen))


def fit_on_ray(config: TrainConfig, data: str | Path, workers: int, *, use_gpu: bool = False,
               address: str | None = None, max_failures: int = 2,
               crash_once_at_epoch: int | None = None,
               storage: str | Path | None = None, progress: bool = False,
               on_epoch: EpochListener | None = None,
               driver_copy: Path | None = None) -> FitResult:
    """Train with ``workers`` Ray Train workers and return the rank-0 result.

    Args:
        config: The training configuration.
        data: Prepared data: a folder every worker can read (one machine, a shared disk),
            or ``s3://BUCKET/PREFIX``, which each worker downloads for itself (a cluster
            whose nodes share no disk; they need the object store's credentials).
        workers: Number of DDP workers.
        use_gpu: One GPU per worker (NCCL backend).
        address: Ray cluster address; ``None`` starts a local Ray.
        max_failures: Restarts from the latest checkpoint before giving up.
        crash_once_at_epoch: Test hook; a worker fails once after this epoch.
        storage: Checkpoints and results: a folder or ``s3://BUCKET/PREFIX`` (see
            :func:`run_storage`).
        progress: A progress bar on the driver, one epoch at a time, as in-process.
        on_epoch: Hears rank 0's record of each epoch on the driver, as it finishes
            (called from a thread of the driver).
        driver_copy: ``materialize(data)`` when the caller already made it: for ``s3://``
            the workers must read its generation, so the run is described by the data it
            trains on (else the manifest is read here).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # noqa: PLC0415
    from ray.train.torch import TorchTrainer  # noqa: PLC0415

    from movierec.storage import is_remote, materialize  # noqa: PLC0415
    from movierec.training.ray_progress import DriverProgress, relayed_epochs  # noqa: PLC0415

    if config.device != "auto" and (config.device == "cuda") != use_gpu:
        raise ValueError(f"device {config.device!r} with use_gpu={use_gpu}: on Ray the workers "
                         "train where Ray places them; ask for GPUs with --gpu (use_gpu) and "
                         "leave device at 'auto'")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Resolved first: missing object-store credentials fail before Ray starts.
    storage_path, storage_filesystem = run_storage(storage)
    if address:
        init_ray(address=address, log_to_driver=False)
    else:
        init_ray(num_cpus=max(2, workers), include_dashboard=False, log_to_driver=False)
    local_root = get_settings().home / "ray_results"
    name = f"train-{config.model.kind}-{int(time.time() * 1000)}"
    source = str(data) if is_remote(data) else str(Path(data).resolve())
    # The driver's copy: its generation names the folder, and the workers must read it.
    local = driver_copy or materialize(source)
    loop_config: dict[str, Any] = {"config": config.model_dump(), "data": source,
                                   "generation": local.name if is_remote(data) else None}
    if crash_once_at_epoch is not None:
        local_root.mkdir(parents=True, exist_ok=True)
        loop_config.update(crash_once_at_epoch=crash_once_at_epoch,
                           crash_marker=str(local_root / f"{name}.crashed"))
    bar = DriverProgress(config, workers, enabled=progress)
    listeners = [bar] if on_epoch is None else [bar, on_epoch]
    try:
        with relayed_epochs(*listeners) as relay:
            trainer = TorchTrainer(
                _train_worker, train_loop_config=loop_config,
                scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
                run_config=RunConfig(storage_path=storage_path,
                                     storage_filesystem=storage_filesystem, name=name,
                                     failure_config=FailureConfig(max_failures=max_failures),
                                     checkpoint_config=CheckpointConfig(num_to_keep=2),
                                     callbacks=[relay]))
            result = trainer.fit()
    finally:
        bar.close()
    if result.error is not None:
        raise RuntimeError(f"Ray training failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise RuntimeError("Ray training ended without a final checkpoint")
    with result.checkpoint.as_directory() as folder:
        final = torch.load(Path(folder) / "final.pt", weights_only=False, map_location="cpu")
    sequences = load_sequences(local)
    model = build_model(config.model, sequences.n_users, sequences.n_items)
    model.load_state_dict(final["model"])
    return FitResult(model=model, best_epoch=int(result.metrics["best_epoch"]),
                     valid=final["valid"], test=final["test"], history=final["history"],
                     # The worker's training time, as the in-process runner reports it
                     # (Ray's start-up and scheduling are not training).
                     seconds=float(result.metrics["seconds"]),
                     seconds_to_best=float(result.metrics["seconds_to_best"]),
                     refit_history=final["refit_history"], resumes=final["resumes"])
