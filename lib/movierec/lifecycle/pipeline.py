"""The lifecycle pipeline: data, train, offline gate, staging, canary, promote or roll back.

Every step asks the backend for what is platform-specific (deploy a version to a stage, a
stage's URL); everything else (the data round, training, export, the statistics) is the same
code on every backend. The run's numbers go to ``MOVIEREC_HOME/reports/<timestamp>/``
(``summary.json`` plus a markdown/HTML report with plots) whichever way it ends.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from movierec.config import get_settings
from movierec.files import write_json_atomic
from movierec.lifecycle.backends import Backend, deploy_and_point
from movierec.lifecycle.canary import CanaryAnalysis, analyze
from movierec.lifecycle.config import LifecycleConfig, Stage
from movierec.lifecycle.gates import bundle_panel_ndcg, offline_gate
from movierec.lifecycle.staging import staging_tests
from movierec.lifecycle.traffic import arm_stats, replay, save_records, take_events
from movierec.lifecycle.world import World, build_panel, build_world, prepare_round
from movierec.serving.feedback import feedback_location
from movierec.training.config import TrainConfig
from movierec.training.tracking import tracking_unreachable

Trigger = Literal["manual", "initial", "drift", "feedback", "schedule"]
Candidate = Literal["sse-pt", "weak"]
TRAFFIC_LOG = "traffic.jsonl"


def weak_config(train: TrainConfig) -> TrainConfig:
    """The deliberately weak candidate: popularity only (no personalisation)."""
    return train.model_copy(update={"baseline": "pop"})


class FailureProbe:
    """Requests against a stage during a promotion, counting failures (must stay 0)."""

    def __init__(self, url: str, payload: dict[str, Any]) -> None:
        self.url, self.payload, self.sent, self.failed = url, payload, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while not self._stop.is_set():
                self.sent += 1
                try:
                    ok = client.post("/recommend", json=self.payload).status_code == 200
                except httpx.TransportError:
                    ok = False
                self.failed += not ok
                time.sleep(0.01)

    def __enter__(self) -> FailureProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Pipeline:
    """One run of the lifecycle on a backend (see the module docstring)."""

    def __init__(self, config: LifecycleConfig, train: TrainConfig, backend: Backend,
                 say: Callable[[str], None] = print) -> None:
        self.config, self.train, self.backend, self.say = config, train, backend, say
        self.home = get_settings().home
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self.folder = self.home / "reports" / stamp
        self.summary: dict[str, Any] = {"started_at": stamp, "backend": backend.name,
                                        "decision": None, "candidate_version": None,
                                        "production_version": None, "steps": {}}
        self.summary["slo_p95_ms"] = config.staging.slo_p95_ms
        self.probe_payload: dict[str, Any] = {"top_k": 10}

    def _step(self, name: str, **numbers: Any) -> None:
        self.summary["steps"][name] = {**self.summary["steps"].get(name, {}), **numbers}

    def run(self, trigger: Trigger = "manual", candidate: Candidate = "sse-pt",
            workers: int = 0) -> dict[str, Any]:
        """Run every step; always write the summary and report; return the summary."""
        from movierec.lifecycle.report import write_report  # noqa: PLC0415 - matplotlib

        started = time.monotonic()
        # The pipeline prints its own one-line progress; MLflow's run links and download
        # bars would bury it (the run ids are in the summary).
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.summary.update(trigger=trigger, candidate=candidate)
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._run(candidate, workers)
        except Exception as error:
            self.summary.update(decision="failed", reason=_failure_reason(
                error, self.summary["candidate_version"]))
            raise
        finally:
            self.summary["seconds"] = round(time.monotonic() - started, 1)
            write_json_atomic(self.folder / "summary.json", self.summary, sort_keys=False,
                              default=str)
            write_report(self.folder, self.summary)
        return self.summary

    def _run(self, candidate: Candidate, workers: int) -> None:
        from movierec.registry import mlflow_registry as registry  # noqa: PLC0415
        from movierec.training.runner import train_and_track  # noqa: PLC0415

        cfg = self.config
        world = build_world(cfg.dataset, cfg.future_share, cfg.source)
        data_dir = self.folder / "data"
        card = prepare_round(world, feedback_location(self.home), data_dir)
        self._step("data", data_version=card["data_version"], users=card["users"],
                   items=card["items"], interactions=card["interactions"], **card["feedback"])
        self.say(f"data: {card['interactions']:,} interactions, data_version "
                 f"{card['data_version']} ({card['feedback']['used']} feedback watches)")

        train = weak_config(self.train) if candidate == "weak" else self.train
        result = train_and_track(train, data_dir, workers=workers, progress=False,
                                 run_name=f"candidate-{candidate}")
        self._step("train", run_id=result["run_id"], model=result["model"],
                   best_epoch=result["best_epoch"], seconds=result["seconds"],
                   valid_full_ndcg10=result["valid"]["full"]["ndcg@10"])
        self.say(f"train: {result['model']} run {result['run_id'][:8]}, valid full "
                 f"NDCG@10 {result['valid']['full']['ndcg@10']:.4f} ({result['seconds']} s)")

        bundle, parity_ok = self._export(result["run_id"], data_dir)
        production = registry.current_version("production")
        self.summary["production_version"] = production
        gate = self._offline_gate(world, data_dir, bundle, production, parity_ok)
        if not gate.passed:
            self._decide("rolled_back", f"offline gate: {gate.reason}")
            return

        version = registry.register_bundle(bundle, result["run_id"],
                                           f"{candidate} candidate ({self.summary['trigger']})")
        self.summary["candidate_version"] = version
        self._deploy_candidate("staging", version, f"passed the offline gate: {gate.reason}")
        if not self._staging(version, data_dir):
            return
        if production is None:
            self._promote(version, "first production model: no canary to compare against")
            return
        self._canary(world, version)

    def _export(self, run_id: str, data_dir: Path) -> tuple[Path, bool]:
        from movierec.export.onnx import ExportConfig, ExportError  # noqa: PLC0415
        from movierec.registry.bundle import bundle_from_run  # noqa: PLC0415

        bundle = self.folder / "bundle"
        try:
            meta = bundle_from_run(run_id, data_dir, bundle, ExportConfig())
        except ExportError as error:
            self._step("export", passed=False, error=str(error), parity=error.report)
            return bundle, False
        parity = {k: v for k, v in meta["parity"].items() if k != "batches"}
        self._step("export", passed=True, parity=parity)
        return bundle, True

    def _offline_gate(self, world: World, data_dir: Path, bundle: Path,
                      production: str | None, parity_ok: bool) -> Any:
        from movierec.registry.mlflow_registry import download_bundle  # noqa: PLC0415

        panel = build_panel(world, data_dir)
        # A candidate whose export failed parity is not scored: the gate fails on parity.
        cand = bundle_panel_ndcg(bundle, panel) if parity_ok else None
        prod = None
        if production is not None:
            prod = bundle_panel_ndcg(download_bundle(production), panel)
        gate = offline_gate(cand, prod, self.config.gate, parity_ok, self.config.seed)
        self._step("offline_gate", **gate.to_dict())
        self.say(f"offline gate: {'PASS' if gate.passed else 'FAIL'}: {gate.reason}")
        return gate

    def _staging(self, version: str, data_dir: Path) -> bool:
        from movierec.data.dataset import load_sequences  # noqa: PLC0415

        data = load_sequences(data_dir)
        users = data.users["user_id"].to_list()
        item_ids = dict(zip(data.items["item_idx"].to_list(), data.items["item_id"].to_list(),
                            strict=True))
        known = [int(item_ids[i]) for i in data.train[1][-20:]]
        self.probe_payload = {"user_id": int(users[0]), "top_k": 10}
        try:
            report = staging_tests(self.backend.stage_url("staging"), version, int(users[0]),
                                   known, [int(u) for u in users[:200]], self.config.staging)
        except Exception as error:  # a crashed test run must not leave staging on the version
            problems = [f"the staging tests crashed: {type(error).__name__}: {error}"]
            self._step("staging", passed=False, problems=problems)
        else:
            self._step("staging", **report.to_dict())
            self.say(f"staging: {'PASS' if report.passed else 'FAIL'} "
                     f"({sum(report.checks.values())}/{len(report.checks)} checks; load "
                     f"{report.load['rps']:.0f} req/s, p95 {report.load['p95_ms']:.0f} ms)")
            if report.passed:
                return True
            problems = report.problems
        self._roll_back("staging", "staging tests failed: " + "; ".join(problems))
        return False

    def _deploy_candidate(self, stage: Stage, version: str, reason: str) -> None:
        """Serve the candidate at ``stage`` and point its alias at it.

        A deploy that fails (a stage that never answers, a cluster call refused) is undone
        before the error goes on: the alias comes off the candidate and the stage stops,
        so no model that was never tested or analysed keeps serving.
        """
        from movierec.registry.mlflow_registry import set_alias  # noqa: PLC0415

        try:
            deployed = deploy_and_point(self.backend, stage, version,
                                        lambda: set_alias(stage, version, reason))
        except Exception as error:
            self._step(stage, deploy={"failed": _failure_reason(error)})
            self._take_down(stage, f"the {stage} deploy of version {version} failed", version)
            raise
        self._step(stage, deploy=deployed)

    def _take_down(self, stage: Stage, reason: str, version: str | None = None) -> None:
        """Best effort: end what ``stage`` serves for this run.

        Without ``version`` (a promoted canary): remove the alias and stop the stage, if the
        alias is set. With the ``version`` of a failed deploy: an alias on it comes off and
        the stage stops; with no alias the stage stops (it may have started the candidate);
        an alias on another version (the backend moves aliases after deploying, so the
        failed deploy never moved it) gets that version served again. For clean-ups whose
        caller already has its outcome (an error, a promotion): a failure here is said and
        recorded in the step, not raised.
        """
        from movierec.registry.mlflow_registry import (  # noqa: PLC0415
            current_version,
            remove_alias,
        )

        try:
            current = current_version(stage)
            if current is not None and version not in (None, current):
                self.backend.deploy(stage, current)  # the tested version it served before
            elif current is not None or version is not None:
                if current is not None:
                    remove_alias(stage, reason)
                self.backend.retire(stage)
        except Exception as error:
            problem = (f"could not take {stage} down ({_failure_reason(error)}); check "
                       f"`movierec registry history` and the {stage} service")
            self._step(stage, cleanup_failed=problem)
            self.say(f"warning: {problem}")

    def _roll_back(self, stage: Stage, reason: str) -> None:
        """Take ``stage``'s alias off the candidate, stop the stage, record the decision."""
        from movierec.registry.mlflow_registry import remove_alias  # noqa: PLC0415

        remove_alias(stage, reason)
        self.backend.retire(stage)
        self._decide("rolled_back", reason)

    def _canary(self, world: World, version: str) -> None:
        self._deploy_candidate("canary", version, "passed staging tests")
        try:
            analysis = self._canary_analysis(world)
        except Exception as error:  # a crashed analysis must not leave the canary serving
            reason = f"the canary analysis crashed: {type(error).__name__}: {error}"
            self._step("canary", passed=False, problems=[reason])
            self._roll_back("canary", reason)
            return
        self._step("canary", analysis=analysis.to_dict())
        self.say("canary: " + "; ".join(analysis.reasons))
        if analysis.promote:
            self._promote(version, "canary analysis: " + analysis.reasons[0])
        else:
            self._roll_back("canary", "canary analysis: " + "; ".join(analysis.reasons))

    def _canary_analysis(self, world: World) -> CanaryAnalysis:
        """Replay held-out interactions against both arms, log them, and analyse."""
        cfg = self.config.canary
        events = take_events(world, cfg.events)
        urls = {"production": self.backend.stage_url("production"),
                "canary": self.backend.stage_url("canary")}
        self.say(f"canary: replaying {events.height} held-out interactions, "
                 f"{cfg.share:.0%} of users on the canary")
        records = replay(events, urls, cfg.share, cfg.concurrency)
        save_records(records, self.home / "lifecycle" / TRAFFIC_LOG)
        write_json_atomic(self.folder / "canary_records.json", [r.__dict__ for r in records],
                          sort_keys=False, default=str)
        return analyze(arm_stats(records, "canary"), arm_stats(records, "production"), cfg,
                       seed=self.config.seed)

    def _promote(self, version: str, reason: str) -> None:
        from movierec.registry.mlflow_registry import set_alias  # noqa: PLC0415

        url = self.backend.stage_url("production")
        serving = self.backend.serving_version("production") is not None
        with FailureProbe(url, self.probe_payload) if serving else _NoProbe() as probe:
            deployed = deploy_and_point(self.backend, "production", version,
                                        lambda: set_alias("production", version, reason))
        self._step("promotion", deploy=deployed, probe_requests=probe.sent,
                   failed_requests=probe.failed)
        if probe.failed:  # promoted all the same: the new version serves, but say so
            self.say(f"warning: {probe.failed} of {probe.sent} requests to production failed "
                     "during the swap (a reload in place should fail none)")
        self._decide("promoted", reason)  # production serves it: whatever happens next
        self._take_down("canary", f"promoted to production: {reason}")

    def _decide(self, decision: str, reason: str) -> None:
        self.summary.update(decision=decision, reason=reason)
        self.say(f"decision: {decision.upper()}: {reason}")


class _NoProbe:
    sent = 0
    failed = 0

    def __enter__(self) -> _NoProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def rollback_production(backend: Backend, reason: str) -> dict[str, Any]:
    """Serve ``production``'s previous version and move the alias back, counting failures."""
    from movierec.registry.mlflow_registry import previous_version, rollback  # noqa: PLC0415

    target = previous_version("production")
    moved: list[dict[str, Any]] = []
    with FailureProbe(backend.stage_url("production"), {"top_k": 10}) as probe:
        deployed = deploy_and_point(backend, "production", target,
                                    lambda: moved.append(rollback("production", reason)))
    event = moved[0]
    return {"from": event["from"], "to": event["to"], "how": deployed["how"],
            "probe_requests": probe.sent, "failed_requests": probe.failed}


def _failure_reason(error: Exception, registered: str | None = None) -> str:
    """One readable line for the summary; an unreachable MLflow is named as such.

    ``registered`` is the candidate's version when it was registered before the failure
    (aliases move only after that).
    """
    if tracking_unreachable(error):
        uri = os.environ.get("MLFLOW_TRACKING_URI") or "the tracking server"
        done = ("nothing was registered and no alias moved" if registered is None else
                f"version {registered} was registered; `movierec registry history` shows "
                "which aliases moved")
        return f"MLflow at {uri} is unreachable: {done} (`movierec platform up` restarts it)"
    text = str(error)
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first[:300]}"
