"""``movierec export`` and ``movierec registry history|set-alias|rollback|remove-alias``."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from movierec.cli.types import positive_float


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` and the ``registry`` group."""
    export = sub.add_parser("export", help="export a run to a verified ONNX bundle",
                            description="Export a trained run to ONNX (fp32, and int8 when it "
                            "passes its checks), check parity against PyTorch, write and "
                            "verify a bundle; with --register add it to the MLflow registry "
                            "as a new version.")
    export.add_argument("--run", dest="run_id", required=True,
                        help="MLflow run id of a training run")
    export.add_argument("--data", required=True,
                        help="the run's prepared data (folder or s3://BUCKET/PREFIX)")
    export.add_argument("--out", required=True,
                        help="bundle folder, or s3://BUCKET/PREFIX (written and verified "
                        "locally, then uploaded with a _COMPLETE manifest)")
    export.add_argument("--register", action="store_true", help="create a registry version")
    export.add_argument("--max-fp32-diff", type=positive_float, default=1e-4,
                        help="largest score difference allowed between PyTorch and the fp32 "
                        "ONNX model (default: 1e-4)")
    export.add_argument("--max-int8-ndcg-loss", type=float, default=0.005,
                        help="largest validation NDCG@10 loss of the int8 model; a larger "
                        "loss whose 95%% interval over users lies above zero leaves the "
                        "int8 model out of the bundle (the fp32 model still ships)")
    export.set_defaults(run=run_export)

    registry = sub.add_parser("registry", help="aliases and their audit trail",
                              description="Move the staging/canary/production aliases of the "
                              "registered model 'movierec'; every move is recorded.")
    cmds = registry.add_subparsers(dest="registry_command", metavar="SUBCOMMAND", required=True)
    history = cmds.add_parser("history", help="print every recorded alias move")
    history.add_argument("--alias", choices=("staging", "canary", "production"),
                         help="only this alias")
    history.add_argument("--json", action="store_true")
    history.set_defaults(run=run_history)
    set_alias = cmds.add_parser("set-alias", help="point an alias at a version")
    set_alias.add_argument("alias", choices=("staging", "canary", "production"))
    set_alias.add_argument("version")
    set_alias.add_argument("--reason", required=True, help="why (recorded)")
    set_alias.set_defaults(run=run_set_alias)
    rollback = cmds.add_parser("rollback", help="move an alias back to its previous version")
    rollback.add_argument("alias", choices=("staging", "canary", "production"))
    rollback.add_argument("--reason", default="manual rollback")
    rollback.set_defaults(run=run_rollback)
    remove = cmds.add_parser("remove-alias", help="remove an alias (recorded)")
    remove.add_argument("alias", choices=("staging", "canary", "production"))
    remove.add_argument("--reason", required=True)
    remove.set_defaults(run=run_remove)


def run_export(args: argparse.Namespace) -> int:
    """Export (and optionally register) a run's bundle; ``--data``/``--out`` may be s3://."""
    from movierec.storage import filesystem, is_remote, materialize, parse_uri  # noqa: PLC0415

    if is_remote(args.out):  # a malformed URI or missing credentials fail before the work
        parse_uri(args.out)
        filesystem(args.out)
    data = materialize(args.data)
    if not is_remote(args.out):
        _export(args, data, Path(args.out))
        return 0
    with tempfile.TemporaryDirectory(prefix="movierec-export-") as tmp:
        _export(args, data, Path(tmp) / "bundle", remote=args.out)
    return 0


def _export(args: argparse.Namespace, data: Path, out: Path, remote: str | None = None) -> None:
    """Write and verify the bundle at ``out``, upload it to ``remote``, then register it."""
    from movierec.export.onnx import ExportConfig, ExportError  # noqa: PLC0415 - torch, onnx
    from movierec.registry.bundle import bundle_from_run  # noqa: PLC0415
    from movierec.registry.mlflow_registry import register_bundle  # noqa: PLC0415
    from movierec.storage import upload_folder  # noqa: PLC0415

    config = ExportConfig(max_fp32_diff=args.max_fp32_diff,
                          max_int8_ndcg_loss=args.max_int8_ndcg_loss)
    print(f"exporting run {args.run_id}: ONNX (fp32, int8) and parity checks ...", flush=True)
    try:
        metadata = bundle_from_run(args.run_id, data, out, config)
    except ExportError as error:  # a verdict on the model, not a crash: no traceback
        raise ValueError(f"export of run {args.run_id} refused: {error}") from error
    parity = metadata["parity"]
    summary = {k: v for k, v in parity.items() if k not in ("batches", "int8_reasons")}
    print(f"bundle verified ({len(metadata['files'])} files){'' if remote else f' at {out}'}; "
          f"parity: {json.dumps(summary)}")
    if parity.get("int8_reasons"):
        print("int8 model left out of the bundle (fp32 ships): "
              + "; ".join(parity["int8_reasons"]))
    if remote:
        # Upload before registering: a registry version never names a missing upload.
        upload_folder(out, remote)
        print(f"uploaded {remote}")
    if args.register:
        version = register_bundle(out, args.run_id)
        print(f"registered movierec version {version}")


def run_history(args: argparse.Namespace) -> int:
    """Print the alias history."""
    from movierec.registry.mlflow_registry import read_history  # noqa: PLC0415

    events = read_history(args.alias, every_state=True)
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    if not events:
        print("no alias has been moved yet")
    for e in events:
        # A move whose process died before it finished, or that never took effect.
        state = "" if e["state"] == "done" else f" [{e['state']}]"
        print(f"{e['at']}  {e['alias']:<10} {e['from'] or '-':>4} -> {e['to'] or '-':<4} "
              f"{e['action']:<8} by {e['who']}: {e['why']}{state}")
    return 0


def run_set_alias(args: argparse.Namespace) -> int:
    """Point an alias at a version."""
    from movierec.registry.mlflow_registry import set_alias  # noqa: PLC0415

    event = set_alias(args.alias, args.version, args.reason)
    print(f"{event['alias']}: {event['from'] or '-'} -> {event['to']}")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    """Roll an alias back."""
    from movierec.registry.mlflow_registry import rollback  # noqa: PLC0415

    event = rollback(args.alias, args.reason)
    print(f"{event['alias']} rolled back: {event['from']} -> {event['to']}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    """Remove an alias."""
    from movierec.registry.mlflow_registry import remove_alias  # noqa: PLC0415

    event = remove_alias(args.alias, args.reason)
    print(f"{event['alias']} removed (was {event['from']})")
    return 0
