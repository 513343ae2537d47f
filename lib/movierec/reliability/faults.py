"""Fault scenarios against the real platform: each measures requests, failures, impact, loss.

Every scenario returns a JSON-ready dict. Common keys: ``requests`` and ``failed`` (probe
traffic during the fault), ``impact_s`` (how long the fault was visible), ``lost``
(acknowledged things that are gone afterwards: must be 0) and ``passed`` (the scenario's
own verdict, with ``problems`` naming what did not hold). :func:`run_faults` runs them all
on one :class:`~movierec.reliability.harness.Lab`; the storage and training scenarios live
in :mod:`movierec.reliability.storage_faults` and :mod:`movierec.reliability.training_faults`.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from movierec.polling import http_ok, wait_until
from movierec.reliability.harness import FaultSizes, Lab
from movierec.reliability.service import stored_markers
from movierec.reliability.storage_faults import disk_full_feedback, kill_during_feedback_burst
from movierec.reliability.training_faults import kill_training_mid_run

__all__ = ["corrupted_bundle", "crash_mid_promotion", "disk_full_feedback",
           "kill_during_feedback_burst", "kill_production_under_load", "kill_training_mid_run",
           "mlflow_down", "run_faults"]


def _verdict(result: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    result["problems"] = problems
    result["passed"] = not problems
    return result


def _supervised(lab: Lab, stage: str) -> dict[str, Any]:
    status = lab.platform.status()[stage]
    return {"pid": status.get("pid"), "restarts": status.get("restarts")}


def kill_production_under_load(lab: Lab) -> dict[str, Any]:
    """``kill -9`` production while a probe sends requests (every 4th a ``/feedback``).

    Measures the failed requests, the seconds from the kill to ``/ready`` answering again
    (the supervisor restarts the process from the same bundle), and whether every
    acknowledged feedback event is still in the store.
    """
    url = lab.url("production")
    with lab.env():
        wait_until(lambda: _supervised(lab, "production")["pid"] is not None, 15,
                   "supervisor status of production")
        before = _supervised(lab, "production")
        with lab.probe("production", feedback_every=4) as probe:
            time.sleep(lab.sizes.load_seconds)
            killed_at = time.monotonic()
            os.kill(before["pid"], signal.SIGKILL)
            wait_until(lambda: not http_ok(f"{url}/health", 0.3), 10, "production going down")
            to_ready = wait_until(lambda: http_ok(f"{url}/ready"), 120, "production /ready",
                                  every=0.1)
            time.sleep(lab.sizes.load_seconds)  # steady traffic after the restart
        wait_until(lambda: _supervised(lab, "production")["restarts"] == before["restarts"] + 1,
                   10, "the supervisor's restart count")
        after = _supervised(lab, "production")
    stored = stored_markers(lab.home / "feedback.db")
    lost = sorted(set(probe.acked_markers) - stored)
    summary = probe.summary()
    failures_after_ready = sum(1 for a in probe.answers
                               if not a.ok and a.at > killed_at + to_ready + 0.5)
    result = {**summary, "impact_s": round(to_ready, 2), "seconds_to_ready": round(to_ready, 2),
              "restarted": after["pid"] != before["pid"], "restarts": after["restarts"],
              "feedback_acknowledged": len(probe.acked_markers), "lost": len(lost),
              "failures_after_ready": failures_after_ready,
              "serving_version": lab.platform.serving_version("production")}
    problems = []
    if not result["restarted"]:
        problems.append("the supervisor did not restart production")
    if lost:
        problems.append(f"{len(lost)} acknowledged feedback events are missing")
    if failures_after_ready:
        problems.append(f"{failures_after_ready} requests failed after /ready was back")
    return _verdict(result, problems)


def mlflow_down(lab: Lab) -> dict[str, Any]:
    """MLflow dies mid-pipeline: stages keep serving, the run fails cleanly, nothing half-done.

    The pipeline (tiny training, export, offline gate) runs in this process; right after the
    gate, before the candidate is registered, MLflow is killed with ``kill -9``. Production
    is probed from the kill until MLflow is back. The registry's versions, aliases and alias
    history are compared before the run and after MLflow returns.
    """
    from movierec.lifecycle.config import GateConfig, LifecycleConfig  # noqa: PLC0415
    from movierec.lifecycle.pipeline import Pipeline  # noqa: PLC0415
    from movierec.reliability.harness import tiny_train_config  # noqa: PLC0415

    before = lab.registry_state()
    killed: dict[str, float] = {}
    probe = lab.probe("production")

    def say(line: str) -> None:
        if line.startswith("offline gate:") and not killed:
            lab.kill_mlflow()  # after training and export, before registration
            killed["at"] = time.monotonic()
            probe.__enter__()

    # A gate that always passes, so the run reaches registration (where MLflow is needed).
    config = LifecycleConfig(dataset="canonical", source=lab.raw, future_share=0.1,
                             gate=GateConfig(min_gain=-1.0),
                             platform=lab.config)
    pipeline = None
    error: str | None = None
    try:
        with lab.env():
            pipeline = Pipeline(config, tiny_train_config(1), lab.platform, say=say)
            pipeline.run(trigger="manual")
    except Exception as exc:  # the expected outcome: the run fails
        error = f"{type(exc).__name__}: {exc}"
    finally:
        if killed:
            time.sleep(lab.sizes.load_seconds)  # keep serving checks going while it is down
            down_s = time.monotonic() - killed["at"]
            probe.__exit__(None, None, None)
            restart_s = lab.restart_mlflow()
    if not killed:
        return _verdict({"error": error}, ["the pipeline never reached the offline gate"])
    after = lab.registry_state()
    summary = pipeline.summary if pipeline is not None else {}
    serving = probe.summary()
    result = {**serving, "impact_s": 0.0 if serving["failed"] == 0 else
              serving["failure_window_s"], "mlflow_down_s": round(down_s, 2),
              "mlflow_restart_s": round(restart_s, 2), "decision": summary.get("decision"),
              "reason": summary.get("reason"), "versions_before": before["versions"],
              "versions_after": after["versions"], "aliases_before": before["aliases"],
              "aliases_after": after["aliases"],
              "history_events_added": len(after["history"]) - len(before["history"]),
              "lost": 0 if after["history"][:len(before["history"])] == before["history"]
              else 1}
    problems = []
    if serving["failed"]:
        problems.append(f"{serving['failed']} production requests failed while MLflow was down")
    if summary.get("decision") != "failed" or not summary.get("reason"):
        problems.append(f"the pipeline did not record a failure: {summary.get('decision')}")
    if before["versions"] != after["versions"]:
        problems.append(f"versions changed {before['versions']} -> {after['versions']}")
    if before["aliases"] != after["aliases"] or before["history"] != after["history"]:
        problems.append("an alias or the alias history moved")
    return _verdict(result, problems)


def _damage(bundle: Path, name: str, how: str) -> None:
    path = bundle / name
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # flip one byte in the middle: same size, different content
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


def corrupted_bundle(lab: Lab) -> dict[str, Any]:
    """Truncated and corrupted bundles are refused at verification; production keeps serving.

    Two reloads through ``/admin/reload`` (a truncated ``model.onnx``, a flipped byte in
    ``items.parquet``) must answer 422 with the reason; a ``deploy`` of a registry version
    whose downloaded bundle is corrupted must raise. A probe runs throughout.
    """
    from movierec.registry.mlflow_registry import download_bundle  # noqa: PLC0415

    url = lab.url("production")
    attempts: list[dict[str, Any]] = []
    problems: list[str] = []
    with lab.env():
        serving = lab.platform.serving_version("production")
        other = next(v for v in lab.versions if v != serving)
        served_bundle = download_bundle(str(serving))
        headers = {"Authorization": f"Bearer {lab.platform.admin_token()}"}
        work = Path(tempfile.mkdtemp(prefix="corrupt-", dir=lab.home))
        with lab.probe("production") as probe:
            for name, how in (("model.onnx", "truncate"), ("items.parquet", "flip")):
                copy = work / f"{how}-{name}"
                shutil.copytree(served_bundle, copy)
                _damage(copy, name, how)
                reply = httpx.post(f"{url}/admin/reload", headers=headers, timeout=60,
                                   json={"bundle": str(copy), "wait": True})
                error = str(reply.json().get("error") or "")
                attempts.append({"file": name, "damage": how, "status": reply.status_code,
                                 "error": error[:200]})
                if reply.status_code != 422 or name not in error:
                    problems.append(f"{how} {name}: HTTP {reply.status_code} {error[:100]}")
            cached = download_bundle(other)
            _damage(cached, "model.onnx", "flip")
            try:
                lab.platform.deploy("production", other)
                problems.append(f"deploying corrupted version {other} did not raise")
                deploy_error = ""
            except RuntimeError as exc:
                deploy_error = str(exc)
            finally:
                shutil.rmtree(cached)  # the next download fetches a good copy again
            time.sleep(min(1.0, lab.sizes.load_seconds))
        still = lab.platform.serving_version("production")
    shutil.rmtree(work, ignore_errors=True)
    attempts.append({"file": "model.onnx", "damage": "flip", "via": f"deploy v{other}",
                     "error": deploy_error[:300]})
    summary = probe.summary()
    if summary["failed"]:
        problems.append(f"{summary['failed']} requests failed during the bad reloads")
    if still != serving:
        problems.append(f"production changed from {serving} to {still}")
    return _verdict({**summary, "impact_s": summary["failure_window_s"], "lost": 0,
                     "attempts": attempts, "serving_before": serving,
                     "serving_after": still}, problems)


def crash_mid_promotion(lab: Lab) -> dict[str, Any]:
    """A pipeline dies mid-promotion; ``movierec platform up`` reconciles and records it.

    The crash is simulated at its two sharpest points: production's alias has moved to
    the new version but the deploy never ran, and staging's alias was removed but its
    service was never retired. ``platform up`` (a subprocess, as a user runs it) must make
    aliases, history and services agree, with zero failed production requests, and its
    actions must be in ``platform/reconcile.jsonl``.
    """
    from movierec.registry.mlflow_registry import remove_alias, set_alias  # noqa: PLC0415

    with lab.env():
        current = lab.platform.serving_version("production")
        target = next(v for v in lab.versions if v != current)
        set_alias("staging", target, "fault scenario: staging before the crash")
        lab.platform.deploy("staging", target)
        # What Pipeline._promote does before it deploys, then the "crash".
        remove_alias("staging", "fault scenario: promotion began")
        set_alias("production", target, "fault scenario: promotion interrupted by kill -9")
        disagree_before = {s: v for s, v in lab.serving().items()
                           if v != lab.registry_state()["aliases"][s]}
        log_before = len(lab.platform.reconcile_log())
        with lab.probe("production") as probe:
            started = time.monotonic()
            done = lab.cli("platform", "up", *lab.cli_args())
            seconds = time.monotonic() - started
        state = lab.registry_state()
        serving = lab.serving()
        actions = lab.platform.reconcile_log()[log_before:]
    last: dict[str, str | None] = {}
    consistent = True
    for event in state["history"]:
        consistent &= event["from"] == last.get(event["alias"])
        last[event["alias"]] = event["to"]
    problems = []
    if done.returncode != 0:
        problems.append(f"platform up exited {done.returncode}: {done.stderr[-300:]}")
    if serving != state["aliases"]:
        problems.append(f"services {serving} != aliases {state['aliases']}")
    if not consistent or any(last.get(a) != v for a, v in state["aliases"].items()):
        problems.append("the alias history does not lead to the current aliases")
    recorded = {(a["stage"], a["action"].split(" ")[0]) for a in actions}
    if not {("production", "deployed"), ("staging", "retired")} <= recorded:
        problems.append(f"reconcile did not record its actions: {actions}")
    summary = probe.summary()
    if summary["failed"]:
        problems.append(f"{summary['failed']} production requests failed during reconcile")
    return _verdict({**summary, "impact_s": round(seconds, 2), "lost": 0,
                     "disagreed_before": disagree_before, "aliases_after": state["aliases"],
                     "serving_after": serving, "history_consistent": consistent,
                     "reconcile_actions": actions}, problems)


def run_faults(quick: bool, home: Path | None = None) -> dict[str, dict[str, Any]]:
    """Run every fault scenario on one lab; return scenario name -> measurements.

    Args:
        quick: Small sizes (the test suite) instead of the benchmark's.
        home: Where the lab lives (default: a temporary folder, removed afterwards).
    """
    sizes = FaultSizes.for_run(quick)
    keep = home is not None
    root = Path(home) if home is not None else Path(tempfile.mkdtemp(prefix="movierec-faults-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        with Lab(root / "lab-home", sizes) as lab:
            bundle = lab.home / "lab" / "bundle-0"
            for name, scenario in (("kill_production_under_load", kill_production_under_load),
                                   ("corrupted_bundle", corrupted_bundle),
                                   ("mlflow_down", mlflow_down),
                                   ("crash_mid_promotion", crash_mid_promotion)):
                results[name] = _timed(scenario, lab)
            results["kill_during_feedback_burst"] = _timed(
                kill_during_feedback_burst, bundle, root / "burst", sizes)
            results["disk_full_feedback"] = _timed(disk_full_feedback, bundle,
                                                   root / "disk-full", sizes)
            with lab.env():
                results["kill_training_mid_run"] = _timed(
                    kill_training_mid_run, lab.data, root / "training", sizes, lab.env_vars())
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return results


def _timed(scenario: Any, *args: Any) -> dict[str, Any]:
    started = time.monotonic()
    try:
        result = scenario(*args)
    except Exception as exc:  # one broken scenario must not hide the others' numbers
        result = {"passed": False, "problems": [f"{type(exc).__name__}: {exc}"]}
    result["scenario_seconds"] = round(time.monotonic() - started, 1)
    return result
