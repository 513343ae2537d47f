"""The lifecycle's world: base data, future traffic, panel, and rounds with feedback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from movierec.data.dataset import load_sequences
from movierec.lifecycle.traffic import Replayed, arm_stats, take_events
from movierec.lifecycle.world import build_panel, build_world, prepare_round
from movierec.serving.feedback import FeedbackEvent, FeedbackStore


@pytest.fixture
def world(ml100k_dir: Path):
    return build_world("ml-100k", 0.1, ml100k_dir)


def test_world_holds_out_the_newest_interactions(world) -> None:
    card = world.card
    assert card["base_interactions"] + card["future_interactions"] == 100_000
    assert abs(card["future_interactions"] - 10_000) < 100
    future = world.future()
    base = pl.read_parquet(world.base / "interactions.parquet")
    assert future["timestamp"].min() >= card["cut_timestamp"] > base["timestamp"].max()
    assert future["timestamp"].is_sorted()
    # Built once: the same call reuses it; a different share is refused, not silently mixed.
    assert build_world("ml-100k", 0.1).card == card
    with pytest.raises(ValueError, match="future_share"):
        build_world("ml-100k", 0.2)


def test_a_world_is_not_reused_for_another_source(world, ml100k_dir: Path,
                                                  tmp_path: Path) -> None:
    import shutil

    assert build_world("ml-100k", 0.1, ml100k_dir).card == world.card  # the same source
    other = tmp_path / "ml-100k"
    shutil.copytree(ml100k_dir, other)
    assert build_world("ml-100k", 0.1, other).card == world.card  # same bytes elsewhere
    inter = next(other.glob("*.inter"))
    lines = inter.read_text().splitlines(keepends=True)
    inter.write_text("".join(lines[:-1]))  # one interaction fewer: other data
    with pytest.raises(ValueError, match="other contents"):
        build_world("ml-100k", 0.1, other)


def test_take_events_moves_a_durable_cursor(world) -> None:
    first = take_events(world, 100)
    second = take_events(world, 100)
    assert first.height == second.height == 100
    assert second["timestamp"].min() >= first["timestamp"].max()
    assert not first.equals(second)


def test_feedback_changes_the_round_data_and_panel_stays_frozen(world, tmp_path: Path) -> None:
    db = tmp_path / "feedback.db"
    first = prepare_round(world, db, tmp_path / "r1")
    events = take_events(world, 300)
    store = FeedbackStore(db)
    watches = [FeedbackEvent(u, m, "watch", t) for u, m, t in events.iter_rows()]
    store.add(watches + watches[:5])  # repeated watches are used once
    store.add([FeedbackEvent(1, 1, "impression", 0)])  # impressions are not training data
    # /feedback takes any movie id: one unknown to the catalogue must not fail the round.
    store.add([FeedbackEvent(1, 10**9, "watch", 1)])
    store.close()
    second = prepare_round(world, db, tmp_path / "r2")
    assert second["data_version"] != first["data_version"]
    assert second["interactions"] == first["interactions"] + 300
    assert second["feedback"] == {"watches": 306, "used": 300, "skipped_known": 5,
                                  "skipped_unknown_movie": 1}
    panel_1 = build_panel(world, tmp_path / "r1")
    panel_2 = build_panel(world, tmp_path / "r2")
    assert np.array_equal(panel_1.user_ids, panel_2.user_ids)
    assert np.array_equal(panel_1.targets, panel_2.targets)
    replaying = set(world.future()["user_id"].to_list())
    assert not replaying & set(panel_1.user_ids.tolist())
    data = load_sequences(tmp_path / "r1")
    assert len(panel_1) == data.n_users - len(replaying & set(data.users["user_id"].to_list()))


def test_the_demo_refuses_to_start_without_enough_traffic_left(world) -> None:
    from movierec.lifecycle.config import LifecycleConfig
    from movierec.lifecycle.demo import DemoConfig, check_traffic_left
    from movierec.lifecycle.traffic import events_left

    total = world.future().height
    config = DemoConfig(traffic_events=100, lifecycle=LifecycleConfig(
        dataset="ml-100k", future_share=0.1, canary={"events": 100}))
    check_traffic_left(config)  # a fresh world: plenty
    take_events(world, total - 300)
    check_traffic_left(config)  # one demo needs at most 100 + 2 * 100
    take_events(world, 1)
    assert events_left(world) == 299
    with pytest.raises(ValueError, match=r"299 future interactions left.*make demo-clean"):
        check_traffic_left(config)
    # Without the weak candidate, one canary fewer: 100 + 100 events are enough.
    check_traffic_left(config.model_copy(update={"weak_candidate": False}))


def test_arm_stats_count_hits_and_users_over_served_requests_only() -> None:
    def replayed(user: int, arm: str, ok: bool, hit: bool) -> Replayed:
        return Replayed(user, 1, 0, arm, ok, hit, 5.0, None, 0)

    records = [replayed(1, "canary", True, True), replayed(1, "canary", True, False),
               replayed(2, "canary", True, True), replayed(2, "canary", False, True),
               replayed(3, "canary", False, False), replayed(4, "production", True, True)]
    stats = arm_stats(records, "canary")
    assert (stats.requests, stats.errors, stats.served, stats.hits) == (5, 2, 3, 2)
    assert sorted(stats.per_user) == [(1, 1), (1, 2)]  # user 3 was never served
    assert stats.hit_rate == pytest.approx(2 / 3)


def test_the_gate_scores_a_bundle_over_its_tie_orders_as_it_serves(world,
                                                                    tmp_path: Path) -> None:
    from dataclasses import replace

    from movierec.data.columns import TEST
    from movierec.data.tie_orders import trailing_tie_length
    from movierec.lifecycle.gates import bundle_panel_ndcg
    from movierec.registry.bundle import write_bundle
    from tests.unit.export_fixtures import tiny_config, tiny_model

    data_dir = tmp_path / "round"
    prepare_round(world, tmp_path / "feedback.db", data_dir)
    panel = build_panel(world, data_dir)
    data = load_sequences(data_dir)
    index = dict(zip(data.users["user_id"].to_list(), data.users["user_idx"].to_list(),
                     strict=True))
    assert panel.tie_tails is not None
    assert panel.tie_tails.tolist() == [
        trailing_tie_length(data.history_times(index[int(u)], TEST)) for u in panel.user_ids]
    config = tiny_config("sse-pt")
    config = config.model_copy(update={"model": config.model.model_copy(
        update={"tie_orders": 8})})
    write_bundle(tiny_model("sse-pt", data_dir), config, data_dir, tmp_path / "bundle")
    over_orders = bundle_panel_ndcg(tmp_path / "bundle", panel)
    as_stored = bundle_panel_ndcg(tmp_path / "bundle", replace(panel, tie_tails=None))
    tied = panel.tie_tails >= 2
    assert tied.any() and np.array_equal(over_orders[~tied], as_stored[~tied])
    assert not np.array_equal(over_orders[tied], as_stored[tied])
