"""Serving bundles: a tiny torch-free bundle builder (used by every serving test), verification,
and the catalogue / history helpers."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import polars as pl
import pytest
from onnx import TensorProto, helper, numpy_helper

from movierec.serving.app import ServeSettings, create_app
from movierec.serving.catalog import BundleError, Catalog, load_catalog, verify_bundle_files
from movierec.serving.engine import load_bundle, top_k
from movierec.serving.history import (
    OnlineHistory,
    pick_demo_users,
    resolve_history,
    resolve_history_ties,
)

GENRES = ("Action", "Comedy", "Drama", "Horror")
N_ITEMS, N_USERS, MAX_LEN = 40, 12, 8
MARKUP_TITLE = "<img src=x onerror=alert(1)> & <b>Bold</b>"


def movie_id(item_idx: int) -> int:
    """Movie ids differ from item indices, so a mapping bug cannot hide."""
    return 1000 + item_idx


def user_id(user_idx: int) -> int:
    return 100 + user_idx


def _model(path: Path, seed: int, dim: int = 8) -> None:
    """scores = (sum of item embeddings of seqs + user embedding) @ E^T + bias; the padding
    row of E is zero and bias[0] is very negative."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(N_ITEMS + 1, dim)).astype(np.float32)
    emb[0] = 0.0
    users = rng.normal(size=(N_USERS + 1, dim)).astype(np.float32)
    users[0] = 0.0
    bias = np.zeros(N_ITEMS + 1, dtype=np.float32)
    bias[0] = -1e9
    inits = [numpy_helper.from_array(emb, "E"), numpy_helper.from_array(emb.T.copy(), "ET"),
             numpy_helper.from_array(users, "U"), numpy_helper.from_array(bias, "bias"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")]
    nodes = [helper.make_node("Gather", ["E", "seqs"], ["seq_emb"]),
             helper.make_node("ReduceSum", ["seq_emb", "axis1"], ["pooled"], keepdims=0),
             helper.make_node("Gather", ["U", "users"], ["user_emb"]),
             helper.make_node("Add", ["pooled", "user_emb"], ["h"]),
             helper.make_node("MatMul", ["h", "ET"], ["logits"]),
             helper.make_node("Add", ["logits", "bias"], ["scores"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("users", TensorProto.INT64, ["B"]),
                        helper.make_tensor_value_info("seqs", TensorProto.INT64, ["B", MAX_LEN])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", N_ITEMS + 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _histories() -> dict[int, list[int]]:
    """User u mostly watches genre u % 4; the last user has no history at all."""
    out: dict[int, list[int]] = {}
    for u in range(1, N_USERS + 1):
        genre = u % len(GENRES)
        mine = [i for i in range(1, N_ITEMS + 1) if i % len(GENRES) == genre]
        other = [i for i in range(1, N_ITEMS + 1) if i % len(GENRES) != genre]
        out[u] = [] if u == N_USERS else (mine[: 3 + u % 5] + other[u % 7: u % 7 + 2])
    return out


def make_bundle(folder: Path, seed: int = 0, run_id: str = "run-a") -> Path:
    """Write a complete, checksummed bundle folder and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    _model(folder / "model.onnx", seed)
    shutil.copyfile(folder / "model.onnx", folder / "model.int8.onnx")
    idx = list(range(1, N_ITEMS + 1))
    pl.DataFrame({
        "item_idx": idx, "item_id": [movie_id(i) for i in idx],
        "title": [MARKUP_TITLE if i == 1 else f"Movie {i}" for i in idx],
        "year": [None if i % 10 == 0 else 1980 + i for i in idx],
        "genres": [[GENRES[i % len(GENRES)]] + (["Drama"] if i % 5 == 0 and i % 4 != 2 else [])
                   for i in idx],
        "train_count": [(N_ITEMS - i) * 3 + (seed % 3) for i in idx],
    }, schema_overrides={"year": pl.Int64}).write_parquet(folder / "items.parquet")
    users = list(range(1, N_USERS + 1))
    pl.DataFrame({"user_idx": users, "user_id": [user_id(u) for u in users]}).write_parquet(
        folder / "users.parquet")
    hist = _histories()
    pl.DataFrame({"user_idx": users, "items": [hist[u] for u in users],
                  # every third user's two newest items share one timestamp
                  "tie_tail": [min(len(hist[u]), 2 if u % 3 == 0 else 1) for u in users]},
                 schema={"user_idx": pl.Int32, "items": pl.List(pl.Int32),
                         "tie_tail": pl.Int32}).write_parquet(folder / "histories.parquet")
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(folder.iterdir()) if p.name != "metadata.json"}
    meta = {"format": 1, "name": "movierec", "model_kind": "tiny", "max_len": MAX_LEN,
            "n_users": N_USERS, "n_items": N_ITEMS, "data_version": "data-1",
            "git_commit": "abc123", "run_id": run_id, "trained_at": "2026-11-27T00:00:00Z",
            "metrics": {"ndcg@10": 0.5}, "parity": {"max_abs_diff": 0.0}, "files": files}
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


def rewrite_metadata(folder: Path, **changes: object) -> None:
    meta = json.loads((folder / "metadata.json").read_text())
    meta.update(changes)
    (folder / "metadata.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture
def fresh_bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle")


def test_good_bundle_verifies_and_loads(bundle_dir: Path) -> None:
    meta = verify_bundle_files(bundle_dir)
    assert meta["n_items"] == N_ITEMS
    loaded = load_bundle(bundle_dir, threads=1)
    assert loaded.version == "run-a"
    assert loaded.catalog.idx_by_movie[movie_id(3)] == 3
    assert loaded.catalog.user_idx_by_id[user_id(2)] == 2
    assert loaded.catalog.histories[N_USERS].size == 0
    assert load_bundle(bundle_dir, precision="int8", threads=1).precision == "int8"


def test_corrupted_file_is_refused(fresh_bundle: Path) -> None:
    with (fresh_bundle / "items.parquet").open("ab") as handle:
        handle.write(b"x")
    with pytest.raises(BundleError, match=r"items.parquet sha256 .* does not match"):
        verify_bundle_files(fresh_bundle)


def test_bad_checksum_stops_startup(fresh_bundle: Path, tmp_path: Path) -> None:
    files = json.loads((fresh_bundle / "metadata.json").read_text())["files"]
    rewrite_metadata(fresh_bundle, files={**files, "model.onnx": "0" * 64})
    settings = ServeSettings(bundle=fresh_bundle, feedback_url=str(tmp_path / "f.db"))
    with pytest.raises(BundleError, match=r"model\.onnx sha256"):
        create_app(settings)


@pytest.mark.parametrize(("change", "message"), [
    ({"format": 2}, "format 2 is not supported"),
    ({"max_len": 0}, "max_len=0 must be a positive integer"),
    ({"files": {"model.onnx": "ab"}}, "not listed"),
    ({"files": "nope"}, "'files' must map"),
])
def test_metadata_problems_are_named(fresh_bundle: Path, change: dict[str, object],
                                     message: str) -> None:
    rewrite_metadata(fresh_bundle, **change)
    with pytest.raises(BundleError, match=message):
        verify_bundle_files(fresh_bundle)


def test_missing_key_missing_file_and_traversal(fresh_bundle: Path, tmp_path: Path) -> None:
    meta = json.loads((fresh_bundle / "metadata.json").read_text())
    del meta["run_id"]
    (fresh_bundle / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"lacks keys \['run_id'\]"):
        verify_bundle_files(fresh_bundle)
    meta["run_id"] = "r"
    meta["files"]["../outside"] = "0" * 64
    (fresh_bundle / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="plain file name"):
        verify_bundle_files(fresh_bundle)
    del meta["files"]["../outside"]
    (fresh_bundle / "metadata.json").write_text(json.dumps(meta))
    (fresh_bundle / "model.int8.onnx").unlink()
    with pytest.raises(BundleError, match=r"model\.int8\.onnx is listed but missing"):
        verify_bundle_files(fresh_bundle)
    with pytest.raises(BundleError, match=r"metadata\.json missing"):
        verify_bundle_files(tmp_path)
    with pytest.raises(BundleError, match="not a folder"):
        verify_bundle_files(tmp_path / "nowhere")


def test_metadata_inconsistent_with_tables(fresh_bundle: Path) -> None:
    rewrite_metadata(fresh_bundle, n_items=N_ITEMS + 5)
    with pytest.raises(BundleError, match=r"items\.parquet has 40 rows"):
        load_catalog(fresh_bundle, verify_bundle_files(fresh_bundle))


def test_top_k_excludes_padding_seen_and_nan() -> None:
    scores = np.array([100.0, 1.0, 5.0, np.nan, 5.0, 3.0])
    best, values = top_k(scores, 3, np.array([5]))
    assert best.tolist() == [2, 4, 1]  # ties go to the lower index; 0, 3 (NaN), 5 never
    assert values.tolist() == [5.0, 5.0, 1.0]
    assert top_k(scores, 10, np.array([1, 2, 4, 5]))[0].size == 0


def test_online_history_orders_by_time_and_dedupes(bundle_dir: Path) -> None:
    catalog = load_catalog(bundle_dir, verify_bundle_files(bundle_dir))
    online = OnlineHistory(max_per_user=3)
    stored = catalog.histories[2].tolist()
    online.add(user_id(2), movie_id(stored[0]), 20)   # re-watch: moves to the end
    online.add(user_id(2), movie_id(39), 10)
    online.add(user_id(2), 999_999, 15)              # unknown to this bundle: skipped
    hist = resolve_history(catalog, online, user_id(2)).tolist()
    assert hist == [*stored[1:], 39, stored[0]]
    online.add(user_id(2), movie_id(38), 30)          # over max_per_user: the oldest goes
    assert online.watches(user_id(2)) == [(999_999, 15), (movie_id(stored[0]), 20),
                                          (movie_id(38), 30)]
    assert resolve_history(catalog, online, None).size == 0
    assert resolve_history(catalog, online, 5).size == 0  # unknown user, no watches


def test_online_history_memory_is_bounded_per_user_and_in_all() -> None:
    online = OnlineHistory(max_per_user=3, max_events=5)
    for t, movie in enumerate([10, 11, 10, 10, 10, 12]):  # re-watches take no extra place
        online.add(1, movie, t)
    assert online.watches(1) == [(11, 1), (10, 4), (12, 5)]
    online.add(1, 10, 0)  # an older copy of a movie watched later is not "the newest"
    assert online.watches(1) == [(11, 1), (10, 4), (12, 5)] and len(online) == 3
    online.add(2, 20, 0)
    online.add(3, 30, 0)
    assert len(online) == 5
    online.add(2, 21, 1)  # over max_events: user 1, updated longest ago, is forgotten
    assert online.watches(1) == [] and len(online) == 3
    assert online.watches(2) == [(20, 0), (21, 1)] and online.watches(3) == [(30, 0)]


def test_newest_ties_come_from_the_bundle_or_the_online_watches(bundle_dir: Path) -> None:
    catalog = load_catalog(bundle_dir, verify_bundle_files(bundle_dir))
    online = OnlineHistory(max_per_user=10)

    def resolve_ties(catalog: Catalog, online: OnlineHistory, user: int | None) -> int:
        history, ties = resolve_history_ties(catalog, online, user)
        assert history.tolist() == resolve_history(catalog, online, user).tolist()
        return ties

    assert resolve_ties(catalog, online, user_id(3)) == 2  # the bundle's tie_tail
    assert resolve_ties(catalog, online, user_id(1)) == 0  # no tie
    assert resolve_ties(catalog, online, None) == resolve_ties(catalog, online, 5) == 0
    online.add(user_id(3), movie_id(30), 50)  # one online watch ends the stored tie
    assert resolve_ties(catalog, online, user_id(3)) == 1
    online.add(user_id(1), movie_id(31), 50)
    online.add(user_id(1), movie_id(32), 50)
    online.add(user_id(1), 999_999, 50)  # unknown to this bundle: not in the history
    assert resolve_ties(catalog, online, user_id(1)) == 2
    online.add(user_id(1), movie_id(31), 60)  # a re-watch moves 31 after 32: no tie left
    assert resolve_history(catalog, online, user_id(1))[-2:].tolist() == [32, 31]
    assert resolve_ties(catalog, online, user_id(1)) == 1


def test_a_bundle_without_tie_tails_reads_none(fresh_bundle: Path) -> None:
    table = pl.read_parquet(fresh_bundle / "histories.parquet").drop("tie_tail")
    table.write_parquet(fresh_bundle / "histories.parquet")
    meta = json.loads((fresh_bundle / "metadata.json").read_text())
    meta["files"]["histories.parquet"] = hashlib.sha256(
        (fresh_bundle / "histories.parquet").read_bytes()).hexdigest()
    (fresh_bundle / "metadata.json").write_text(json.dumps(meta))
    catalog = load_catalog(fresh_bundle, verify_bundle_files(fresh_bundle))
    assert catalog.tie_tails == {}
    assert resolve_history_ties(catalog, OnlineHistory(max_per_user=3), user_id(3))[1] == 0


def test_demo_users_have_different_tastes(bundle_dir: Path) -> None:
    catalog = load_catalog(bundle_dir, verify_bundle_files(bundle_dir))
    demo = pick_demo_users(catalog, min_history=3)
    assert len(demo) == 3
    assert len({d.user_id for d in demo}) == 3
    assert len({d.top_genre for d in demo}) == 3
    assert all(d.history_length >= 3 for d in demo)
    assert demo == pick_demo_users(catalog, min_history=3)  # deterministic
