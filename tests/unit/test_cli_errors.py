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
    (["evaluate", "--latest", "0"], "--latest: 0 is out of range"),
    (["export", "--run", "r", "--data", "d", "--out", "o", "--max-fp32-diff", "-1"],
     "--max-fp32-diff: -1 is out of range"),
    (["canary", "analyze", "--canary-hits", "400", "--canary-requests", "300",
      "--production-hits", "9", "--production-requests", "70"], "hits (400) must be between"),
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
