"""``movierec platform``, ``pipeline``, ``traffic`` and ``canary``: the lifecycle commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from movierec.cli.types import int_range

# Exit status of a command whose answer is "no" (drift found, the canary is worse, requests
# failed): apart from 1, which Python gives a crash, and 2, a user error.
VERDICT_NO = 3

def register(sub: argparse._SubParsersAction) -> None:
    """Add ``platform``, ``pipeline``, ``traffic`` and ``canary``."""
    platform = sub.add_parser("platform", help="the local platform: MLflow + stage services",
                              description="Start, inspect or stop the local platform: an "
                              "MLflow server, the feedback store and supervised staging, "
                              "canary and production services.")
    cmds = platform.add_subparsers(dest="platform_command", metavar="SUBCOMMAND", required=True)
    for name, helptext in (("up", "start what is not running; reconcile stages with aliases"),
                           ("down", "stop what `up` started"),
                           ("status", "each service, its version, uptime, last health check"),
                           ("reconcile", "make the stage services match the registry aliases"),
                           ("rollback", "move production back to its previous version and "
                            "reload it in place")):
        cmd = cmds.add_parser(name, help=helptext)
        _platform_options(cmd)
        if name == "status":
            cmd.add_argument("--json", action="store_true")
        if name == "rollback":
            cmd.add_argument("--reason", default="manual rollback", help="why (recorded)")
        cmd.set_defaults(run=run_platform)

    pipe = sub.add_parser("pipeline", help="train, gate, stage, canary, promote or roll back",
                          description="One run of the lifecycle. Exits 0 whether it promotes or "
                          "rolls back; writes MOVIEREC_HOME/reports/<timestamp>/summary.json.")
    pipe.add_argument("--backend", choices=("local", "chameleon"), default="local")
    pipe.add_argument("--dataset", help="MovieLens release (default: --config's, else ml-100k)")
    pipe.add_argument("--source", type=Path, help="local copy of the dataset")
    pipe.add_argument("--epochs", type=int_range(1), help="training epochs (upper bound)")
    pipe.add_argument("--workers", type=int_range(0), default=1,
                      help="Ray Train workers (0: in-process, no Ray)")
    pipe.add_argument("--candidate", choices=("sse-pt", "weak"), default="sse-pt",
                      help="weak: popularity only, which the gates must reject")
    pipe.add_argument("--trigger", choices=("manual", "initial", "drift", "feedback",
                                            "schedule"), default="manual",
                      help="why this run happened (recorded)")
    pipe.add_argument("--canary-share", type=float, help="share of users on the canary")
    pipe.add_argument("--canary-events", type=int, help="held-out interactions to replay")
    pipe.add_argument("--config", type=Path, help="lifecycle config JSON (LifecycleConfig)")
    pipe.add_argument("--no-keep", action="store_true",
                      help="stop the platform at the end (CI); default keeps it running")
    _platform_options(pipe)
    pipe.set_defaults(run=run_pipeline)

    traffic = sub.add_parser("traffic", help="replay held-out interactions as live users",
                             description="Replay the next held-out interactions of the world "
                             "against production (recommend, then feedback).")
    traffic.add_argument("--dataset", default="ml-100k")
    traffic.add_argument("--events", type=int, default=1000)
    traffic.add_argument("--concurrency", type=int, default=8)
    _platform_options(traffic)
    traffic.set_defaults(run=run_traffic)

    canary = sub.add_parser("canary", help="canary statistics from counts")
    ccmds = canary.add_subparsers(dest="canary_command", metavar="SUBCOMMAND", required=True)
    analyze = ccmds.add_parser("analyze", help="promote or roll back, from hit/request counts",
                               description="The pipeline's decision rules from aggregate counts "
                               "(the cloud workflows take them from Prometheus). Without "
                               "per-user counts the hit rates are compared by a request-level "
                               "z-test, which treats one user's requests as independent and so "
                               "overstates significance; the pipeline tests over users.")
    for arm in ("canary", "production"):
        analyze.add_argument(f"--{arm}-hits", type=int, required=True)
        analyze.add_argument(f"--{arm}-requests", type=int, required=True)
        analyze.add_argument(f"--{arm}-errors", type=int, default=0)
        analyze.add_argument(f"--{arm}-p95-ms", type=float)
    analyze.add_argument("--alpha", type=float, default=0.05)
    analyze.add_argument("--max-error-rate", type=float, default=0.01)
    analyze.add_argument("--slo-p95-ms", type=float, default=200.0)
    analyze.set_defaults(run=run_canary_analyze)


def _platform_options(cmd: argparse.ArgumentParser) -> None:
    # No argparse defaults: a flag overrides the platform config (``--config``'s or the
    # built-in one: 5000, 8000, 8001, 8002) only when it is given.
    cmd.add_argument("--mlflow-port", type=int, help="default 5000")
    cmd.add_argument("--production-port", type=int, help="default 8000")
    cmd.add_argument("--staging-port", type=int, help="default 8001")
    cmd.add_argument("--canary-port", type=int, help="default 8002")


def _platform(args: argparse.Namespace, base: Any = None):
    """The local platform of ``base``, with the port flags that were given on top.

    ``base`` is a PlatformConfig (``--config``'s); None means the built-in one.
    """
    from movierec.lifecycle.backends.local import LocalPlatform  # noqa: PLC0415
    from movierec.lifecycle.config import PlatformConfig  # noqa: PLC0415

    base = base or PlatformConfig()
    ports = {**base.ports, **{stage: port for stage, port in (
        ("production", args.production_port), ("staging", args.staging_port),
        ("canary", args.canary_port)) if port is not None}}
    mlflow_port = base.mlflow_port if args.mlflow_port is None else args.mlflow_port
    return LocalPlatform(PlatformConfig.model_validate(
        {**base.model_dump(), "mlflow_port": mlflow_port, "ports": ports}))


def run_platform(args: argparse.Namespace) -> int:
    """``platform up|down|status``."""
    platform = _platform(args)
    if args.platform_command == "up":
        result = platform.up()
        print(f"platform up: MLflow {result['mlflow']}; started {result['started'] or 'nothing'}"
              f"; stages {result['reconciled']}")
        return 0
    if args.platform_command == "down":
        print(f"platform down: stopped {platform.down() or 'nothing'}")
        return 0
    if args.platform_command == "reconcile":
        print(f"stages now follow the aliases: {platform.reconcile()}")
        return 0
    if args.platform_command == "rollback":
        from movierec.lifecycle.pipeline import rollback_production  # noqa: PLC0415

        result = rollback_production(platform, args.reason)
        print(f"production rolled back {result['from']} -> {result['to']} "
              f"({result['how']}, {result['failed_requests']} failed of "
              f"{result['probe_requests']} probe requests)")
        return 0
    rows = platform.status()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for name, row in rows.items():
        state = "up" if row.get("alive") else "down"
        extra = ""
        if "version" in row:
            extra = (f" v{row['version']} uptime {row['uptime_s']} s, restarts "
                     f"{row['restarts']}, health {'ok' if row['healthy'] else 'FAIL'} "
                     f"{row['last_health_s_ago']} s ago")
        print(f"{name:<11} {state:<5} {row.get('url', ''):<24} pid {row.get('pid') or '-'}"
              f"{extra}")
    return 0


def _configs(args: argparse.Namespace) -> tuple[Any, Any]:
    """The LifecycleConfig (``--config`` plus flags) and TrainConfig of a pipeline run."""
    from movierec.files import read_json_object  # noqa: PLC0415
    from movierec.lifecycle.config import LifecycleConfig  # noqa: PLC0415
    from movierec.training.config import TrainConfig  # noqa: PLC0415

    base = (LifecycleConfig.model_validate(read_json_object(args.config, "--config"))
            if args.config else LifecycleConfig())
    overrides = {k: v for k, v in (("share", args.canary_share),
                                   ("events", args.canary_events)) if v is not None}
    # Validate the merged canary settings (model_copy alone would skip validation).
    canary = type(base.canary).model_validate({**base.canary.model_dump(), **overrides})
    given = {k: v for k, v in (("dataset", args.dataset), ("source", args.source))
             if v is not None}  # flags override --config only when given
    config = base.model_copy(update={**given, "canary": canary})
    train = TrainConfig() if args.epochs is None else TrainConfig(epochs=args.epochs)
    return config, train


def _chameleon_backend() -> Any:
    """The cluster backend; checks the tracking URI and the argocd CLI first.

    The stages are ArgoCD apps on the cluster (this usually runs inside the
    movierec-lifecycle workflow): there is no platform to start, only tools to check.
    """
    from movierec.infra.argocd import ARGOCD_HOW  # noqa: PLC0415
    from movierec.infra.commands import ToolMissingError, require_tool  # noqa: PLC0415
    from movierec.lifecycle.backends.chameleon import (  # noqa: PLC0415
        ChameleonBackend,
        ChameleonConfig,
    )

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ToolMissingError(
            "MLFLOW_TRACKING_URI is not set: point it at the platform's MLflow (in the "
            "cluster http://platform-mlflow.movierec-platform.svc.cluster.local:5000; from "
            "outside `kubectl -n movierec-platform port-forward svc/platform-mlflow 5000`)")
    require_tool("argocd", ARGOCD_HOW)
    return ChameleonBackend(ChameleonConfig(tracking_uri=uri))


def run_pipeline(args: argparse.Namespace) -> int:
    """One lifecycle run on the chosen backend."""
    from movierec.lifecycle.pipeline import Pipeline  # noqa: PLC0415
    from movierec.lifecycle.report import format_summary  # noqa: PLC0415

    config, train = _configs(args)
    local = args.backend == "local"
    backend = _platform(args, config.platform) if local else _chameleon_backend()
    if local:
        backend.up()
        os.environ["MLFLOW_TRACKING_URI"] = backend.tracking_uri()
    pipeline = Pipeline(config, train, backend)
    try:
        summary = pipeline.run(args.trigger, args.candidate, args.workers)
    except Exception:  # the summary (written anyway) says why in one line; details in logs
        print(f"movierec: pipeline failed: {pipeline.summary['reason']}\nreport: "
              f"{get_report_dir(pipeline.summary)}", file=sys.stderr)
        return 1
    finally:
        if local and args.no_keep:
            backend.down()
    print("\n" + format_summary(summary) + f"\n\nreport: {get_report_dir(summary)}")
    if local and not args.no_keep:
        print(f"production web page: {backend.stage_url('production')}/")
    return 0


def get_report_dir(summary: dict) -> Path:
    """The report folder of a run summary."""
    from movierec.config import get_settings  # noqa: PLC0415

    return get_settings().home / "reports" / summary["started_at"]


def run_traffic(args: argparse.Namespace) -> int:
    """Replay held-out interactions against production."""
    from movierec.config import get_settings  # noqa: PLC0415
    from movierec.lifecycle.pipeline import TRAFFIC_LOG  # noqa: PLC0415
    from movierec.lifecycle.traffic import arm_stats, replay, save_records, take_events  # noqa: PLC0415
    from movierec.lifecycle.world import World, world_folder  # noqa: PLC0415

    folder = world_folder(args.dataset)
    if not (folder / "world.json").exists():
        raise FileNotFoundError(f"{folder}: no world yet; run `movierec pipeline` first")
    world = World(folder, json.loads((folder / "world.json").read_text()))
    url = _platform(args).stage_url("production")
    records = replay(take_events(world, args.events), {"production": url},
                     concurrency=args.concurrency)
    save_records(records, get_settings().home / "lifecycle" / TRAFFIC_LOG)
    stats = arm_stats(records, "production")
    print(f"replayed {stats.requests} interactions against {url}: {stats.errors} errors, "
          f"hit rate {stats.hit_rate:.3f}, p95 {stats.p95_ms or 0:.0f} ms")
    return 0 if stats.errors == 0 else VERDICT_NO


def run_canary_analyze(args: argparse.Namespace) -> int:
    """Print the canary analysis as JSON; exit 0 to promote, 3 to roll back."""
    from movierec.lifecycle.canary import ArmStats, analyze  # noqa: PLC0415
    from movierec.lifecycle.config import CanaryConfig  # noqa: PLC0415

    arms = {}
    for arm in ("canary", "production"):
        requests, errors = getattr(args, f"{arm}_requests"), getattr(args, f"{arm}_errors")
        hits = getattr(args, f"{arm}_hits")
        if 0 <= errors <= requests and hits > requests - errors:
            # Prometheus counts clicks on /feedback, which a client may send for lists it
            # was not served (or the window cut differently): at most one per served list.
            print(f"warning: {arm}: {hits} hits for {requests - errors} served requests; "
                  "counted as one per served request", file=sys.stderr)
            hits = requests - errors
        arms[arm] = ArmStats(requests, errors, hits, getattr(args, f"{arm}_p95_ms"))
    config = CanaryConfig(alpha=args.alpha, max_error_rate=args.max_error_rate,
                          slo_p95_ms=args.slo_p95_ms)
    analysis = analyze(arms["canary"], arms["production"], config)
    print(json.dumps(analysis.to_dict(), indent=2))
    return 0 if analysis.promote else VERDICT_NO


def register_monitor(sub: argparse._SubParsersAction) -> None:
    """Add ``monitor drift``."""
    monitor = sub.add_parser("monitor", help="drift of served traffic vs training data")
    cmds = monitor.add_subparsers(dest="monitor_command", metavar="SUBCOMMAND", required=True)
    drift = cmds.add_parser("drift", help="item-popularity PSI, sequence-length KS, unknown "
                            "items, online hit rate; exits 3 on drift",
                            description="Compare a stage's served traffic with its model's "
                            "training data and write a report with plots under "
                            "MOVIEREC_HOME/reports/. Exit status 3 means drift (a scheduler "
                            "can trigger `movierec pipeline --trigger drift`).")
    drift.add_argument("--stage", choices=("production", "canary", "staging"),
                       default="production")
    drift.add_argument("--max-psi", type=float, default=0.2)
    drift.add_argument("--max-ks", type=float, default=0.3)
    drift.add_argument("--max-unknown-rate", type=float, default=0.05)
    drift.add_argument("--min-events", type=int, default=100)
    drift.add_argument("--json", action="store_true", help="print the report as JSON")
    _platform_options(drift)
    drift.set_defaults(run=run_drift)


def run_drift(args: argparse.Namespace) -> int:
    """Assess drift of a stage; exit 3 on drift.

    Not 1, which is a crash: a scheduler that retrains on the verdict must not retrain
    because MLflow or the stage was unreachable.
    """
    from movierec.config import get_settings  # noqa: PLC0415
    from movierec.lifecycle.pipeline import TRAFFIC_LOG  # noqa: PLC0415
    from movierec.monitoring.collect import collect_and_assess, write_drift_report  # noqa: PLC0415
    from movierec.monitoring.drift import DriftConfig  # noqa: PLC0415
    from movierec.registry.mlflow_registry import download_bundle  # noqa: PLC0415
    from movierec.serving.feedback import feedback_location  # noqa: PLC0415

    platform = _platform(args)
    os.environ.setdefault("MLFLOW_TRACKING_URI", platform.tracking_uri())
    home = get_settings().home
    version = platform.serving_version(args.stage)
    if version is None:
        raise ValueError(f"{args.stage} is not serving at {platform.stage_url(args.stage)}: "
                         "run `movierec platform up` (and a pipeline) first")
    config = DriftConfig(max_psi=args.max_psi, max_ks=args.max_ks,
                         max_unknown_rate=args.max_unknown_rate, min_events=args.min_events)
    report = collect_and_assess(platform.stage_url(args.stage), download_bundle(version),
                                feedback_location(home), home / "lifecycle" / TRAFFIC_LOG,
                                config)
    folder = write_drift_report(report, home / "reports")
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    print(f"drift ({args.stage} v{version}): {report.verdict}; PSI {report.psi:.3f}, KS "
          f"{report.ks:.3f}, unknown {report.unknown_rate:.1%} over {report.events} watches; "
          f"report {folder}")
    return VERDICT_NO if report.verdict == "drift" else 0


def register_demo(sub: argparse._SubParsersAction) -> None:
    """Add ``demo``."""
    demo = sub.add_parser("demo", help="the whole lifecycle loop on this machine (make demo)",
                          description="Platform up, a first model to production, simulated "
                          "traffic and feedback, drift report, retrain, gated canary, promote "
                          "or roll back, and a weak candidate that must be rejected.")
    demo.add_argument("--dataset", default="ml-100k")
    demo.add_argument("--source", type=Path, help="local copy of the dataset")
    demo.add_argument("--epochs", type=int, default=40, help="retrained candidate's epochs")
    demo.add_argument("--first-epochs", type=int, default=5, help="first model's epochs")
    demo.add_argument("--workers", type=int, default=1, help="Ray Train workers (0: no Ray)")
    demo.add_argument("--traffic-events", type=int, default=1500)
    demo.add_argument("--no-keep", action="store_true", help="stop the platform at the end")
    _platform_options(demo)
    demo.set_defaults(run=run_demo_cli)


def run_demo_cli(args: argparse.Namespace) -> int:
    """Run the demo; print each run's one-screen summary and where to look."""
    from movierec.lifecycle.config import LifecycleConfig  # noqa: PLC0415
    from movierec.lifecycle.demo import DemoConfig, run_demo  # noqa: PLC0415
    from movierec.lifecycle.report import format_summary  # noqa: PLC0415

    config = DemoConfig(first_epochs=args.first_epochs, epochs=args.epochs,
                        workers=args.workers, traffic_events=args.traffic_events,
                        lifecycle=LifecycleConfig(dataset=args.dataset, source=args.source))
    platform = _platform(args)
    try:
        result = run_demo(config, platform)
    finally:
        if args.no_keep:
            platform.down()
    print("\n" + "=" * 100)
    for summary in result["runs"]:
        print(format_summary(summary))
        print(f"report: {get_report_dir(summary) / 'report.html'}\n")
    print(f"drift report: {result['drift']['folder']}")
    print(f"demo finished in {result['seconds']} s; production is version "
          f"{result['production']}")
    if not args.no_keep:
        print(f"\nThe platform keeps running. Web page of production: "
              f"{platform.stage_url('production')}/  (MLflow: {platform.tracking_uri()}; "
              "stop everything with `movierec platform down`)")
    return 0
