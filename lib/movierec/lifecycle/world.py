"""The data a lifecycle round trains on, and the traffic it replays.

A *world* is built once per dataset: the newest ``future_share`` of interactions (by time)
is held out as *future traffic* that simulated users replay against the stages; the rest is
the *base* data. Each round trains on the base data plus every watch accepted through
``/feedback`` so far, so feedback changes the ``data_version`` exactly when it adds data.
The *panel* (users with no future interactions) never sends traffic: its held-out items are
the same in every round, which makes the offline gate's comparison fair and leak-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from movierec.config import Settings, get_settings
from movierec.data.columns import ITEM_COL, RATING_COL, TEST, TIMESTAMP_COL, USER_COL
from movierec.data.movielens import RawTables, parse_folder, unpack, write_canonical
from movierec.data.prepare import PrepareConfig, prepare
from movierec.data.sources import resolve_source
from movierec.data.tie_orders import trailing_tie_length
from movierec.data.validate import validate
from movierec.files import staged_folder
from movierec.lifecycle.gates import Panel

WORLD_FILE = "world.json"
# A watch accepted through /feedback is implicit: it has no star rating. Sequences ignore
# ratings (no min_rating is set), so a neutral constant only keeps the schema valid.
IMPLICIT_RATING = 5.0


@dataclass(frozen=True)
class World:
    """The fixed inputs of every round: base tables, future traffic, the gate's panel users.

    Attributes:
        folder: Where the world lives (``base/``, ``future.parquet``, ``world.json``).
        card: ``world.json``: dataset, time cut, counts.
    """

    folder: Path
    card: dict[str, Any]

    @property
    def base(self) -> Path:
        """Canonical Parquet folder of the base data."""
        return self.folder / "base"

    def future(self) -> pl.DataFrame:
        """Held-out interactions ``(user_id, item_id, timestamp)`` in time order."""
        return pl.read_parquet(self.folder / "future.parquet")


def world_folder(dataset: str, settings: Settings | None = None) -> Path:
    """``$MOVIEREC_HOME/lifecycle/world/<dataset>``."""
    return (settings or get_settings()).home / "lifecycle" / "world" / dataset


def build_world(dataset: str, future_share: float, source: Path | None = None,
                settings: Settings | None = None) -> World:
    """Build (or reuse, when the same parameters built it before) the world of ``dataset``.

    Raises:
        ValueError: ``future_share`` leaves no base data or no traffic.
    """
    settings = settings or get_settings()
    folder = world_folder(dataset, settings)
    card_path = folder / WORLD_FILE
    if card_path.exists():
        card = json.loads(card_path.read_text())
        if card["future_share"] != future_share:
            raise ValueError(f"{folder} was built with future_share={card['future_share']}; "
                             f"remove it to rebuild with {future_share}")
        if source is not None:  # an explicit source must be the one the world came from
            resolved = resolve_source(dataset, source, settings)
            built_from = card.get("source_sha256", card["source"])
            if built_from not in (resolved.sha256, str(resolved.path)):
                raise ValueError(f"{folder} was built from {card['source']}, not {source} "
                                 "(other contents): remove it to rebuild from the new source")
        return World(folder, card)
    resolved = resolve_source(dataset, source, settings)
    tables = parse_folder(unpack(resolved.path, settings.home / "extracted", resolved.sha256))
    clean, _ = validate(tables, strict=True)
    cut = float(clean[TIMESTAMP_COL].quantile(1.0 - future_share, "lower"))
    base = clean.filter(pl.col(TIMESTAMP_COL) < cut)
    future = clean.filter(pl.col(TIMESTAMP_COL) >= cut).sort(TIMESTAMP_COL, USER_COL)
    if base.is_empty() or future.is_empty():
        raise ValueError(f"future_share={future_share} leaves base={base.height}, "
                         f"future={future.height} interactions: choose a share in (0, 1)")
    card = {"dataset": dataset, "future_share": future_share, "cut_timestamp": cut,
            "base_interactions": base.height, "future_interactions": future.height,
            "future_users": future[USER_COL].n_unique(), "source": str(resolved.path),
            "source_sha256": resolved.sha256}
    with staged_folder(folder) as staged:  # a half-built world is never mistaken for one
        write_canonical(RawTables(base, tables.items, tables.users, "", tables.layout),
                        staged / "base")
        future.select(USER_COL, ITEM_COL, TIMESTAMP_COL).with_columns(
            pl.col(TIMESTAMP_COL).cast(pl.Int64)).write_parquet(staged / "future.parquet")
        (staged / WORLD_FILE).write_text(json.dumps(card, indent=2))
    return World(folder, card)


def feedback_watches(feedback_db: Path | str) -> pl.DataFrame:
    """Every accepted watch in the feedback store (empty when there is no store yet).

    Args:
        feedback_db: The SQLite file, or a store URL (``postgresql://...``, ``sqlite:///...``).
    """
    # keep imports light: the serving package is not needed until a store is read
    from movierec.serving.feedback import open_store, store_exists  # noqa: PLC0415

    schema = {USER_COL: pl.Int64, ITEM_COL: pl.Int64, TIMESTAMP_COL: pl.Int64}
    if not store_exists(feedback_db):
        return pl.DataFrame(schema=schema)
    store = open_store(feedback_db)
    try:
        rows = list(store.watches())
    finally:
        store.close()
    return pl.DataFrame(rows, schema=schema, orient="row")


def prepare_round(world: World, feedback_db: Path | str, out: Path) -> dict[str, Any]:
    """Prepare the base data plus the accepted watches; return the dataset card.

    Watches of a movie the user already has (in the base data or an earlier watch) are
    not added again (MovieLens holds one interaction per user and movie). Watches of a
    movie the catalogue does not know are left out too: ``/feedback`` accepts any id, and
    one such watch would fail every later round's strict validation. The card's
    ``feedback`` entry says how many were used and skipped, and why.
    """
    base = world.base
    watches = feedback_watches(feedback_db)
    listed = watches
    if (base / "items.parquet").exists():
        catalogue = pl.read_parquet(base / "items.parquet", columns=[ITEM_COL])
        listed = watches.join(catalogue, on=ITEM_COL, how="semi")
    known = pl.read_parquet(base / "interactions.parquet", columns=[USER_COL, ITEM_COL])
    fresh = (listed.unique([USER_COL, ITEM_COL], keep="first", maintain_order=True)
             .join(known, on=[USER_COL, ITEM_COL], how="anti"))
    source = out.with_name(out.name + ".source")
    inter = pl.concat([
        pl.read_parquet(base / "interactions.parquet"),
        fresh.select(pl.col(USER_COL), pl.col(ITEM_COL),
                     pl.lit(IMPLICIT_RATING).alias(RATING_COL),
                     pl.col(TIMESTAMP_COL).cast(pl.Float64))], how="vertical_relaxed")
    source.mkdir(parents=True, exist_ok=True)
    inter.write_parquet(source / "interactions.parquet")
    for table in ("items.parquet", "users.parquet"):
        if (base / table).exists():
            (source / table).write_bytes((base / table).read_bytes())
    card = prepare(PrepareConfig(dataset="canonical"), out, source=source)
    card["feedback"] = {"watches": watches.height, "used": fresh.height,
                        "skipped_known": listed.height - fresh.height,
                        "skipped_unknown_movie": watches.height - listed.height}
    (out / "dataset.json").write_text(json.dumps(card, indent=2, default=str))
    return card


def build_panel(world: World, data_dir: Path) -> Panel:
    """The gate's panel: every user of ``data_dir`` with no future interactions."""
    from movierec.data.dataset import load_sequences  # noqa: PLC0415

    data = load_sequences(data_dir)
    replaying = set(world.future()[USER_COL].unique().to_list())
    item_ids = np.zeros(data.n_items + 1, dtype=np.int64)
    item_ids[data.items["item_idx"].to_numpy()] = data.items[ITEM_COL].to_numpy()
    user_ids = dict(zip(data.users["user_idx"].to_list(), data.users[USER_COL].to_list(),
                        strict=True))
    users, histories, targets, tie_tails = [], [], [], []
    for user_idx in range(1, data.n_users + 1):
        user_id = int(user_ids[user_idx])
        if user_id in replaying or data.test_item[user_idx] == 0:
            continue
        # The test-time input: training items and the validation item, as a bundle holds.
        users.append(user_id)
        histories.append(item_ids[data.history(user_idx, TEST)])
        targets.append(item_ids[data.test_item[user_idx]])
        tie_tails.append(trailing_tie_length(data.history_times(user_idx, TEST)))
    if not users:
        raise ValueError("every user replays future traffic: no panel users are left for "
                         "the offline gate; lower future_share")
    return Panel(np.asarray(users, dtype=np.int64), histories, np.asarray(targets),
                 None if data.train_times is None else np.asarray(tie_tails, dtype=np.int64))
