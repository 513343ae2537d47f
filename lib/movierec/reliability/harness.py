"""The fault lab: a real local platform on free ports, a tiny model, probes and kill helpers.

Every fault scenario runs against real processes (MLflow server, supervisor, ``movierec
serve``), never mocks: a :class:`Lab` builds a small synthetic world, trains two tiny SSE-PT
versions, registers them, puts version 1 in production and starts the platform on free
ports under its own ``MOVIEREC_HOME``. :class:`Probe` keeps requests flowing against a stage
and records every answer with its time, so a scenario can count failures and the seconds
they lasted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from movierec.lifecycle.config import PlatformConfig, Stage
from movierec.polling import http_ok, poll, process_gone, read_pid_file, wait_until
from movierec.serving.loadtest import free_port

# MLflow's client retries a refused connection for minutes by default; a fault scenario
# wants the first failure, so the lab's processes fail fast instead.
FAST_FAIL_MLFLOW = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
                    "MLFLOW_DISABLE_TELEMETRY": "true",
                    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
                    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


class FaultSizes(BaseModel):
    """How big each scenario is; ``quick`` sizes keep the test suite short.

    Attributes:
        interactions: Synthetic interactions of the lab's world.
        users: Synthetic users.
        items: Synthetic items.
        train_epochs: Epochs of the lab's tiny model versions.
        load_seconds: Seconds of steady traffic before and after a fault.
        feedback_batch: Events per ``/feedback`` request.
        feedback_min_acked: Acknowledged events required before the kill.
        resume_epochs: Epochs of the kill-and-resume training run.
        resume_kill_after: Epoch whose checkpoint triggers the kill.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    interactions: int = Field(6_000, ge=500)
    users: int = Field(120, ge=20)
    items: int = Field(300, ge=50)
    train_epochs: int = Field(2, ge=1)
    load_seconds: float = Field(2.0, gt=0)
    feedback_batch: int = Field(20, ge=1, le=1000)
    feedback_min_acked: int = Field(500, ge=10)
    resume_epochs: int = Field(6, ge=3)
    resume_kill_after: int = Field(2, ge=1)

    @classmethod
    def for_run(cls, quick: bool) -> FaultSizes:
        """Small sizes for the tests (``quick``) or larger ones for the benchmark."""
        if quick:
            return cls()
        return cls(interactions=30_000, users=400, items=800, train_epochs=3,
                   load_seconds=5.0, feedback_min_acked=5_000, resume_epochs=10,
                   resume_kill_after=4)


def tiny_train_config(epochs: int, seed: int = 0) -> Any:
    """A small SSE-PT that trains in seconds on the lab's world (one thread: 2-core CI)."""
    from movierec.models.config import ModelConfig  # noqa: PLC0415 - torch-free, but heavy
    from movierec.training.config import TrainConfig  # noqa: PLC0415

    model = ModelConfig(max_len=20, d_item=16, d_user=8, n_blocks=1, n_heads=1, dropout=0.2)
    return TrainConfig(model=model, epochs=epochs, seed=seed, patience=100, batch_size=64,
                       threads=1, device="cpu")


@contextlib.contextmanager
def scoped_env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block and restore the previous values after."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def kill9_group(pid: int) -> None:
    """SIGKILL a process group we started (MLflow's server and its workers go together)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    reap(pid)


def reap(pid: int, timeout: float = 10.0) -> None:
    """Wait for a killed process to end, collecting it if it is a child of this one."""
    poll(lambda: process_gone(pid), timeout, every=0.05)


@dataclass
class Answer:
    """One request a probe sent: when (monotonic seconds), whether it worked, and why not."""

    at: float
    ok: bool
    error: str = ""


@dataclass
class Probe:
    """Requests in a loop against one service, in a thread, recording every answer.

    ``/recommend`` for a known user; with ``feedback_every`` > 0 every n-th request is a
    ``/feedback`` impression whose unique timestamp marks it, so what was acknowledged can
    be looked up in the store afterwards.
    """

    url: str
    user_id: int
    movie_id: int
    feedback_every: int = 0
    pause_s: float = 0.01
    timeout_s: float = 2.0
    answers: list[Answer] = field(default_factory=list)
    acked_markers: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        marker = 1_000_000_000
        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as client:
            count = 0
            while not self._stop.is_set():
                count += 1
                feedback = self.feedback_every > 0 and count % self.feedback_every == 0
                sent = time.monotonic()
                try:
                    if feedback:
                        marker += 1
                        reply = client.post("/feedback", json={"events": [{
                            "user_id": self.user_id, "movie_id": self.movie_id,
                            "event": "impression", "timestamp": marker}]})
                    else:
                        reply = client.post("/recommend", json={"user_id": self.user_id,
                                                                "top_k": 10})
                    ok, error = reply.status_code == 200, f"HTTP {reply.status_code}"
                except httpx.HTTPError as exc:
                    ok, error = False, type(exc).__name__
                if ok and feedback:
                    self.acked_markers.append(marker)
                self.answers.append(Answer(sent, ok, "" if ok else error))
                time.sleep(self.pause_s)

    def __enter__(self) -> Probe:
        self._thread = threading.Thread(target=self._run, daemon=True, name="fault-probe")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def summary(self) -> dict[str, Any]:
        """Requests, failures, the window the failures spanned and distinct errors."""
        failed = [a for a in self.answers if not a.ok]
        window = round(failed[-1].at - failed[0].at, 3) if failed else 0.0
        return {"requests": len(self.answers), "failed": len(failed),
                "failure_window_s": window,
                "errors": sorted({a.error for a in failed})[:5]}


class Lab:
    """A local platform with two registered tiny versions; version 1 is in production.

    Use as a context manager (``with Lab(home, sizes) as lab``): entering builds and starts
    everything, leaving stops only what it started. Scenarios wrap their calls in
    :meth:`env`, which points ``MOVIEREC_HOME`` and MLflow at the lab (tests change the
    ambient environment per test).
    """

    def __init__(self, home: Path, sizes: FaultSizes | None = None) -> None:
        from movierec.lifecycle.backends.local import LocalPlatform  # noqa: PLC0415

        self.home = Path(home)
        self.sizes = sizes or FaultSizes()
        self.config = PlatformConfig(mlflow_port=free_port(), ports={
            "production": free_port(), "staging": free_port(), "canary": free_port()},
            ready_timeout_s=90.0)
        self.platform = LocalPlatform(self.config, home=self.home)
        self.raw = self.home / "lab" / "raw"
        self.data = self.home / "lab" / "data"
        self.versions: list[str] = []
        self.user_id = 0
        self.movie_id = 0

    # ---- environment ------------------------------------------------------------------
    def env_vars(self) -> dict[str, str]:
        """What every lab process needs: its home, the MLflow server, fast MLflow failures."""
        return {"MOVIEREC_HOME": str(self.home), "MLFLOW_TRACKING_URI": self.config.mlflow_url,
                "RAY_AUTH_MODE": "disabled", **FAST_FAIL_MLFLOW}

    def env(self) -> contextlib.AbstractContextManager[None]:
        """Point this process at the lab for a block."""
        return scoped_env(self.env_vars())

    def cli_args(self) -> list[str]:
        """The ``--*-port`` options of ``movierec platform``."""
        ports = self.config.ports
        return [f"--mlflow-port={self.config.mlflow_port}",
                f"--production-port={ports['production']}",
                f"--staging-port={ports['staging']}", f"--canary-port={ports['canary']}"]

    def cli(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run ``movierec ARGS`` in a subprocess with the lab's environment."""
        return subprocess.run([sys.executable, "-m", "movierec.cli.main", *args],
                              env={**os.environ, **self.env_vars()}, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def url(self, stage: Stage) -> str:
        """Base URL of a stage."""
        return self.config.url(stage)

    # ---- set-up -----------------------------------------------------------------------
    def __enter__(self) -> Lab:
        try:
            with self.env():
                self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        from movierec.data.synth import SynthConfig, write_synthetic  # noqa: PLC0415
        from movierec.lifecycle.world import build_world, prepare_round  # noqa: PLC0415
        from movierec.registry.mlflow_registry import set_alias  # noqa: PLC0415

        sizes = self.sizes
        write_synthetic(SynthConfig(interactions=sizes.interactions, users=sizes.users,
                                    items=sizes.items, seed=7), self.raw)
        world = build_world("canonical", 0.1, self.raw)
        prepare_round(world, self.home / "feedback.db", self.data)
        self.platform.up()
        for seed in (0, 1):
            self.versions.append(self.train_version(seed))
        set_alias("production", self.versions[0], "fault lab: first production model")
        self.platform.reconcile()
        self._pick_known_user()

    def train_version(self, seed: int) -> str:
        """Train, export and register one tiny version; return its number."""
        from movierec.registry.bundle import bundle_from_run  # noqa: PLC0415
        from movierec.registry.mlflow_registry import register_bundle  # noqa: PLC0415
        from movierec.training.runner import train_and_track  # noqa: PLC0415

        config = tiny_train_config(self.sizes.train_epochs, seed)
        result = train_and_track(config, self.data, progress=False, run_name=f"lab-{seed}")
        bundle = self.home / "lab" / f"bundle-{seed}"
        bundle_from_run(result["run_id"], self.data, bundle)
        return register_bundle(bundle, result["run_id"], f"fault lab seed {seed}")

    def _pick_known_user(self) -> None:
        import polars as pl  # noqa: PLC0415

        users = pl.read_parquet(self.data / "users.parquet")
        items = pl.read_parquet(self.data / "items.parquet")
        self.user_id = int(users["user_id"][0])
        self.movie_id = int(items["item_id"][0])

    def close(self) -> None:
        """Stop the supervisor (and its stages) and MLflow; reap them."""
        pids = [self.platform_pid(name) for name in ("supervisor", "mlflow")]
        with contextlib.suppress(Exception):  # best effort: tear-down must not hide an error
            self.platform.down()
        for pid in pids:
            if pid:
                reap(pid, timeout=2.0)

    def restart_mlflow(self) -> float:
        """Start MLflow again (``platform up``); return the seconds until it is healthy."""
        started = time.monotonic()
        with self.env():
            self.platform.up()
        return time.monotonic() - started

    def kill_mlflow(self) -> None:
        """``kill -9`` the MLflow server (its whole process group) and reap it."""
        pid = self.platform_pid("mlflow")
        if pid is None:
            raise RuntimeError("the lab's MLflow has no pid file")
        kill9_group(pid)
        wait_until(lambda: not http_ok(f"{self.config.mlflow_url}/health"), 10, "MLflow down")

    # ---- observations -----------------------------------------------------------------
    def platform_pid(self, name: str) -> int | None:
        """Pid from ``platform/<name>.pid`` (mlflow, supervisor or a stage) while it runs."""
        return read_pid_file(self.platform.folder / f"{name}.pid")

    def probe(self, stage: Stage, feedback_every: int = 0) -> Probe:
        """A probe against a stage, for the lab's known user."""
        return Probe(self.url(stage), self.user_id, self.movie_id, feedback_every)

    def registry_state(self) -> dict[str, Any]:
        """Versions, aliases and the alias history, to compare before and after a fault."""
        from movierec.registry.mlflow_registry import (  # noqa: PLC0415
            ALIASES,
            MODEL_NAME,
            current_version,
            read_history,
        )
        from movierec.training.tracking import configure  # noqa: PLC0415

        with self.env():
            client = configure().MlflowClient()
            versions = sorted(int(v.version) for v in
                              client.search_model_versions(f"name='{MODEL_NAME}'"))
            aliases = {alias: current_version(alias) for alias in ALIASES}
            history = read_history()
        return {"versions": versions, "aliases": aliases, "history": history}

    def serving(self) -> dict[str, str | None]:
        """Which version each stage reports on ``/version`` (None: not serving)."""
        return {stage: self.platform.serving_version(stage) for stage in self.config.ports}

