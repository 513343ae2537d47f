"""``movierec train`` and ``movierec tune``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from movierec.cli.types import int_range

if TYPE_CHECKING:  # torch is imported only when a command runs (the serving image has none)
    from movierec.training.config import TrainConfig

MODEL_CHOICES = ("sse-pt", "sasrec", "pop")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``tune``."""
    train = sub.add_parser("train", help="train a model and track it in MLflow",
                           description="Train SSE-PT, SASRec or the popularity baseline on a "
                           "prepared folder; select on validation, test once; log to MLflow.")
    train.add_argument("--data", required=True,
                       help="prepared data folder or s3://BUCKET/PREFIX (cached locally)")
    train.add_argument("--model", choices=MODEL_CHOICES,
                       help="default: the config's (sse-pt without --config)")
    train.add_argument("--loss", choices=("bce", "ce"), help="default: the config's")
    train.add_argument("--epochs", type=int, help="maximum epochs (early stopping may end first)")
    train.add_argument("--seed", type=int)
    train.add_argument("--workers", type=int_range(0), default=0,
                       help="0 trains in-process; N >= 1 uses Ray Train with N workers")
    train.add_argument("--gpu", action="store_true", help="one GPU per Ray worker (NCCL)")
    train.add_argument("--ray-address", help="Ray cluster address (default: local Ray)")
    train.add_argument("--storage",
                       help="Ray Train checkpoints and results: a folder or s3://BUCKET/PREFIX "
                       "(default: $MOVIEREC_RAY_STORAGE, else $MOVIEREC_HOME/ray_results); "
                       "needs --workers N >= 1")
    train.add_argument("--refit", action=argparse.BooleanOptionalAction,
                       help="after selection, retrain on train + valid items for the selected "
                       "epochs and test that model (default: the config's, on)")
    train.add_argument("--config", type=Path, help="JSON TrainConfig for everything else")
    train.add_argument("--metrics-out", type=Path, help="write the result JSON here")
    train.add_argument("--checkpoint-dir", type=Path, help="in-process checkpoints (resumable)")
    train.add_argument("--resume", action="store_true", help="resume from --checkpoint-dir")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=run_train)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge ``--config`` with the explicit flags (flags win)."""
    from movierec.files import read_json_object  # noqa: PLC0415
    from movierec.training.config import TrainConfig  # noqa: PLC0415

    raw: dict[str, Any] = read_json_object(args.config, "--config") if args.config else {}
    model = raw.setdefault("model", {})
    if args.model == "pop":
        raw["baseline"] = "pop"
    elif args.model is not None:
        raw["baseline"] = "none"
        model["kind"] = args.model
    if args.loss:
        model["loss"] = args.loss
    if args.epochs is not None:
        raw["epochs"] = args.epochs
    if args.seed is not None:
        raw["seed"] = args.seed
    if args.refit is not None:
        raw["refit"] = args.refit
    return TrainConfig.model_validate(raw)


def run_train(args: argparse.Namespace) -> int:
    """Train, print the run id and a summary, write ``--metrics-out``."""
    from movierec.files import write_json_atomic  # noqa: PLC0415
    from movierec.training.runner import train_and_track  # noqa: PLC0415 - torch is heavy

    config = config_from_args(args)
    runner_flags = [flag for flag, given in (
        ("--workers", args.workers), ("--gpu", args.gpu), ("--ray-address", args.ray_address),
        ("--storage", args.storage), ("--checkpoint-dir", args.checkpoint_dir),
        ("--resume", args.resume)) if given]
    if config.baseline == "pop" and runner_flags:
        raise ValueError(f"{', '.join(runner_flags)}: the popularity baseline counts "
                         "training interactions in-process (no network, no Ray, no "
                         "checkpoints); leave them out")
    if not args.workers and (args.gpu or args.ray_address):
        raise ValueError("--gpu and --ray-address are Ray Train options: add --workers N >= 1")
    if args.workers and (args.checkpoint_dir or args.resume):
        raise ValueError("--checkpoint-dir and --resume are for in-process training "
                         "(--workers 0); Ray Train checkpoints to --storage and resumes by "
                         "itself")
    if args.resume and not args.checkpoint_dir:
        raise ValueError("--resume needs --checkpoint-dir, the folder of the checkpoint")
    options: dict[str, Any] = {"progress": not args.quiet}
    if args.workers:
        options.update(use_gpu=args.gpu, address=args.ray_address, storage=args.storage)
    elif args.storage:
        raise ValueError("--storage holds Ray Train checkpoints: use it with --workers N >= 1 "
                         "(in-process training checkpoints to --checkpoint-dir)")
    else:
        options.update(checkpoint_dir=args.checkpoint_dir, resume=args.resume)
    # The URI itself: on Ray each worker downloads an s3:// folder (nodes share no disk).
    summary = train_and_track(config, args.data, workers=args.workers, **options)
    print(f"run_id {summary['run_id']}")
    test = summary["test"]
    soup = (f", a soup of {summary['soup_branches']} branches"
            if summary["soup_branches"] > 1 else "")
    refit = (f", refit on train + valid: {summary['refit_epochs']} epochs{soup}"
             if summary["refit_epochs"] else "")
    print(f"{summary['model']}: best epoch {summary['best_epoch']}{refit}, "
          f"test sampled NDCG@10 {test['sampled']['ndcg@10']:.4f}, "
          f"full NDCG@10 {test['full']['ndcg@10']:.4f} ({summary['seconds']:.0f} s)")
    if args.metrics_out:
        write_json_atomic(args.metrics_out, summary, sort_keys=False)
        print(f"wrote {args.metrics_out}")
    return 0


def register_tune(sub: argparse._SubParsersAction) -> None:
    """Add ``tune``."""
    tune = sub.add_parser("tune", help="Ray Tune search with ASHA; trials are MLflow runs",
                          description="Search width, depth, dropout, lr, SSE probabilities and "
                          "loss with Ray Tune and ASHA; print and save the best config.")
    tune.add_argument("--data", required=True, help="prepared folder or s3://BUCKET/PREFIX")
    tune.add_argument("--samples", type=int, default=8)
    tune.add_argument("--max-epochs", type=int, default=30)
    tune.add_argument("--grace-epochs", type=int, default=5)
    tune.add_argument("--concurrent", type=int, default=2)
    tune.add_argument("--config", type=Path, help="base TrainConfig JSON")
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--out", type=Path, default=Path("best_config.json"))
    tune.set_defaults(run=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    """Tune and write the best TrainConfig (usable as ``train --config``)."""
    from movierec.files import write_json_atomic  # noqa: PLC0415
    from movierec.storage import materialize  # noqa: PLC0415
    from movierec.training.config import TrainConfig  # noqa: PLC0415
    from movierec.training.tuning import METRIC, TuneConfig, tune_model  # noqa: PLC0415

    base = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    summary = tune_model(base, materialize(args.data), TuneConfig(
        samples=args.samples, max_epochs=args.max_epochs, grace_epochs=args.grace_epochs,
        concurrent=args.concurrent, seed=args.seed))
    write_json_atomic(args.out, summary["best_config"], sort_keys=False)
    trials = args.out.with_name(args.out.stem + ".trials.json")
    write_json_atomic(trials, {k: v for k, v in summary.items() if k != "best_config"},
                      sort_keys=False, default=str)
    print(f"best {METRIC} {summary[METRIC]:.4f} with {summary['best_trial']}")
    print(f"wrote {args.out} (use: movierec train --config {args.out}) and every trial's "
          f"score to {trials}")
    return 0
