"""What bench/data_pipeline.py runs in fresh interpreters, one JSON result each.

Generate the synthetic input, run ``movierec data prepare`` or the pandas baseline on it,
compare their outputs, profile prepare's steps, and probe the machine's speed.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))  # a checkout, no install
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/pandas_prepare.py

from pandas_prepare import pandas_prepare

COUNT_KEYS = ("users", "items", "interactions", "train_interactions", "valid_users",
              "test_users", "train_only_users")


def proc_status_mib(field: str) -> float:
    """``VmRSS`` (current) or ``VmHWM`` (peak) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def workdir_paths(workdir: Path, size: int) -> dict[str, Path]:
    """Where one size's input, outputs and movierec home live."""
    return {"data": workdir / f"synth-{size}-seed0", "home": workdir / "home",
            "movierec": workdir / f"out-movierec-{size}",
            "pandas": workdir / f"out-pandas-{size}",
            "profile": workdir / f"out-profile-{size}"}


# ---------------------------------------------------------------------------------------
# Workers: each runs in its own interpreter and writes one JSON result
# ---------------------------------------------------------------------------------------

def work_synth(size: int, workdir: Path) -> dict[str, Any]:
    """Generate the canonical folder for ``size`` (into a temp folder, then renamed)."""
    from movierec.data.synth import SynthConfig, write_synthetic

    target = workdir_paths(workdir, size)["data"]
    tmp = target.with_name(target.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.perf_counter()
    sizes = write_synthetic(SynthConfig(interactions=size, seed=0), tmp)
    seconds = time.perf_counter() - started
    os.replace(tmp, target)
    return {"seconds": seconds, "tables": sizes}


def _time_prepare(load: Callable[[], Callable[[dict[str, Path]], dict[str, Any]]], size: int,
                  workdir: Path) -> dict[str, Any]:
    """Time one implementation: ``load()`` does its imports (timed apart from the work) and
    returns the function that prepares ``workdir_paths``' input and returns the card."""
    started = time.perf_counter()
    run = load()
    import_seconds = time.perf_counter() - started
    rss_after_import = proc_status_mib("VmRSS")
    paths = workdir_paths(workdir, size)
    started = time.perf_counter()
    card = run(paths)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "import_seconds": import_seconds,
            "rss_after_import_mib": rss_after_import,
            "counts": {k: card[k] for k in COUNT_KEYS}, "data_version": card["data_version"]}


def work_movierec(size: int, workdir: Path) -> dict[str, Any]:
    """Time ``movierec.data.prepare.prepare`` on the canonical folder."""
    def load() -> Callable[[dict[str, Path]], dict[str, Any]]:
        import polars  # noqa: F401 - prepare's engine, counted in the import time

        from movierec.config import Settings
        from movierec.data.prepare import PrepareConfig, prepare

        return lambda paths: prepare(PrepareConfig(dataset="canonical"), paths["movierec"],
                                     source=paths["data"], settings=Settings(home=paths["home"]))

    timed = _time_prepare(load, size, workdir)
    import polars as pl  # already loaded by load(): free here

    return {**timed, "polars_threads": pl.thread_pool_size()}


def work_pandas(size: int, workdir: Path) -> dict[str, Any]:
    """Time ``pandas_prepare`` on the canonical folder."""
    def load() -> Callable[[dict[str, Path]], dict[str, Any]]:
        import pandas  # noqa: F401 - import cost is measured apart from the work
        import pyarrow  # noqa: F401

        return lambda paths: pandas_prepare(paths["data"], paths["pandas"])

    return _time_prepare(load, size, workdir)


def work_verify(size: int, workdir: Path) -> dict[str, Any]:
    """Compare the two prepared folders table by table, value by value."""
    import polars as pl

    paths = workdir_paths(workdir, size)
    report: dict[str, Any] = {}
    for table in ("interactions", "items", "users"):
        ours = pl.read_parquet(paths["movierec"] / f"{table}.parquet")
        theirs = pl.read_parquet(paths["pandas"] / f"{table}.parquet")
        diffs: list[str] = []
        if ours.columns != theirs.columns:
            diffs.append(f"columns {ours.columns} != {theirs.columns}")
        elif ours.height != theirs.height:
            diffs.append(f"rows {ours.height} != {theirs.height}")
        else:
            for col in ours.columns:
                a, b = ours[col], theirs[col]
                if isinstance(a.dtype, pl.Enum | pl.Categorical):
                    a, b = a.cast(pl.String), b.cast(pl.String)
                else:
                    b = b.cast(a.dtype)
                if not a.equals(b, check_names=False):
                    diffs.append(f"column {col} differs")
        report[table] = {"identical": not diffs, "diffs": diffs, "rows": ours.height}
    return report


def work_profile(size: int, workdir: Path) -> dict[str, Any]:
    """Time prepare's steps one by one, with the functions prepare.py itself uses.

    Mirrors the body of ``prepare`` for the default config (no rating filter, no k-core);
    then times the pieces of the slow steps on their own.
    """
    import polars as pl

    from movierec.config import Settings
    from movierec.data.columns import (
        ITEM_COL,
        LINE_COL,
        TIMESTAMP_COL,
        USER_COL,
    )
    from movierec.data.movielens import parse_folder, unpack
    from movierec.data.prepare import (
        PrepareConfig,
        _write_atomically,
        build_card,
        content_version,
        kcore,
        sequence_and_split,
        side_tables,
    )
    from movierec.data.sources import resolve_source
    from movierec.data.validate import interaction_rules, validate

    paths = workdir_paths(workdir, size)
    config = PrepareConfig(dataset="canonical")
    settings = Settings(home=paths["home"])
    steps: list[dict[str, Any]] = []

    def step(name: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = fn()
        steps.append({"step": name, "seconds": round(time.perf_counter() - started, 3),
                      "rss_mib": proc_status_mib("VmRSS"),
                      "peak_rss_mib": proc_status_mib("VmHWM")})
        return result

    started = time.perf_counter()
    resolved = step("resolve_source (sha256 of source folder)",
                    lambda: resolve_source(config.dataset, paths["data"], settings))
    folder = unpack(resolved.path, settings.home / "extracted")
    tables = step("parse_folder (read parquet, cast, line column)",
                  lambda: parse_folder(folder, lenient=not config.strict))
    clean, report = step("validate (time sort, 7 rules, filter)",
                         lambda: validate(tables, strict=config.strict))
    cored, passes = kcore(clean, config.min_user, config.min_item)
    seq = step("sequence_and_split (remap, split; validate sorted)",
               lambda: sequence_and_split(cored, time_sorted=True))
    items, users = step("items and users tables (train counts, joins)",
                        lambda: side_tables(seq, tables.items, tables.users))
    params = config.model_dump(exclude={"strict"})
    card = step("build_card (counts, lengths, content hash)",
                lambda: build_card(config, resolved, tables.layout, report, seq, items, users,
                                   params, below_rating=0, kcore_removed=0,
                                   kcore_passes=passes))
    step("write parquet (lz4) + dataset.json",
         lambda: _write_atomically(paths["profile"],
                                   {"interactions": seq, "items": items, "users": users}, card))
    total = time.perf_counter() - started

    # Pieces of the heavy steps, each timed alone on the data above.
    detail: dict[str, float] = {}

    def piece(name: str, fn: Callable[[], Any]) -> None:
        started = time.perf_counter()
        fn()
        detail[name] = round(time.perf_counter() - started, 3)

    inter = tables.interactions
    for rule in interaction_rules(tables.items[ITEM_COL]):
        piece(f"validate: rule {rule.name}", lambda r=rule: inter.select(r.flags.sum()))
    piece("sequence_and_split: sort(user, timestamp, line)",
          lambda: cored.sort([USER_COL, TIMESTAMP_COL, LINE_COL]))
    ordered = cored.sort([USER_COL, TIMESTAMP_COL, LINE_COL])
    item_ids = ordered[ITEM_COL].unique().sort()
    piece("sequence_and_split: item remap (replace_strict)",
          lambda: ordered.select(pl.col(ITEM_COL).replace_strict(
              item_ids, pl.int_range(1, item_ids.len() + 1, dtype=pl.Int32, eager=True))))
    piece("sequence_and_split: per-user windows (.over)",
          lambda: ordered.select(pl.len().over(USER_COL), pl.int_range(pl.len())
                                 .min().over(USER_COL)))
    piece("build_card: content_version (sha256)",
          lambda: content_version(seq, items, users, params))
    piece("write: interactions.parquet only (lz4)",
          lambda: seq.write_parquet(paths["profile"] / "_probe.parquet", compression="lz4"))
    (paths["profile"] / "_probe.parquet").unlink()
    return {"total_seconds": round(total, 3), "steps": steps, "pieces": detail,
            "peak_rss_mib": proc_status_mib("VmHWM")}


def work_calibrate(size: int, workdir: Path) -> dict[str, Any]:
    """A fixed probe of the machine's speed: touch 1 GiB of fresh memory, sort 10M ints.

    Shared VMs have slow phases (first-touch page faults, neighbours); runs at different
    times compare only when their probes agree.
    """
    import numpy as np

    del size, workdir
    started = time.perf_counter()
    block = np.ones(2**27)  # 1 GiB of float64, every page touched
    touch = time.perf_counter() - started
    del block
    keys = np.random.default_rng(0).integers(0, 2**40, 10_000_000)
    started = time.perf_counter()
    np.sort(keys)
    return {"touch_1gib_seconds": round(touch, 3),
            "sort_10m_seconds": round(time.perf_counter() - started, 3)}


WORKERS: dict[str, Callable[[int, Path], dict[str, Any]]] = {
    "synth": work_synth, "movierec": work_movierec, "pandas": work_pandas,
    "verify": work_verify, "profile": work_profile, "calibrate": work_calibrate,
}
