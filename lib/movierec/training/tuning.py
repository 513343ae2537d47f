"""Ray Tune over the model and optimiser with ASHA early stopping; trials become MLflow runs.

Each trial runs the in-process ``fit`` and reports validation full-ranking NDCG@10 every
epoch, which is what ASHA compares. Each trial is an MLflow child run of the search's run,
logged live by the driver as Tune reports (``tune_runs``), so workers never write to the
tracking store at once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from movierec.config import get_settings
from movierec.data.dataset import load_sequences
from movierec.data.prepare import load_card
from movierec.training.config import TrainConfig
from movierec.training.hooks import LocalHooks
from movierec.training.loop import fit
from movierec.training.tracking import log_json_artifact, tracked_run

METRIC = "epoch_valid_ndcg_10"


class TuneConfig(BaseModel):
    """Search budget and ASHA settings."""

    model_config = ConfigDict(extra="forbid")

    samples: int = Field(8, ge=1)
    max_epochs: int = Field(30, ge=1)
    grace_epochs: int = Field(5, ge=1, description="ASHA: epochs before a trial can be cut")
    reduction_factor: int = Field(3, ge=2)
    concurrent: int = Field(2, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _asha_can_cut(self) -> TuneConfig:
        if self.grace_epochs >= self.max_epochs:
            raise ValueError(f"grace_epochs={self.grace_epochs} >= max_epochs="
                             f"{self.max_epochs}: ASHA could stop no trial early; lower "
                             "--grace-epochs below --max-epochs")
        return self


def search_space() -> dict[str, Any]:
    """Model width, depth, dropout, learning rate, SSE probabilities and loss."""
    from ray import tune  # noqa: PLC0415

    return {
        "d": tune.choice([32, 50, 64]),
        "n_blocks": tune.choice([1, 2, 3]),
        "dropout": tune.uniform(0.1, 0.6),
        "lr": tune.loguniform(3e-4, 3e-3),
        "sse_prob_user": tune.uniform(0.0, 0.95),
        "sse_prob_item": tune.uniform(0.0, 0.3),
        "loss": tune.choice(["bce", "ce"]),
    }


def apply_sample(base: TrainConfig, sample: dict[str, Any]) -> TrainConfig:
    """The base config with one sampled point of the search space applied."""
    raw = base.model_dump()
    raw["model"].update(d_item=sample["d"], d_user=sample["d"], n_blocks=sample["n_blocks"],
                        dropout=sample["dropout"], sse_prob_user=sample["sse_prob_user"],
                        sse_prob_item=sample["sse_prob_item"], loss=sample["loss"])
    raw["lr"] = sample["lr"]
    return TrainConfig.model_validate(raw)


class TuneHooks(LocalHooks):
    """Report every epoch to Ray Tune (ASHA decides whether the trial goes on)."""

    def device(self, config: TrainConfig) -> torch.device:
        """CPU under ``auto`` unless Ray gave the trial a GPU (trials reserve CPUs only)."""
        import ray  # noqa: PLC0415

        if config.device == "auto" and not ray.get_gpu_ids():
            return torch.device("cpu")
        return super().device(config)

    def report(self, record: dict[str, Any], state: dict[str, Any]) -> None:
        """Send the epoch's metrics to Tune."""
        from ray import tune  # noqa: PLC0415

        del state
        tune.report({k: float(v) for k, v in record.items()})


def _trial(sample: dict[str, Any], base: dict[str, Any], data_dir: str) -> None:
    torch.set_num_threads(1)
    config = apply_sample(TrainConfig.model_validate(base), sample)
    fit(config, load_sequences(Path(data_dir)), TuneHooks(), progress=False, final_test=False)


def tune_model(base: TrainConfig, data_dir: Path, tune_config: TuneConfig) -> dict[str, Any]:
    """Run the search with its trials logged live; return the best config and trials."""
    from ray import tune  # noqa: PLC0415
    from ray.tune.schedulers import ASHAScheduler  # noqa: PLC0415

    from movierec.training.ray_runner import init_ray  # noqa: PLC0415
    from movierec.training.tune_runs import TrialRuns  # noqa: PLC0415 - imports Ray

    card = load_card(Path(data_dir))  # before the search: a wrong folder fails at once
    init_ray(num_cpus=tune_config.concurrent, include_dashboard=False, log_to_driver=False)
    # Trials are judged on validation, so a refit would only spend their time; the best
    # config keeps the base's epochs and refit, for the final run's early stopping.
    trial_base = base.model_copy(update={"epochs": tune_config.max_epochs, "eval_every": 1,
                                         "refit": False})
    scheduler = ASHAScheduler(time_attr="epoch", max_t=tune_config.max_epochs,
                              grace_period=tune_config.grace_epochs,
                              reduction_factor=tune_config.reduction_factor)
    trainable = tune.with_parameters(_trial, base=trial_base.model_dump(),
                                     data_dir=str(Path(data_dir).resolve()))
    tags = {"data_version": card["data_version"]}
    with tracked_run("tune", tune_config.model_dump(), {**tags, "kind": "tune"}) as mlflow:
        log_json_artifact(mlflow, "base_config.json", base.model_dump())
        runs = TrialRuns(mlflow.active_run().info.run_id, trial_base, tags)
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}), param_space=search_space(),
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler,
                                        num_samples=tune_config.samples,
                                        max_concurrent_trials=tune_config.concurrent,
                                        search_alg=tune.search.BasicVariantGenerator(
                                            random_state=tune_config.seed)),
            run_config=tune.RunConfig(storage_path=str(get_settings().home / "ray_results"),
                                      name=f"tune-{int(time.time() * 1000)}",
                                      callbacks=[runs]))
        try:
            results = list(tuner.fit())
            cut_short = runs.flush(results)
        except BaseException:
            runs.abandon()
            raise
        if cut_short:  # Ctrl+C: Tune stops its trials and returns as if it were done
            raise KeyboardInterrupt(f"tuning was interrupted ({cut_short} of {len(results)} "
                                    "trials cut short); no config was chosen")
        summary = choose_best(results, base)
        mlflow.log_metric(f"best_{METRIC}", summary[METRIC])
        mlflow.log_metric("failed_trials", summary["failed_trials"])
        log_json_artifact(mlflow, "best_config.json", summary["best_config"])
    return summary


def choose_best(results: list[Any], base: TrainConfig) -> dict[str, Any]:
    """The best trial's sample applied to ``base``, and every trial's outcome.

    Args:
        results: Ray Tune's results (``config``, ``error``, ``metrics_dataframe``).
        base: The config the best sample is applied to (the user's, with its epochs).

    Returns:
        The best config, its sample and score, every trial's outcome, and how many failed.

    Raises:
        RuntimeError: Every trial failed (the first one's error is named).
    """
    trials = []
    for result in results:
        history, failed = result.metrics_dataframe, result.error is not None
        score = (float(history[METRIC].max()) if history is not None and len(history)
                 and not failed else None)
        trials.append({"config": result.config, METRIC: score,
                       "epochs": len(history) if history is not None else 0,
                       "error": one_line(result.error) if failed else None})
    scored = [t for t in trials if t[METRIC] is not None]
    if not scored:
        raise RuntimeError(f"every one of the {len(trials)} trials failed; the first: "
                           f"{next((t['error'] for t in trials if t['error']), 'none scored')}")
    # The best validation score of any epoch of a trial that did not fail (as ASHA's
    # scope="all"); a crashed trial's partial curve does not choose the config.
    best = max(scored, key=lambda t: t[METRIC])
    return {"best_config": apply_sample(base, best["config"]).model_dump(),
            "best_trial": best["config"], METRIC: best[METRIC], "trials": trials,
            "failed_trials": len(trials) - len(scored)}


def one_line(error: BaseException) -> str:
    """The error's type and first line (a trial's traceback stays in Ray's logs)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
