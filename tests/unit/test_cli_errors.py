"""Wrong input at the command line: one line on stderr naming the fix, and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from movierec.cli.main import main


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``movierec argv``; assert exit status 2 and one line; return that line."""
    try:
        status = main(argv)
    except SystemExit as exited:  # argparse refuses a value while parsing
        status = int(exited.code or 0)
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_settings_errors_name_the_setting_and_the_value(
        capsys: pytest.CaptureFixture[str], small_prepared: Path) -> None:
    line = _error(capsys, ["train", "--data", str(small_prepared), "--epochs", "0"])
    assert line == ("movierec: error: invalid TrainConfig settings: epochs: Input should be "
                    "greater than or equal to 1 (got 0)")


@pytest.mark.parametrize(("content", "says"), [
    (None, "is a folder, not a JSON file"),
    ("[1]", "holds a JSON list, not an object"),
    ("{bad", "not valid JSON (line 1, column 2"),
])
def test_a_config_that_is_no_json_object_is_named(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, small_prepared: Path,
        content: str | None, says: str) -> None:
    config = tmp_path / "config.json"
    if content is None:
        config.mkdir()
    else:
        config.write_text(content)
    line = _error(capsys, ["train", "--data", str(small_prepared), "--config", str(config)])
    assert f"--config {config}: {says}" in line


def test_unknown_ids_and_folders_are_one_line(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    line = _error(capsys, ["evaluate", "not-a-run"])
    assert "not-a-run not found" in line and "movierec evaluate" in line
    line = _error(capsys, ["train", "--data", str(tmp_path / "nowhere")])
    assert "is not a prepared dataset" in line and "movierec data prepare --dataset" in line


@pytest.mark.parametrize(("argv", "says"), [
    (["serve", "--bundle", "b", "--port", "99999"], "--port: 99999 is out of range"),
    (["train", "--data", "d", "--workers", "-1"], "--workers: -1 is out of range"),
    (["pipeline", "--workers", "-1"], "--workers: -1 is out of range"),
    (["train", "--data", "d", "--model", "pop", "--workers", "2", "--gpu"],
     "--workers, --gpu: the popularity baseline counts training interactions in-process"),
    (["pipeline", "--epochs", "0"], "--epochs: 0 is out of range"),
    (["evaluate", "--latest", "0"], "--latest: 0 is out of range"),
    (["export", "--run", "r", "--data", "d", "--out", "o", "--max-fp32-diff", "-1"],
     "--max-fp32-diff: -1 is out of range"),
    (["canary", "analyze", "--canary-hits", "-1", "--canary-requests", "300",
      "--production-hits", "9", "--production-requests", "70"], "hits (-1) must be between"),
    (["canary", "analyze", "--canary-hits", "4", "--canary-requests", "3", "--canary-errors",
      "5", "--production-hits", "9", "--production-requests", "70"], "errors (5) must be"),
])
def test_impossible_numbers_are_refused_before_any_work(
        capsys: pytest.CaptureFixture[str], argv: list[str], says: str) -> None:
    assert says in _error(capsys, argv)


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    out = capsys.readouterr().out
    assert "(default: 30)" in out and "(default: 0)" in out  # --max-epochs, --seed
    assert "(default: None)" not in out and "(default: False)" not in out


def test_more_clicks_than_served_lists_count_as_one_each(
        capsys: pytest.CaptureFixture[str]) -> None:
    import json

    main(["canary", "analyze", "--canary-hits", "400", "--canary-requests", "300",
          "--production-hits", "90", "--production-requests", "700"])
    captured = capsys.readouterr()
    assert "400 hits for 300 served requests" in captured.err
    assert json.loads(captured.out)["canary"]["hit_rate"] == 1.0


def test_filters_that_leave_nothing_and_a_stopped_mlflow_are_one_line(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from movierec.serving.loadtest import free_port

    assert main(["data", "synth", "--interactions", "500", "--users", "20", "--items", "50",
                 "--out", str(tmp_path / "raw")]) == 0
    capsys.readouterr()
    line = _error(capsys, ["data", "prepare", "--dataset", "canonical", "--source",
                           str(tmp_path / "raw"), "--min-user", "100000", "--out",
                           str(tmp_path / "p")])
    assert "no interactions are left of 500 after the filters" in line
    assert not (tmp_path / "p").exists()
    line = _error(capsys, ["platform", "reconcile", "--mlflow-port", str(free_port())])
    assert "is not running" in line and "movierec platform up" in line


def test_user_message_reads_mlflow_subclasses_and_keeps_lines_short() -> None:
    from mlflow.exceptions import MlflowException, RestException
    from pydantic import BaseModel, Field, ValidationError

    from movierec.cli.main import user_message

    missing = RestException({"error_code": "RESOURCE_DOES_NOT_EXIST",
                             "message": "Run 'abc' not found"})  # as a tracking server says
    assert "Run 'abc' not found" in (user_message(missing) or "")
    other = MlflowException("Changing param values is not allowed",
                            error_code="INVALID_PARAMETER_VALUE")
    assert user_message(other) is None  # not an unknown id: a traceback, maybe a bug

    class Settings(BaseModel):
        name: str = Field(max_length=3)

    try:
        Settings(name="x" * 100_000)
    except ValidationError as error:
        message = user_message(error) or ""
    assert message.startswith("invalid Settings settings: name:") and len(message) < 300


def test_sigterm_ends_a_training_run_as_killed_and_exits_130(small_prepared: Path,
                                                              tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    import mlflow

    # A run that would never end by itself: no early stop, so SIGTERM always finds it training.
    endless = tmp_path / "endless.json"
    endless.write_text('{"patience": 1000000}')
    proc = subprocess.Popen([sys.executable, "-m", "movierec.cli.main", "train", "--data",
                             str(small_prepared), "--epochs", "1000000", "--config",
                             str(endless), "--quiet"],
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    # The child's store (an earlier test may have pointed mlflow's global URI elsewhere).
    client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        experiment = client.get_experiment_by_name("movierec")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs and client.get_metric_history(runs[0].info.run_id, "loss"):
            break  # training runs: an epoch was logged
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # as Kubernetes stops a pod
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: terminated (SIGTERM)" in err
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "KILLED"


def test_an_unreachable_tracking_server_is_one_line(capsys: pytest.CaptureFixture[str],
                                                     small_prepared: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.serving.loadtest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    line = _error(capsys, ["train", "--data", str(small_prepared), "--model", "pop",
                           "--quiet"])
    assert f"MLflow at {url} is unreachable" in line
