"""``train_and_track``: run training (in-process or on Ray) and record it in MLflow."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from movierec.data.dataset import load_sequences
from movierec.data.prepare import load_card
from movierec.storage import materialize
from movierec.training.config import TrainConfig
from movierec.training.hooks import EpochListener, LocalHooks
from movierec.training.loop import FitResult, fit
from movierec.training.tracking import (
    EpochLogger,
    log_json_artifact,
    metric_items,
    tracked_run,
)


def model_name(config: TrainConfig) -> str:
    """``pop``, ``sasrec`` or ``sse-pt``, with the loss for the networks."""
    return "pop" if config.baseline == "pop" else f"{config.model.kind}-{config.model.loss}"


def run_training(config: TrainConfig, data: str | Path, workers: int = 0,
                 checkpoint_dir: Path | None = None, resume: bool = False,
                 progress: bool = True, on_epoch: EpochListener | None = None,
                 **ray_options: Any) -> FitResult:
    """Train with the in-process runner (``workers == 0``) or Ray Train (``workers >= 1``).

    ``data`` is a prepared folder or ``s3://BUCKET/PREFIX`` (on Ray, each worker downloads
    it). ``checkpoint_dir`` and ``resume`` are the in-process runner's; Ray Train checkpoints
    to its own storage and resumes by itself. ``ray_options`` go to ``fit_on_ray``. Both
    runners show a progress bar (on Ray, the driver's) and tell ``on_epoch`` each epoch's
    record as it finishes.

    Raises:
        ValueError: An option of one runner given to the other (it would be ignored).
    """
    if workers and config.baseline != "pop" and (checkpoint_dir is not None or resume):
        raise ValueError("checkpoint_dir and resume are for in-process training (workers=0); "
                         "Ray Train checkpoints to its storage and resumes after a failure "
                         "by itself")
    if not workers and ray_options:
        raise ValueError(f"{', '.join(sorted(ray_options))}: Ray Train options, which need "
                         "workers >= 1")
    if workers == 0 or config.baseline == "pop":
        return fit(config, load_sequences(materialize(data)),
                   LocalHooks(checkpoint_dir, resume, on_epoch), progress=progress)
    from movierec.training.ray_runner import fit_on_ray  # noqa: PLC0415 - Ray is heavy

    return fit_on_ray(config, data, workers, progress=progress, on_epoch=on_epoch,
                      **ray_options)


def train_and_track(config: TrainConfig, data: str | Path, workers: int = 0,
                    run_name: str | None = None, nested: bool = False,
                    **options: Any) -> dict[str, Any]:
    """Train and record it in one MLflow run: params, history, metrics, tags and artifacts.

    The run opens before training (an unreachable tracking server fails at once) and takes
    each epoch's loss and validation figures as they come; a run whose training fails ends
    as FAILED.

    Returns:
        ``{"run_id", "best_epoch", "refit_epochs", "soup_branches", "valid", "test",
        "seconds", "resumes", ...}`` as
        printed by the CLI (``valid`` is the selected model's, ``test`` the final model's).
    """
    data_dir = materialize(data)  # s3://: the driver's own copy (Ray workers make theirs)
    card = load_card(data_dir)  # before training: a wrong folder fails at once
    name = model_name(config)
    on_ray = bool(workers) and config.baseline != "pop"
    tags = {"data_version": card["data_version"], "dataset": card["name"], "model": name,
            "runner": "ray" if on_ray else "in-process"}
    params = {**config.model_dump(), "workers": workers if on_ray else 0,
              "data_dir": str(data)}
    with tracked_run(run_name or name, params, tags, nested=nested) as mlflow:
        run_id = mlflow.active_run().info.run_id
        epochs = EpochLogger(run_id)
        # Ray workers get the URI (each downloads its copy of the generation read above);
        # in-process, the copy read above.
        if on_ray:
            options = {**options, "driver_copy": data_dir}
        result = run_training(config, data if on_ray else data_dir, workers, on_epoch=epochs,
                              **options)
        epochs.flush(result.history + result.refit_history)  # a resumed run's earlier epochs
        mlflow.log_metrics({**metric_items(result.valid, "valid"),
                            **metric_items(result.test, "test"),
                            "best_epoch": result.best_epoch, "seconds": result.seconds,
                            "refit_epochs": result.refit_epochs,
                            "soup_branches": result.soup_branches,
                            "seconds_to_best": result.seconds_to_best,
                            "seconds_per_epoch": result.seconds_per_epoch,
                            "resumes": len(result.resumes)})
        log_json_artifact(mlflow, "config.json", config.model_dump())
        log_json_artifact(mlflow, "dataset.json", card)
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "model.pt"
            torch.save(result.model.state_dict(), weights)
            mlflow.log_artifact(str(weights), artifact_path="model")
        for table in ("items.parquet", "users.parquet"):  # the id mapping
            mlflow.log_artifact(str(data_dir / table), artifact_path="id_mapping")
    return {"run_id": run_id, "model": name, "best_epoch": result.best_epoch,
            "refit_epochs": result.refit_epochs, "soup_branches": result.soup_branches,
            "valid": result.valid, "test": result.test, "seconds": round(result.seconds, 2),
            "seconds_to_best": round(result.seconds_to_best, 2),
            "seconds_per_epoch": round(result.seconds_per_epoch, 3),
            "resumes": result.resumes, "data_version": card["data_version"]}


def load_run_model(run_id: str, data_dir: Path) -> tuple[torch.nn.Module, TrainConfig,
                                                          dict[str, float], dict[str, str]]:
    """Rebuild a tracked run's model from its artifacts, in eval mode on the CPU.

    Returns:
        The model, its TrainConfig, and the run's metrics and tags.

    Raises:
        ValueError: The run's ``data_version`` differs from ``data_dir``'s (the model only
            fits the data it was trained on), or its artifacts are missing or do not fit.
    """
    from movierec.models import PopularityModel, build_model  # noqa: PLC0415
    from movierec.training.tracking import load_run  # noqa: PLC0415

    metrics, tags, folder = load_run(run_id)
    card = load_card(Path(data_dir))
    if tags.get("data_version") != card["data_version"]:
        raise ValueError(f"run {run_id} was trained on data_version "
                         f"{tags.get('data_version')!r} but {data_dir} holds "
                         f"{card['data_version']!r}: pass the prepared folder of the run")
    for name in ("config.json", "model/model.pt"):
        if not (folder / name).exists():
            raise ValueError(f"run {run_id} has no artifact {name}: was it logged by "
                             "train_and_track?")
    config = TrainConfig.model_validate_json((folder / "config.json").read_text())
    n_users, n_items = int(card["users"]), int(card["items"])
    model: torch.nn.Module = (PopularityModel(n_items) if config.baseline == "pop"
                              else build_model(config.model, n_users, n_items))
    state = torch.load(folder / "model" / "model.pt", map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"run {run_id}: model/model.pt does not fit its config.json "
                         f"({error})") from error
    return model.eval(), config, metrics, tags
