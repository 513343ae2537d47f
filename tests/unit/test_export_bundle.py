import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import polars as pl
import pytest
import torch

from movierec.data.dataset import load_sequences
from movierec.data.tie_orders import trailing_tie_length
from movierec.export.onnx import ExportConfig, ExportError, OrtScorer, export_onnx, quantize_int8
from movierec.export.parity import export_and_check, parity_report
from movierec.models import ModelConfig, PopularityModel, build_model
from movierec.registry.bundle import (
    BundleError,
    bundle_from_run,
    sha256_file,
    verify_bundle,
    write_bundle,
)
from movierec.registry.layout import bundle_tie_orders
from movierec.training.config import TrainConfig
from tests.unit.export_fixtures import MAX_LEN, TINY, tiny_config, tiny_model


@pytest.fixture(scope="module")
def pop_bundle(small_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One written popularity bundle, copied by tests that corrupt it."""
    out = tmp_path_factory.mktemp("bundles") / "pop"
    write_bundle(tiny_model("pop", small_prepared), tiny_config("pop"), small_prepared, out,
                 git_commit="abc")
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_the_edge_case_batch_holds_what_serving_sends(small_prepared: Path) -> None:
    from movierec.data.columns import VALID
    from movierec.export.parity import edge_case_batch

    data = load_sequences(small_prepared)
    users, seqs = edge_case_batch(data, data.eval_users(VALID), MAX_LEN)
    lengths = (seqs != 0).sum(axis=1)
    assert users[0] == users[1] == 0 and (users[2:] > 0).all()  # no user embedding, and known
    assert lengths[0] == lengths[2] == 1 and lengths[1] == MAX_LEN == lengths.max()
    # The long rows are the last max_len items of a history longer than that.
    assert len(data.history(int(users[4]), VALID)) > 0 and (seqs[4] != 0).all()


@pytest.mark.parametrize("kind", ["sse-pt", "sasrec", "pop"])
def test_export_matches_pytorch_at_batch_1_8_64(kind: str, small_prepared: Path,
                                                tmp_path: Path) -> None:
    data = load_sequences(small_prepared)
    model = tiny_model(kind, small_prepared)
    report = export_and_check(model, MAX_LEN, tmp_path, data, ExportConfig())
    assert set(report["batches"]) == {"1", "8", "64", "edge", "all"}
    if kind != "pop":  # the edge cases' longest row is a history beyond max_len
        assert report["batches"]["edge"]["fp32_trimmed_length"] == MAX_LEN
    every_user = report["batches"].pop("all")  # every validation user, as served
    assert every_user["fp32_max_abs_diff"] <= 1e-4 and every_user["fp32_top10_overlap"] == 1.0
    assert 0.8 <= every_user["int8_top10_overlap"] <= 1.0
    for entry in report["batches"].values():
        assert entry["fp32_max_abs_diff"] <= 1e-4
        assert entry["fp32_top10_overlap"] == 1.0
        if kind != "pop":  # what serving feeds: the batch cut to its longest sequence
            assert entry["fp32_trimmed_max_abs_diff"] <= 1e-4
            assert 1 <= entry["fp32_trimmed_length"] <= MAX_LEN
            assert entry["int8_trimmed_length"] == entry["fp32_trimmed_length"]
            assert np.isfinite(entry["int8_trimmed_max_abs_diff"])
        assert 0.0 <= entry["int8_top10_overlap"] <= 1.0
        assert np.isfinite(entry["int8_max_abs_diff"])
    assert report["passed"] and report["reasons"] == []
    assert report["models"] == ["fp32", "int8"] and report["int8_reasons"] == []
    assert "reason" not in report  # the verdict's reasons live in int8_reasons
    assert set(report["ndcg@10"]) == {"pytorch", "fp32", "int8"}
    assert abs(report["fp32_ndcg_diff"]) < 1e-9
    assert "int8_ndcg_loss" in report and report["validation_users"] == 60
    low, high = report["int8_ndcg_loss_ci95"]
    assert low <= report["int8_ndcg_loss"] <= high
    json.dumps(report)  # goes into metadata.json as is
    # Interface of both files: dynamic batch, float32 [B, n_items + 1]; a dynamic sequence
    # length for the transformers (max_len recorded in the ONNX metadata), fixed for pop.
    for name in ("model.onnx", "model.int8.onnx"):
        scorer = OrtScorer(tmp_path / name)
        assert scorer.max_len == MAX_LEN and scorer.dynamic == (kind != "pop")
        inputs = {i.name: (i.type, i.shape) for i in scorer.session.get_inputs()}
        assert inputs["users"][0] == inputs["seqs"][0] == "tensor(int64)"
        assert isinstance(inputs["seqs"][1][0], str)
        assert (inputs["seqs"][1][1] == MAX_LEN) == (kind == "pop")
        scores = scorer(np.array([1, 2, 3]), np.zeros((3, MAX_LEN), np.int64))
        assert scores.shape == (3, data.n_items + 1) and scores.dtype == np.float32
        assert np.all(scores[:, 0] < -1e30)


def test_an_export_wrong_for_some_users_only_fails_parity(
        small_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch import nn

    from movierec.data.columns import VALID
    from movierec.export import parity

    data = load_sequences(small_prepared)
    model = tiny_model("sse-pt", small_prepared)
    eval_users = data.eval_users(VALID)
    longest = max(eval_users, key=lambda u: len(data.history(int(u), VALID)))
    spared = torch.tensor(sorted({0, int(eval_users[0]), int(longest)}))

    class WrongForOthers(nn.Module):
        """Right for the users of the parity batches below, off for everyone else."""

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner, self.n_users, self.n_items = inner, inner.n_users, inner.n_items
            self.register_buffer("noise", torch.randn(inner.n_items + 1) * 5)

        def score_all(self, users: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
            wrong = 1.0 - (users[:, None] == spared[None, :]).any(dim=1).float()[:, None]
            return self.inner.score_all(users, seqs) + wrong * self.noise

    export = parity.export_onnx
    monkeypatch.setattr(parity, "export_onnx", lambda m, length, path, opset=18: export(
        WrongForOthers(m), length, path, opset))
    with pytest.raises(ExportError, match="fp32 max") as failed:
        export_and_check(model, MAX_LEN, tmp_path, data,
                         ExportConfig(quantize=False, parity_batches=(1,)))
    batches = failed.value.report["batches"]
    # The parity batches saw only the spared users; the pass over every user did not.
    assert max(batches[b]["fp32_max_abs_diff"] for b in ("1", "edge")) <= 1e-4
    assert batches["all"]["fp32_max_abs_diff"] > 1.0


def test_an_int8_model_that_ranks_other_items_is_left_out(small_prepared: Path,
                                                          tmp_path: Path) -> None:
    data = load_sequences(small_prepared)
    model = tiny_model("sse-pt", small_prepared)
    torch.manual_seed(1)  # another model altogether, standing in for a broken quantisation
    other = build_model(tiny_config("sse-pt").model, data.n_users, data.n_items).eval()
    fp32 = export_onnx(model, MAX_LEN, tmp_path / "model.onnx")
    stranger = export_onnx(other, MAX_LEN, tmp_path / "other.onnx")
    report = parity_report(model, fp32, stranger, data, ExportConfig())
    assert report["passed"] and report["models"] == ["fp32"]
    assert not report["int8_accepted"]
    assert any("min_int8_top10_overlap" in reason for reason in report["int8_reasons"])
    assert report["batches"]["all"]["int8_top10_overlap"] < 0.8


def test_ort_scorer_pads_and_cuts_sequences(small_prepared: Path, tmp_path: Path) -> None:
    model = tiny_model("sasrec", small_prepared)
    scorer = OrtScorer(export_onnx(model, MAX_LEN, tmp_path / "m.onnx"))
    seqs = np.zeros((2, MAX_LEN), np.int64)
    seqs[:, -3:] = [[5, 6, 7], [8, 9, 10]]
    users = np.array([1, 2])
    full = scorer(users, seqs)
    np.testing.assert_allclose(scorer(users, seqs[:, -5:]), full)
    longer = np.concatenate([np.full((2, 4), 3), seqs], axis=1)
    np.testing.assert_allclose(scorer(users, longer), full)


@pytest.mark.parametrize(("kind", "norm_first", "n_blocks", "n_heads"),
                         [("sse-pt", True, 2, 2), ("sse-pt", False, 2, 1), ("sasrec", True, 1, 1),
                          ("sasrec", False, 3, 2), ("sse-pt", True, 3, 1)])
def test_score_last_matches_score_all(kind: str, norm_first: bool, n_blocks: int,
                                      n_heads: int, tmp_path: Path) -> None:
    torch.manual_seed(1)
    config = ModelConfig(kind=kind, norm_first=norm_first, n_blocks=n_blocks, n_heads=n_heads,
                         max_len=MAX_LEN, d_item=8, d_user=8)
    model = build_model(config, 5, 30).eval()
    seqs = torch.randint(1, 31, (5, MAX_LEN))
    seqs[0, :9], seqs[1], seqs[2, :-1] = 0, 0, 0  # short, empty and one-item histories
    users = torch.tensor([0, 1, 2, 3, 5])
    with torch.no_grad():
        full, last = model.score_all(users, seqs), model.score_last(users, seqs)
        short = model.score_last(users[:1], seqs[:1, 9:])  # trimmed to its real length
    assert torch.equal(torch.isinf(full), torch.isinf(last)) and torch.isinf(last[:, 0]).all()
    torch.testing.assert_close(last, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(short, full[:1], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="max_len"):
        model.score_last(users, torch.ones(5, MAX_LEN + 1, dtype=torch.int64))
    # The exported graph too: padded queries must not turn into NaN there (an exporter
    # that drops a tiny constant once made every score NaN while PyTorch was fine).
    exported = OrtScorer(export_onnx(model, MAX_LEN, tmp_path / "m.onnx"))(
        users.numpy(), seqs.numpy())
    assert np.isfinite(exported[:, 1:]).all()
    np.testing.assert_allclose(exported[:, 1:], full[:, 1:].numpy(), rtol=0, atol=1e-5)


def test_a_trimmed_batch_scores_like_the_padded_one(small_prepared: Path,
                                                    tmp_path: Path) -> None:
    model = tiny_model("sse-pt", small_prepared)
    scorer = OrtScorer(export_onnx(model, MAX_LEN, tmp_path / "m.onnx"))
    seqs = np.zeros((3, MAX_LEN), np.int64)
    seqs[0, -4:], seqs[1, -1:], seqs[2, -2:] = [5, 6, 7, 8], [9], [3, 4]
    users = np.array([1, 2, 0])
    with torch.no_grad():
        expected = model.score_all(torch.as_tensor(users), torch.as_tensor(seqs)).numpy()
    for width in (MAX_LEN, 4):  # padded to max_len, or cut to the longest real sequence
        got = scorer.session.run(["scores"], {"users": users, "seqs": seqs[:, -width:]})[0]
        np.testing.assert_allclose(got[:, 1:], expected[:, 1:], atol=1e-5)
    one = scorer.session.run(["scores"], {"users": users[1:2], "seqs": seqs[1:2, -1:]})[0]
    np.testing.assert_allclose(one[:, 1:], expected[1:2, 1:], atol=1e-5)
    # The scorer itself feeds that cut width, as serving does (int8 scores depend on it).
    int8 = quantize_int8(tmp_path / "m.onnx", tmp_path / "m.int8.onnx")
    cut = OrtScorer(int8, trim=False)(users, seqs[:, -4:])
    assert np.array_equal(OrtScorer(int8)(users, seqs), cut)
    assert np.array_equal(OrtScorer(int8)(users, seqs[:, -7:]), cut)


def test_a_dynamic_model_without_recorded_max_len_is_refused(small_prepared: Path,
                                                             tmp_path: Path) -> None:
    path = export_onnx(tiny_model("sasrec", small_prepared), MAX_LEN, tmp_path / "m.onnx")
    proto = onnx.load(path)
    del proto.metadata_props[:]
    onnx.save(proto, path)
    with pytest.raises(ExportError, match="re-export"):
        OrtScorer(path)


def test_parity_failure_raises_with_numbers(small_prepared: Path, tmp_path: Path) -> None:
    data = load_sequences(small_prepared)
    model = tiny_model("sse-pt", small_prepared)
    fp32 = export_onnx(model, MAX_LEN, tmp_path / "model.onnx")
    config = ExportConfig(max_fp32_diff=-1.0, max_int8_ndcg_loss=-1.0, quantize=False)
    report = parity_report(model, fp32, None, data, config)
    assert not report["passed"] and "max_fp32_diff" in report["reasons"][0]
    assert "int8_max_abs_diff" not in report
    with pytest.raises(ExportError, match="max_fp32_diff") as caught:
        export_and_check(model, MAX_LEN, tmp_path / "again", data, config)
    assert caught.value.report is not None and caught.value.report["passed"] is False


def test_export_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="max_diff"):
        ExportConfig.model_validate({"max_diff": 1e-3})


def test_quantize_int8_keeps_the_interface(small_prepared: Path, tmp_path: Path) -> None:
    model = tiny_model("sse-pt", small_prepared)
    fp32 = export_onnx(model, MAX_LEN, tmp_path / "model.onnx")
    int8 = quantize_int8(fp32, tmp_path / "model.int8.onnx")
    users, seqs = np.array([1, 2]), np.ones((2, MAX_LEN), np.int64)
    a, b = OrtScorer(fp32)(users, seqs), OrtScorer(int8)(users, seqs)
    assert a.shape == b.shape and np.abs(a[:, 1:] - b[:, 1:]).max() < 0.5


def test_write_and_verify_round_trip(small_prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    metadata = write_bundle(tiny_model("sse-pt", small_prepared), tiny_config("sse-pt"),
                            small_prepared, out, run_id=None, git_commit="abc")
    assert verify_bundle(out) == json.loads((out / "metadata.json").read_text()) == metadata
    assert sorted(metadata["files"]) == ["histories.parquet", "items.parquet",
                                         "model.int8.onnx", "model.onnx", "users.parquet"]
    assert all(sha256_file(out / n) == h for n, h in metadata["files"].items())
    assert (metadata["format"], metadata["name"], metadata["model_kind"]) == (
        1, "movierec", "sse-pt")
    assert metadata["max_len"] == MAX_LEN and metadata["model_config"]["d_item"] == 8
    data = load_sequences(small_prepared)
    assert (metadata["n_users"], metadata["n_items"]) == (data.n_users, data.n_items)
    assert metadata["data_version"] == data.data_version
    assert metadata["git_commit"] == "abc" and metadata["run_id"] is None
    assert metadata["metrics"]["valid"]["full"]["ndcg@10"] >= 0.0
    assert metadata["parity"]["passed"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    # The histories are the whole sequences (train + valid + test) in time order.
    histories = pl.read_parquet(out / "histories.parquet")
    assert histories.schema["user_idx"] == pl.Int32
    assert histories.schema["items"] == pl.List(pl.Int32)
    row = histories.filter(pl.col("user_idx") == 1)["items"].to_list()[0]
    assert row == [*data.train[1].tolist(), int(data.valid_item[1]), int(data.test_item[1])]
    assert histories.height == data.n_users
    # tie_tail: the newest items that share the newest timestamp, which the service needs.
    inter = pl.read_parquet(small_prepared / "interactions.parquet")
    for user, tail in histories.select("user_idx", "tie_tail").iter_rows():
        times = inter.filter(pl.col("user_idx") == user).sort("position")["timestamp"]
        assert tail == trailing_tie_length(times.to_numpy())
    assert bundle_tie_orders(metadata) == metadata["model_config"]["tie_orders"] == 1
    assert bundle_tie_orders({"model_config": {"max_len": 5}}) == 1  # pop, older bundles
    assert pl.read_parquet(out / "items.parquet").equals(
        pl.read_parquet(small_prepared / "items.parquet"))
    assert pl.read_parquet(out / "users.parquet").equals(
        pl.read_parquet(small_prepared / "users.parquet"))


@pytest.mark.parametrize("name", ["model.onnx", "items.parquet", "model.int8.onnx"])
def test_a_flipped_byte_is_refused_naming_the_file(name: str, pop_bundle: Path,
                                                   tmp_path: Path) -> None:
    folder = _copy(pop_bundle, tmp_path / "b")
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=name.replace(".", r"\.") + ".*sha256"):
        verify_bundle(folder)


def test_a_truncated_model_is_refused_even_with_a_matching_checksum(pop_bundle: Path,
                                                                    tmp_path: Path) -> None:
    folder = _copy(pop_bundle, tmp_path / "b")
    model = folder / "model.onnx"
    model.write_bytes(model.read_bytes()[:200])
    with pytest.raises(BundleError, match=r"model.onnx"):
        verify_bundle(folder)
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["files"]["model.onnx"] = sha256_file(model)
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(BundleError, match=r"model.onnx does not load"):
        verify_bundle(folder)


def test_missing_files_keys_and_strays_are_refused(pop_bundle: Path, tmp_path: Path) -> None:
    folder = _copy(pop_bundle, tmp_path / "b")
    (folder / "histories.parquet").unlink()
    with pytest.raises(BundleError, match=r"histories\.parquet is listed but missing"):
        verify_bundle(folder)
    folder = _copy(pop_bundle, tmp_path / "c")
    metadata = json.loads((folder / "metadata.json").read_text())
    del metadata["data_version"]
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(BundleError, match="data_version"):
        verify_bundle(folder)
    folder = _copy(pop_bundle, tmp_path / "d")
    (folder / "notes.txt").write_text("hi")
    with pytest.raises(BundleError, match=r"notes.txt"):
        verify_bundle(folder)
    with pytest.raises(BundleError, match=r"metadata\.json missing"):
        verify_bundle(tmp_path)


def test_failed_parity_writes_nothing_and_keeps_the_previous_bundle(
        small_prepared: Path, pop_bundle: Path, tmp_path: Path) -> None:
    model, config = tiny_model("sasrec", small_prepared), tiny_config("sasrec")
    failing = ExportConfig(max_fp32_diff=-1.0)
    with pytest.raises(ExportError, match="max_fp32_diff"):
        write_bundle(model, config, small_prepared, tmp_path / "new", export_config=failing)
    assert list(tmp_path.iterdir()) == []
    previous = _copy(pop_bundle, tmp_path / "current")
    before = verify_bundle(previous)
    with pytest.raises(ExportError):
        write_bundle(model, config, small_prepared, previous, export_config=failing)
    assert verify_bundle(previous) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current"]
    # A passing export replaces it.
    assert write_bundle(model, config, small_prepared, previous)["model_kind"] == "sasrec"
    assert verify_bundle(previous)["model_kind"] == "sasrec"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current"]


def test_write_bundle_refuses_mismatches(small_prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not match the training config"):
        write_bundle(tiny_model("pop", small_prepared), tiny_config("sse-pt"), small_prepared,
                     tmp_path / "b")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("x")
    with pytest.raises(BundleError, match="not a bundle"):
        write_bundle(tiny_model("pop", small_prepared), tiny_config("pop"), small_prepared,
                     tmp_path / "precious")
    wrong = PopularityModel(10)
    with pytest.raises(BundleError, match="10 items"):
        write_bundle(wrong, tiny_config("pop"), small_prepared, tmp_path / "b")


@pytest.mark.slow
def test_bundle_from_a_tracked_run(small_prepared: Path, tmp_path: Path) -> None:
    from movierec.training.runner import train_and_track

    config = TrainConfig.model_validate({"epochs": 1, "batch_size": 32, "threads": 1,
                                         "model": TINY})
    summary = train_and_track(config, small_prepared, progress=False)
    out = tmp_path / "bundle"
    metadata = bundle_from_run(summary["run_id"], small_prepared, out, ExportConfig())
    assert verify_bundle(out) == metadata
    assert metadata["run_id"] == summary["run_id"] and metadata["model_kind"] == "sse-pt"
    for split in ("valid", "test"):  # MLflow's float round trip: compare approximately
        for protocol, values in summary[split].items():
            assert metadata["metrics"][split][protocol] == pytest.approx(values)
    # The bundle holds the run's final (refit) model: rebuilt, it reproduces the run's test
    # NDCG@10, and its fp32 ONNX graph ranks the validation users exactly like PyTorch.
    from movierec.training.loop import evaluate_split
    from movierec.training.runner import load_run_model

    model, run_config, _, _ = load_run_model(summary["run_id"], small_prepared)
    test = evaluate_split(model, load_sequences(small_prepared), run_config,
                          torch.device("cpu"), "test")
    assert test["full"]["ndcg@10"] == pytest.approx(summary["test"]["full"]["ndcg@10"],
                                                    abs=1e-9)
    parity = metadata["parity"]["ndcg@10"]
    assert parity["fp32"] == pytest.approx(parity["pytorch"], abs=1e-9)
    assert metadata["git_commit"] and metadata["trained_at"]


@pytest.mark.slow
def test_bundle_from_run_refuses_other_data(small_prepared: Path, tmp_path: Path) -> None:
    from movierec.training.runner import train_and_track

    summary = train_and_track(tiny_config("pop"), small_prepared, progress=False)
    other = tmp_path / "other"
    shutil.copytree(small_prepared, other)
    card = json.loads((other / "dataset.json").read_text())
    card["data_version"] = "0000"
    (other / "dataset.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="data_version"):
        bundle_from_run(summary["run_id"], other, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    metadata = bundle_from_run(summary["run_id"], small_prepared, tmp_path / "pop")
    assert metadata["model_kind"] == "pop" and metadata["model_config"] == {"max_len": MAX_LEN}
