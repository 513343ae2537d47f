"""``movierec evaluate``: comparison tables of MLflow runs and detailed reports."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from movierec.cli.types import int_range


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``evaluate``."""
    cmd = sub.add_parser("evaluate", help="compare MLflow runs; detailed report with --data",
                         description="Compare runs in a markdown + JSON table. With --data, "
                         "reload each run's weights and report bootstrap 95% CIs and slices "
                         "(history length, demographics).")
    cmd.add_argument("runs", nargs="*", help="MLflow run ids (default: the latest --latest)")
    cmd.add_argument("--latest", type=int_range(1), default=5,
                     help="how many recent runs to compare (default: 5)")
    cmd.add_argument("--data", help="prepared folder or s3://BUCKET/PREFIX: also write detailed "
                     "reports")
    cmd.add_argument("--split", choices=("valid", "test"), default="test")
    cmd.add_argument("--out", type=Path, default=Path("evaluation"), help="output folder")
    cmd.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """Write ``comparison.md``/``.json`` (and ``report-<run>.json``) and print the table."""
    from movierec.data.prepare import load_card  # noqa: PLC0415
    from movierec.evaluation.compare import compare_runs, evaluate_run  # noqa: PLC0415
    from movierec.storage import materialize  # noqa: PLC0415
    from movierec.training.tracking import search_runs  # noqa: PLC0415

    run_ids = args.runs or search_runs(args.latest)
    if not run_ids:
        raise ValueError("no finished runs to compare: train one with `movierec train`")
    data_dir = None
    if args.data:  # checked before anything is written
        data_dir = materialize(args.data)
        load_card(data_dir)
    table = compare_runs(run_ids, args.split)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.json").write_text(json.dumps(table, indent=2) + "\n")
    (args.out / "comparison.md").write_text(table["markdown"] + "\n")
    print(table["markdown"])
    if data_dir is not None:
        for run_id in run_ids:
            print(f"scoring run {run_id[:8]} on {args.split} (bootstrap CIs, slices) ...",
                  flush=True)
            report = evaluate_run(run_id, data_dir, args.split)
            (args.out / f"report-{run_id}.json").write_text(json.dumps(report, indent=2) + "\n")
            if "warning" in report:
                print(f"warning ({run_id[:8]}): {report['warning']}")
            ci = report["ci95"]["full"]["ndcg@10"]
            print(f"{report['model']} ({run_id[:8]}): full NDCG@10 "
                  f"{report['metrics']['full']['ndcg@10']:.4f} [95% CI {ci[0]:.4f}, {ci[1]:.4f}]")
    reports = " and report-<run>.json" if data_dir is not None else ""
    print(f"wrote {args.out}/comparison.md, comparison.json{reports}")
    return 0
