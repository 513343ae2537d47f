"""The int8 model's verdict: left out of the bundle when it fails its checks, fp32 ships."""

import json
from pathlib import Path

import numpy as np
import pytest

from movierec.data.dataset import load_sequences
from movierec.export import parity
from movierec.export.onnx import ExportConfig, export_onnx
from movierec.export.parity import export_and_check, int8_loss_verdict
from movierec.models import PopularityModel
from movierec.registry.bundle import BundleError, verify_bundle, write_bundle
from movierec.serving.engine import load_bundle
from tests.unit.export_fixtures import MAX_LEN, tiny_config, tiny_model


def test_int8_loss_verdict_tells_a_real_loss_from_a_few_flipped_users() -> None:
    same = np.linspace(0.0, 1.0, 100)
    assert int8_loss_verdict(same, same, 0.005) == {
        "int8_ndcg_loss": 0.0, "int8_ndcg_loss_ci95": [0.0, 0.0], "reason": None}
    # One user of 100 loses a hit: a loss of 0.01, over the tolerance but within the noise
    # (a resample without that user, about a third of them, sees no loss at all).
    one = same.copy()
    one[7] -= 1.0
    verdict = int8_loss_verdict(same, one, 0.005)
    assert verdict["int8_ndcg_loss"] == pytest.approx(0.01)
    assert verdict["int8_ndcg_loss_ci95"][0] == 0.0 and verdict["reason"] is None
    # A third of the users lose half a point each: real, and beyond the tolerance.
    many = same.copy()
    many[::3] -= 0.5
    verdict = int8_loss_verdict(same, many, 0.005)
    assert verdict["int8_ndcg_loss_ci95"][0] > 0.1
    assert "max_int8_ndcg_loss 0.005" in verdict["reason"]
    # A real loss inside the tolerance passes; so does a gain.
    assert int8_loss_verdict(same, many, 0.2)["reason"] is None
    assert int8_loss_verdict(many, same, 0.005)["reason"] is None


def _quantise_to(model: PopularityModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the exporter's "int8" model an export of ``model`` (a broken quantiser)."""
    def broken_quantize(src: Path, dst: Path) -> Path:
        return export_onnx(model, MAX_LEN, dst)

    monkeypatch.setattr(parity, "quantize_int8", broken_quantize)


def _copy_of(model: PopularityModel) -> PopularityModel:
    copy = PopularityModel(model.n_items)
    copy.scores = model.scores.clone()
    return copy


def test_an_int8_model_that_loses_quality_is_left_out_and_fp32_ships(
        small_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model("pop", small_prepared)
    upside_down = _copy_of(model)  # ranks the catalogue upside down
    upside_down.scores[1:] *= -1
    _quantise_to(upside_down, monkeypatch)
    out = tmp_path / "bundle"
    meta = write_bundle(model, tiny_config("pop"), small_prepared, out, git_commit="abc")
    report = meta["parity"]
    assert report["passed"] and report["models"] == ["fp32"]
    assert report["int8_accepted"] is False and report["int8_ndcg_loss_ci95"][0] > 0
    assert "max_int8_ndcg_loss" in report["int8_reasons"][0]
    assert sorted(meta["files"]) == ["histories.parquet", "items.parquet", "model.onnx",
                                     "users.parquet"]
    assert not (out / "model.int8.onnx").exists()
    verify_bundle(out)  # a complete fp32 bundle
    assert load_bundle(out, threads=1).precision == "fp32"
    with pytest.raises(BundleError, match=r"left the int8 model out .*--precision fp32"):
        load_bundle(out, precision="int8", threads=1)


def test_an_int8_model_that_lets_padding_through_is_left_out(
        small_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model("pop", small_prepared)
    leaky = _copy_of(model)  # same ranking of real items, padding column finite
    leaky.scores[0] = -1.0
    _quantise_to(leaky, monkeypatch)
    report = export_and_check(model, MAX_LEN, tmp_path, load_sequences(small_prepared))
    assert report["passed"] and report["models"] == ["fp32"]
    assert report["int8_ndcg_loss"] == 0.0  # the ranking itself is intact
    assert report["int8_reasons"] == ["int8: padding column 0 is not excluded (must be <= -1e+30)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_an_int8_model_with_non_finite_scores_is_left_out_as_strict_json(
        small_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model("pop", small_prepared)
    broken = _copy_of(model)
    broken.scores[5] = float("nan")
    _quantise_to(broken, monkeypatch)
    report = export_and_check(model, MAX_LEN, tmp_path, load_sequences(small_prepared))
    assert report["models"] == ["fp32"] and "int8 scores are not finite" in report["int8_reasons"]
    assert report["int8_max_abs_diff"] is None  # not Infinity: metadata.json stays strict JSON
    json.dumps(report, allow_nan=False)


def test_an_int8_model_that_does_not_run_is_left_out(small_prepared: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def garbage_quantize(src: Path, dst: Path) -> Path:
        dst.write_bytes(b"not an onnx model")
        return dst

    monkeypatch.setattr(parity, "quantize_int8", garbage_quantize)
    data = load_sequences(small_prepared)
    report = export_and_check(tiny_model("sasrec", small_prepared), MAX_LEN, tmp_path, data)
    assert report["passed"] and report["models"] == ["fp32"]
    assert report["int8_accepted"] is False
    assert "model.int8.onnx does not run in ONNX Runtime" in report["int8_reasons"][0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_a_quantiser_that_raises_only_costs_the_int8_model(
        small_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_quantize(src: Path, dst: Path) -> Path:
        dst.write_bytes(b"half written")
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(parity, "quantize_int8", failing_quantize)
    data = load_sequences(small_prepared)
    report = export_and_check(tiny_model("sasrec", small_prepared), MAX_LEN, tmp_path, data)
    assert report["models"] == ["fp32"]
    assert report["int8_reasons"] == ["int8 quantisation failed: RuntimeError: unsupported "
                                      "operator"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_a_bundle_exported_without_int8_says_so(small_prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    write_bundle(tiny_model("pop", small_prepared), tiny_config("pop"), small_prepared, out,
                 git_commit="abc", export_config=ExportConfig(quantize=False))
    with pytest.raises(BundleError, match="exported without an int8 model; serve with "
                                          "--precision fp32"):
        load_bundle(out, precision="int8", threads=1)


def test_the_exporter_checks_every_column_the_service_reads(small_prepared: Path,
                                                           tmp_path: Path) -> None:
    import polars as pl

    from movierec.data.sources import sha256_file

    out = tmp_path / "bundle"
    write_bundle(tiny_model("pop", small_prepared), tiny_config("pop"), small_prepared, out,
                 git_commit="abc", export_config=ExportConfig(quantize=False))
    items = out / "items.parquet"
    pl.read_parquet(items).drop("train_count").write_parquet(items)
    meta = json.loads((out / "metadata.json").read_text())
    meta["files"]["items.parquet"] = sha256_file(items)  # the checksums still agree
    (out / "metadata.json").write_text(json.dumps(meta))
    # Registering it would have worked before; serving it would not. Now neither does.
    with pytest.raises(BundleError, match=r"items\.parquet lacks columns \['train_count'\]"):
        verify_bundle(out)
    with pytest.raises(BundleError, match=r"items\.parquet lacks columns \['train_count'\]"):
        load_bundle(out, threads=1)
