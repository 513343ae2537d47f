"""The model registry: MLflow registered model ``movierec`` with aliases and an audit trail.

A version is a verified bundle logged as artifacts of its training run. Aliases
(``staging``, ``canary``, ``production``) point at versions; every move is recorded twice,
durably: as version tags (so MLflow's UI shows it) and in an append-only JSON Lines history
under ``MOVIEREC_HOME`` (fsynced before the call returns). ``rollback`` moves an alias back
to the version it pointed at before, and is recorded the same way.

MLflow and the history file cannot change in one transaction, so a move is written ahead:
its event goes to the history as ``pending``, then the alias moves, then a line marks the
event ``done``. A process killed in between leaves a pending event; the next move (under
the same file lock) settles it by asking MLflow where the alias points: ``done`` if the
alias reached the event's target, else ``not applied``. The history thus never misses a
move that happened, and never claims one that did not.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from movierec.config import get_settings
from movierec.data.sources import sha256_file
from movierec.registry.layout import METADATA_FILE
from movierec.training.tracking import configure

MODEL_NAME = "movierec"
ALIASES = ("staging", "canary", "production")
HISTORY_FILE = "registry_history.jsonl"
# An event's state: in flight (or its process died), took effect, or never did.
PENDING, DONE, NOT_APPLIED = "pending", "done", "not applied"
# Version tags: where the version's bundle lies in its run, and the sha256 of its metadata.
BUNDLE_PATH_TAG, BUNDLE_DIGEST_TAG = "bundle_path", "bundle_sha256"
# What MLflow answers for a model or an alias that does not exist (a file store, SQLite or
# a tracking server alike); every other error is a real failure.
_NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


log = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """A registry operation cannot be done (unknown alias, nothing to roll back to, ...)."""


def _client() -> Any:
    return configure().MlflowClient()


def history_path() -> Path:
    """The append-only alias history (one JSON object per line)."""
    return get_settings().home / HISTORY_FILE


def _append_history(event: dict[str, Any]) -> None:
    path = history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    _drop_torn_line(path)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(event, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _drop_torn_line(path: Path) -> None:
    """Cut a last line without its newline: a crash mid-append, whose call never returned.

    Appended to, it would merge with the next event into one line that is not JSON.
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("r+b") as handle:
        end = handle.seek(0, os.SEEK_END)
        handle.seek(end - 1)
        if handle.read(1) == b"\n":
            return
        block_end = end  # read back a block at a time: the history only grows
        while block_end > 0:
            block_start = max(0, block_end - 4096)
            handle.seek(block_start)
            newline = handle.read(block_end - block_start).rfind(b"\n")
            if newline >= 0:
                handle.truncate(block_start + newline + 1)
                break
            block_end = block_start
        else:  # one torn line and nothing before it
            handle.truncate(0)
        handle.flush()
        os.fsync(handle.fileno())


def _history_lines() -> list[dict[str, Any]]:
    """The history file's records, oldest first (a torn last line is left out)."""
    path = history_path()
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):  # torn by a crash mid-append (see _drop_torn_line)
                break
            raise RegistryError(f"{path}: line {number} is not JSON ({error}); the history "
                                "is damaged, restore it from a backup") from error
    return records


def read_history(alias: str | None = None, every_state: bool = False) -> list[dict[str, Any]]:
    """Recorded alias moves, oldest first (optionally for one alias).

    Args:
        alias: Only this alias's moves.
        every_state: Also the moves that are ``pending`` (in flight, or their process died
            before settling them) or ``not applied``; by default only the moves that took
            effect. Each event's ``state`` says which.
    """
    events: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    for record in _history_lines():
        if "alias" not in record:  # the outcome of a pending event
            if record.get("id") in by_id:
                by_id[record["id"]]["state"] = record["state"]
            continue
        event = {**record, "state": record.get("state", DONE)}  # older lines: done
        events.append(event)
        if "id" in event:
            by_id[event["id"]] = event
    return [e for e in events if (alias is None or e["alias"] == alias)
            and (every_state or e["state"] == DONE)]


_LOCK_HELD = threading.local()  # this thread's depth inside _history_lock


@contextlib.contextmanager
def _history_lock() -> Iterator[None]:
    """One alias move at a time on this machine, so a pending event is a dead process's.

    Re-entrant within a thread (a rollback picks its target and moves under one lock): a
    second flock on a new descriptor would wait for the first forever.
    """
    depth = getattr(_LOCK_HELD, "depth", 0)
    if depth:
        _LOCK_HELD.depth = depth + 1
        try:
            yield
        finally:
            _LOCK_HELD.depth = depth
        return
    path = history_path().with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        _LOCK_HELD.depth = 1
        try:
            yield
        finally:
            _LOCK_HELD.depth = 0


def settle_pending() -> None:
    """Settle every move left pending by a process that died mid-move (see the module)."""
    with _history_lock():
        for event in read_history(every_state=True):
            if event["state"] == PENDING:
                _settle(event)


def _settle(event: dict[str, Any]) -> str:
    """Record whether a pending move took effect, asking MLflow where its alias points."""
    state = DONE if current_version(event["alias"]) == event["to"] else NOT_APPLIED
    _append_history({"id": event["id"], "state": state})
    if state == DONE:  # its version tags may not have been set
        _tag_version(event)
    return state


def _tag_version(event: dict[str, Any]) -> None:
    """The version's tags that show an alias move in MLflow's UI (best effort).

    The move itself is recorded (alias and history) before: a failure here warns and
    never turns a move that happened into an error, nor blocks later moves.
    """
    if event["to"] is None:
        return
    try:
        client = _client()
        for name, value in (("since", event["at"]), ("reason", event["why"])):
            client.set_model_version_tag(MODEL_NAME, event["to"],
                                         f"{event['alias']}_{name}", value)
    except Exception as error:  # the alias and the history already say what happened
        log.warning("version %s: the %s tags were not set (%s); the move is recorded",
                    event["to"], event["alias"], error)


def _move(alias: str, to: str | None, reason: str, who: str | None, action: str,
          apply: Callable[[], None]) -> dict[str, Any]:
    """Write the move ahead as pending, ``apply`` it in MLflow, then mark it done.

    Earlier pending moves are settled first. When ``apply`` fails the move is settled at
    once if MLflow can say where the alias points (else by the next move): the error is
    raised unless the alias did move (a client timeout after the server applied it).

    Raises:
        RegistryError: Removing an alias that is not set.
    """
    with _history_lock():
        settle_pending()
        previous = current_version(alias)
        if to is None and previous is None:
            raise RegistryError(f"alias {alias!r} is not set")
        event = {"alias": alias, "from": previous, "to": to, "who": who or getpass.getuser(),
                 "why": reason, "action": action,
                 "at": datetime.now(UTC).isoformat(timespec="seconds"), "unix": time.time(),
                 "id": uuid.uuid4().hex}
        _append_history({**event, "state": PENDING})
        try:
            apply()
        except Exception:
            state = None
            with contextlib.suppress(Exception):  # MLflow may be down: the next move settles
                state = _settle(event)
            if state != DONE:
                raise
            return {**event, "state": DONE}
        _append_history({"id": event["id"], "state": DONE})
        _tag_version(event)
    return {**event, "state": DONE}


def register_bundle(bundle_dir: Path, run_id: str, description: str = "") -> str:
    """Log a verified bundle to its run and create a registry version; return the version.

    Raises:
        BundleError: The bundle does not verify (nothing is registered).
    """
    from movierec.registry.bundle import verify_bundle  # noqa: PLC0415 - onnxruntime import

    metadata = verify_bundle(bundle_dir)
    # Named by its content: a second export of the same run (other thresholds) gets a path
    # of its own instead of replacing the files an earlier version (production) serves.
    digest = sha256_file(Path(bundle_dir) / METADATA_FILE)
    artifact_path = f"bundle-{digest[:16]}"
    mlflow = configure()
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifacts(str(bundle_dir), artifact_path=artifact_path)
    try:
        client.get_registered_model(MODEL_NAME)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(MODEL_NAME, description="movierec SSE-PT bundles")
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    version = client.create_model_version(
        MODEL_NAME, source=source, run_id=run_id, description=description,
        tags={"data_version": metadata["data_version"], "model_kind": metadata["model_kind"],
              "git_commit": metadata.get("git_commit", "unknown"),
              BUNDLE_PATH_TAG: artifact_path, BUNDLE_DIGEST_TAG: digest})
    return str(version.version)


def current_version(alias: str) -> str | None:
    """The version an alias points at, or None when the alias or the model does not exist.

    Raises:
        mlflow.exceptions.MlflowException: Any other failure (MLflow unreachable, a server
            error). Reading it as "no alias" would make ``reconcile`` retire every stage
            whenever the tracking server hiccups.
    """
    mlflow = configure()
    try:
        return str(_client().get_model_version_by_alias(MODEL_NAME, alias).version)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code in _NOT_FOUND_CODES:
            return None
        raise


def set_alias(alias: str, version: str, reason: str, who: str | None = None,
              action: str = "set") -> dict[str, Any]:
    """Point ``alias`` at ``version`` and record who, when, from, to and why."""
    if alias not in ALIASES:
        raise RegistryError(f"unknown alias {alias!r}; use one of {', '.join(ALIASES)}")
    client = _client()
    client.get_model_version(MODEL_NAME, version)  # fails clearly on an unknown version
    return _move(alias, str(version), reason, who, action,
                 lambda: client.set_registered_model_alias(MODEL_NAME, alias, version))


def remove_alias(alias: str, reason: str, who: str | None = None) -> dict[str, Any]:
    """Remove ``alias`` (e.g. a rejected canary) and record it."""
    return _move(alias, None, reason, who, "remove",
                 lambda: _client().delete_registered_model_alias(MODEL_NAME, alias))


def previous_version(alias: str) -> str:
    """The version a rollback of ``alias`` would move it to (nothing moves).

    Rollbacks step back through the moves that were not rollbacks: after 1 -> 2 -> 3, a
    rollback goes to 2 and a second one to 1 (not back to 3).

    Raises:
        RegistryError: The alias is not set, or has no earlier version.
    """
    settle_pending()  # a move cut short by a crash may be the one to step back from
    current = current_version(alias)
    if current is None:
        raise RegistryError(f"alias {alias!r} is not set: nothing to roll back")
    for event in reversed(read_history(alias)):
        if event.get("action") == "rollback":
            continue
        if event["to"] == current and event["from"] not in (None, current):
            return str(event["from"])
    raise RegistryError(f"{alias} has no earlier version than {current} to roll back to")


def rollback(alias: str, reason: str = "rollback", who: str | None = None) -> dict[str, Any]:
    """Move ``alias`` back to :func:`previous_version` and record it (under one lock)."""
    with _history_lock():
        return set_alias(alias, previous_version(alias), reason, who, action="rollback")


def download_bundle(alias_or_version: str, dest: Path | None = None) -> Path:
    """A local copy of the bundle of ``models:/movierec@alias`` or of a version number."""
    mlflow = configure()
    client = mlflow.MlflowClient()
    if alias_or_version.isdigit():
        version = client.get_model_version(MODEL_NAME, alias_or_version)
    else:
        version = client.get_model_version_by_alias(MODEL_NAME, alias_or_version)
    dest = dest or get_settings().home / "bundles" / f"v{version.version}"
    tags = version.tags or {}
    if not (dest / METADATA_FILE).exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.parent / f".v{version.version}.part"
        local = mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=tags.get(BUNDLE_PATH_TAG, "bundle"),
            dst_path=str(staging))  # "bundle": versions registered before the tag
        Path(local).rename(dest)  # complete downloads only: a partial one stays in .part
        shutil.rmtree(staging, ignore_errors=True)
    # The bundle's files are checked against its metadata when served; this ties the
    # metadata to the version, so files replaced wholesale are caught too.
    expected = tags.get(BUNDLE_DIGEST_TAG)
    if expected and sha256_file(dest / METADATA_FILE) != expected:
        raise RegistryError(f"{dest}: its {METADATA_FILE} is not the one registered as version "
                            f"{version.version} (sha256 differs): delete the folder to "
                            "download it again, or the artifacts were replaced")
    return dest
