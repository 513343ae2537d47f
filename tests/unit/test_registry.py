import json
import socket
from pathlib import Path

import httpx
import pytest

from movierec.cli.main import main
from movierec.registry import mlflow_registry as reg
from movierec.training.tracking import configure


def _versions(n: int) -> list[str]:
    """Create a registered model with ``n`` versions (sources need not be bundles here)."""
    mlflow = configure()
    client = mlflow.MlflowClient()
    client.create_registered_model(reg.MODEL_NAME)
    out = []
    for i in range(n):
        with mlflow.start_run() as run:
            mlflow.log_param("i", i)
        out.append(str(client.create_model_version(reg.MODEL_NAME, source=f"file:///tmp/v{i}",
                                                   run_id=run.info.run_id).version))
    return out


def test_alias_moves_are_recorded_with_who_when_from_to_and_why() -> None:
    v1, v2, v3 = _versions(3)
    reg.set_alias("production", v1, "first model", who="ci")
    reg.set_alias("production", v2, "beat v1 by 0.01 NDCG@10", who="ci")
    assert reg.current_version("production") == v2
    events = reg.read_history("production")
    assert [(e["from"], e["to"], e["why"], e["who"]) for e in events] == [
        (None, v1, "first model", "ci"), (v1, v2, "beat v1 by 0.01 NDCG@10", "ci")]
    assert all(e["at"] for e in events)
    tags = configure().MlflowClient().get_model_version(reg.MODEL_NAME, v2).tags
    assert tags["production_reason"] == "beat v1 by 0.01 NDCG@10"
    # The history file is append-only JSON Lines: each move written ahead, then done.
    lines = [json.loads(line) for line in reg.history_path().read_text().splitlines()]
    assert [(r.get("to"), r["state"]) for r in lines] == [
        (v1, "pending"), (None, "done"), (v2, "pending"), (None, "done")]
    assert lines[2]["id"] == lines[3]["id"] == events[1]["id"]
    reg.set_alias("staging", v3, "candidate")
    assert len(reg.read_history()) == 3


def test_rollback_returns_to_the_previous_version_and_is_recorded() -> None:
    v1, v2, v3 = _versions(3)
    with pytest.raises(reg.RegistryError, match="not set"):
        reg.rollback("production")
    reg.set_alias("production", v1, "first")
    with pytest.raises(reg.RegistryError, match="no earlier version"):
        reg.rollback("production")
    reg.set_alias("production", v2, "second")
    event = reg.rollback("production", "canary regression")
    assert (event["from"], event["to"], event["action"]) == (v2, v1, "rollback")
    assert reg.current_version("production") == v1
    assert reg.read_history("production")[-1]["why"] == "canary regression"
    # A second rollback steps further back, never forward again to what was rolled back.
    with pytest.raises(reg.RegistryError, match="no earlier version"):
        reg.rollback("production")
    reg.set_alias("production", v2, "again")
    reg.set_alias("production", v3, "third")
    assert [reg.rollback("production")["to"], reg.rollback("production")["to"]] == [v2, v1]


def test_remove_alias_and_bad_inputs() -> None:
    (v1,) = _versions(1)
    reg.set_alias("canary", v1, "try it")
    reg.remove_alias("canary", "rejected: hit rate lower")
    assert reg.current_version("canary") is None
    assert reg.read_history("canary")[-1]["to"] is None
    with pytest.raises(reg.RegistryError, match="unknown alias"):
        reg.set_alias("prod", v1, "typo")


def test_registry_cli(capsys: pytest.CaptureFixture[str]) -> None:
    v1, v2 = _versions(2)
    assert main(["registry", "set-alias", "production", v1, "--reason", "first"]) == 0
    assert main(["registry", "set-alias", "production", v2, "--reason", "second"]) == 0
    assert main(["registry", "rollback", "production"]) == 0
    capsys.readouterr()
    assert main(["registry", "history"]) == 0
    out = capsys.readouterr().out
    assert out.count("production") == 3 and "rollback" in out
    assert main(["registry", "history", "--json", "--alias", "production"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    # Nothing to roll back is a one-line error (exit 2), not a traceback.
    assert main(["registry", "rollback", "canary"]) == 2
    assert "alias 'canary' is not set" in capsys.readouterr().err


def test_an_unreachable_tracking_server_is_named_in_the_failure_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from movierec.lifecycle.pipeline import _failure_reason
    from movierec.training.tracking import tracking_unreachable

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    with pytest.raises(MlflowException) as refused:
        MlflowClient(url).search_registered_models()
    assert tracking_unreachable(refused.value)
    assert _failure_reason(refused.value).startswith(f"MLflow at {url} is unreachable")
    after = _failure_reason(refused.value, registered="4")
    assert "version 4 was registered" in after and "nothing was registered" not in after
    other = MlflowException("RESOURCE_DOES_NOT_EXIST: no such model")
    assert not tracking_unreachable(other)
    assert _failure_reason(other) == "MlflowException: RESOURCE_DOES_NOT_EXIST: no such model"
    # A stage that refuses its reload is not MLflow, though a ConnectionRefusedError is in
    # that chain too.
    with pytest.raises(httpx.ConnectError) as stage_down:
        httpx.post(f"{url}/admin/reload", timeout=2)
    assert not tracking_unreachable(stage_down.value)
    assert _failure_reason(stage_down.value).startswith("ConnectError: ")


def test_current_version_is_none_only_when_nothing_is_there(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

    assert reg.current_version("production") is None  # no registered model yet
    (v1,) = _versions(1)
    assert reg.current_version("production") is None  # a model, no alias
    reg.set_alias("production", v1, "first")
    assert reg.current_version("production") == v1

    class FailingClient:
        def get_model_version_by_alias(self, name: str, alias: str) -> None:
            raise MlflowException("API request failed: 502 Bad Gateway",
                                  error_code=INTERNAL_ERROR)

    # A failing server is not "no alias": reconcile would retire every stage on it.
    monkeypatch.setattr(reg, "_client", FailingClient)
    with pytest.raises(MlflowException, match="502"):
        reg.current_version("production")


def test_a_torn_last_history_line_is_skipped_and_a_damaged_one_is_an_error() -> None:
    v1, v2 = _versions(2)
    reg.set_alias("production", v1, "first")
    reg.set_alias("production", v2, "second")
    path = reg.history_path()
    whole = path.read_text()
    path.write_text(whole + '{"alias": "production", "fr')  # a crash mid-append
    assert [e["to"] for e in reg.read_history("production")] == [v1, v2]
    assert reg.rollback("production", "after the crash")["to"] == v1
    # The next append cut the torn line first, so its own event reads back.
    assert [e["to"] for e in reg.read_history("production")] == [v1, v2, v1]
    after = path.read_text()  # the torn line is gone, then the rollback's two lines
    assert after.startswith(whole) and len(after[len(whole):].splitlines()) == 2
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(reg.RegistryError, match="line 2 is not JSON"):
        reg.read_history()


@pytest.mark.parametrize(("before", "torn"), [
    ("", "x" * 10), ("", "y" * 9000), ('{"a": 1}\n' * 3, "z" * 9000), ('{"a": 1}\n', "")])
def test_drop_torn_line_cuts_only_the_unfinished_last_line(tmp_path: Path, before: str,
                                                           torn: str) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text(before + torn)
    reg._drop_torn_line(path)
    assert path.read_text() == before


@pytest.mark.parametrize("follows_alias", [False, True])
def test_rollback_production_deploys_and_moves_the_alias_in_the_backend_s_order(
        follows_alias: bool) -> None:
    from movierec.lifecycle.pipeline import rollback_production
    from movierec.serving.loadtest import free_port

    v1, v2 = _versions(2)
    reg.set_alias("production", v1, "first")
    reg.set_alias("production", v2, "second")
    calls: list[tuple[str, str | None]] = []

    class Backend:
        name = "fake"

        def __init__(self) -> None:
            self.follows_alias = follows_alias

        def stage_url(self, stage: str) -> str:
            return f"http://127.0.0.1:{free_port()}"  # nothing there: the probe just counts

        def deploy(self, stage: str, version: str) -> dict[str, str]:
            # What the alias names at deploy time: a chameleon pod loads exactly that.
            calls.append((version, reg.current_version("production")))
            return {"how": "fake"}

    result = rollback_production(Backend(), "bad canary")  # type: ignore[arg-type]
    assert (result["from"], result["to"]) == (v2, v1)
    # chameleon's pods resolve the alias, so it moves first; locally the deploy goes first.
    assert calls == [(v1, v1 if follows_alias else v2)]
    assert reg.current_version("production") == v1


def test_two_bundles_of_one_run_keep_their_own_files(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.registry import bundle as bundle_module
    from tests.unit.test_serving_bundle import make_bundle

    # The tiny test bundles are checksummed but hold no trained model kind: what the
    # registry stores, not the model check, is under test here.
    monkeypatch.setattr(bundle_module, "verify_bundle",
                        lambda folder: json.loads((folder / "metadata.json").read_text()))
    mlflow = configure()
    with mlflow.start_run() as run:
        mlflow.log_param("model", "tiny")
    first, second = (make_bundle(tmp_path / name, seed=seed, run_id=run.info.run_id)
                     for name, seed in (("a", 0), ("b", 1)))
    v1 = reg.register_bundle(first, run.info.run_id)
    reg.register_bundle(second, run.info.run_id)  # a second export of the same run
    got = reg.download_bundle(v1, tmp_path / "got")
    # Version 1 still serves its own files, not the later export's.
    assert (got / "model.onnx").read_bytes() == (first / "model.onnx").read_bytes()
    assert (got / "model.onnx").read_bytes() != (second / "model.onnx").read_bytes()
    # Files replaced wholesale (metadata included) no longer pass as version 1.
    (got / "metadata.json").write_text((second / "metadata.json").read_text())
    with pytest.raises(reg.RegistryError, match="not the one registered as version"):
        reg.download_bundle(v1, tmp_path / "got")


def test_a_move_cut_short_by_a_crash_is_settled_by_the_next_one(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    v1, v2, v3 = _versions(3)
    reg.set_alias("production", v1, "first")

    class Killed(BaseException):  # like SIGKILL: nothing after it runs
        pass

    # Killed after MLflow moved the alias, before the history said so.
    real_append = reg._append_history
    def append_until_done(record: dict) -> None:
        if record.get("state") == "done":
            raise Killed
        real_append(record)
    monkeypatch.setattr(reg, "_append_history", append_until_done)
    with pytest.raises(Killed):
        reg.set_alias("production", v2, "second")
    monkeypatch.setattr(reg, "_append_history", real_append)
    assert reg.current_version("production") == v2
    assert [e["to"] for e in reg.read_history("production")] == [v1]  # not known yet
    assert reg.read_history("production", every_state=True)[-1]["state"] == "pending"
    # Killed while asking MLflow to move it: the alias never moved.
    real_settle, real_client = reg._settle, reg._client
    monkeypatch.setattr(reg, "_settle", lambda event: "killed")  # dies before settling
    client = reg._client()
    monkeypatch.setattr(reg, "_client", lambda: client)
    def refuse(*args: object) -> None:
        raise Killed
    monkeypatch.setattr(client, "set_registered_model_alias", refuse)
    with pytest.raises(Killed):
        reg.set_alias("production", v3, "third")
    monkeypatch.setattr(reg, "_settle", real_settle)
    monkeypatch.setattr(reg, "_client", real_client)
    # The next move settles both: the first took effect, the second did not.
    reg.set_alias("staging", v3, "candidate")
    states = [(e["to"], e["state"]) for e in reg.read_history("production", every_state=True)]
    assert states == [(v1, "done"), (v2, "done"), (v3, "not applied")]
    assert [e["to"] for e in reg.read_history("production")] == [v1, v2]
    tags = configure().MlflowClient().get_model_version(reg.MODEL_NAME, v2).tags
    assert tags["production_reason"] == "second"
    assert reg.rollback("production")["to"] == v1  # from what really happened
    assert main(["registry", "history", "--alias", "production"]) == 0
    assert "third [not applied]" in capsys.readouterr().out


def test_a_rollback_steps_back_from_a_move_its_process_never_finished(
        monkeypatch: pytest.MonkeyPatch) -> None:
    v1, v2 = _versions(2)
    reg.set_alias("production", v1, "first")
    real_append = reg._append_history

    def die_before_done(record: dict) -> None:
        if record.get("state") == "done":
            raise KeyboardInterrupt  # the process goes away here
        real_append(record)

    monkeypatch.setattr(reg, "_append_history", die_before_done)
    with pytest.raises(KeyboardInterrupt):
        reg.set_alias("production", v2, "second")
    monkeypatch.setattr(reg, "_append_history", real_append)
    # The pending move to v2 did happen: a rollback steps back from it, to v1.
    assert reg.rollback("production", "v2 misbehaves")["to"] == v1
    assert [(e["to"], e["action"]) for e in reg.read_history("production")] == [
        (v1, "set"), (v2, "set"), (v1, "rollback")]


def test_a_move_the_server_applied_before_the_client_gave_up_is_a_success(
        monkeypatch: pytest.MonkeyPatch) -> None:
    (v1,) = _versions(1)
    client = reg._client()
    monkeypatch.setattr(reg, "_client", lambda: client)
    real = client.set_registered_model_alias

    def applied_then_timed_out(*args: object) -> None:
        real(*args)
        raise TimeoutError("read timed out")

    monkeypatch.setattr(client, "set_registered_model_alias", applied_then_timed_out)
    event = reg.set_alias("canary", v1, "try it")
    assert event["state"] == "done" and reg.current_version("canary") == v1
    assert [e["state"] for e in reg.read_history("canary", every_state=True)] == ["done"]
    tags = client.get_model_version(reg.MODEL_NAME, v1).tags
    assert tags["canary_reason"] == "try it"


def test_failed_version_tags_never_undo_or_block_a_move(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    v1, v2 = _versions(2)

    client = reg._client()

    def tags_fail(*args: object) -> None:
        raise ConnectionError("tracking server went away after the alias moved")

    monkeypatch.setattr(client, "set_model_version_tag", tags_fail)
    monkeypatch.setattr(reg, "_client", lambda: client)
    assert reg.set_alias("production", v1, "first")["state"] == "done"
    assert "tags were not set" in caplog.text
    assert reg.set_alias("production", v2, "second")["state"] == "done"  # not blocked
    assert [e["to"] for e in reg.read_history("production")] == [v1, v2]
