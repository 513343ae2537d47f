import json
import subprocess
import sys
from pathlib import Path

import pytest

from movierec.cli.main import build_parser, main
from tests.unit.data_fixtures import write_ml100k


def _subcommands(parser) -> list[list[str]]:
    paths = []
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                paths.append([name])
                paths += [[name, *p] for p in _subcommands(sub)]
    return paths


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _subcommands(build_parser())
    assert ["data", "prepare"] in commands
    for path in commands:
        with pytest.raises(SystemExit) as exited:
            main([*path, "--help"])
        assert exited.value.code == 0
        assert "usage: movierec" in capsys.readouterr().out


def test_bad_data_is_one_clear_line_not_a_traceback(tmp_path: Path) -> None:
    src = write_ml100k(tmp_path / "ml-100k", ["1\t1\t5\t1", "1\t2\t9\t2"])
    result = subprocess.run([sys.executable, "-m", "movierec.cli.main", "data", "prepare",
                             "--dataset", "ml-100k", "--source", str(src), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "u.data line 2: rating missing or outside 0.5-5 (rating=9.0)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_contract_synth_prepare_info(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth", "--interactions", "2000", "--out", str(tmp_path / "s")]) == 0
    assert main(["data", "prepare", "--dataset", "canonical", "--source", str(tmp_path / "s"),
                 "--out", str(tmp_path / "p"), "--json"]) == 0
    card = json.loads(capsys.readouterr().out.split("\n", 2)[2])
    assert card["interactions"] == 2000
    assert main(["data", "info", str(tmp_path / "p")]) == 0
    assert "data_version" in capsys.readouterr().out


def test_lenient_reports_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_ml100k(tmp_path / "ml-100k", ["1\t1\t5\t1", "1\t2\t9\t2", "1\t2\t4\t3",
                                              "1\t3\t4\t4"])
    assert main(["data", "prepare", "--dataset", "ml-100k", "--source", str(src), "--out",
                 str(tmp_path / "p"), "--lenient"]) == 0
    assert "1 dropped (rating_out_of_range: 1)" in capsys.readouterr().out


def test_pipeline_flags_override_its_config_only_when_given(tmp_path: Path) -> None:
    import json

    from movierec.cli.lifecycle import _configs, _platform

    config_file = tmp_path / "lifecycle.json"
    config_file.write_text(json.dumps({
        "dataset": "ml-1m", "platform": {"mlflow_port": 5999, "ports": {
            "production": 9000, "staging": 9001, "canary": 9002}}}))
    parser = build_parser()
    args = parser.parse_args(["pipeline", "--config", str(config_file)])
    config, _ = _configs(args)
    platform = _platform(args, config.platform)
    assert config.dataset == "ml-1m" and platform.config.mlflow_port == 5999
    assert platform.config.ports["staging"] == 9001
    args = parser.parse_args(["pipeline", "--config", str(config_file), "--dataset",
                              "ml-100k", "--staging-port", "8101"])
    config, _ = _configs(args)
    platform = _platform(args, config.platform)
    assert config.dataset == "ml-100k" and platform.config.mlflow_port == 5999
    assert platform.config.ports == {"production": 9000, "staging": 8101, "canary": 9002}
    plain = _platform(parser.parse_args(["platform", "status"]))
    assert plain.config.mlflow_port == 5000 and plain.config.ports["canary"] == 8002


def test_serve_model_uri_is_not_mixed_with_reporting_flags(
        capsys: pytest.CaptureFixture[str]) -> None:
    # /version would report "staging" while serving production's version.
    assert main(["serve", "--model", "models:/movierec@production", "--alias", "staging"]) == 2
    assert "drop --model-version and --alias" in capsys.readouterr().err
