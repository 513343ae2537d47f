"""Benchmark ``movierec data prepare`` against a plain pandas implementation of its steps.

Both run on the same synthetic canonical folders, each in a fresh subprocess, so that wall
time and peak RSS belong to one implementation. Writes JSON (``--out``) and prints a
markdown table. ``python bench/data_pipeline.py --help`` lists the options; README.md
beside this file says what is measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))  # run from a checkout without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_common.py

from _common import machine_info as _machine_info  # noqa: E402
from _common import run_worker as _run_worker  # noqa: E402
from _common import write_json  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "data_pipeline.json"
DEFAULT_SIZES = "1000000,10000000,25000000"
DEFAULT_WORKDIR = Path("/tmp/movierec-bench")
IMPLS = ("movierec", "pandas")

# Targets at ml-25m scale (evaluated at the largest size run; flagged when that is < 25M).
TARGET_SIZE = 25_000_000
TARGET_SPEEDUP = 3.0          # pandas seconds / movierec seconds
TARGET_SECONDS = 20.0         # movierec wall time inside the worker
TARGET_LINEARITY = 1.5        # seconds per million rows, largest size / smallest size

# The columns and rules the pandas baseline mirrors (movierec.data.columns, validate.py).
USER, ITEM, RATING, TS, LINE = "user_id", "item_id", "rating", "timestamp", "line"
RATING_MIN, RATING_MAX = 0.5, 5.0
MIN_SPLIT_LENGTH = 3
SPLITS = ("train", "valid", "test")
COUNT_KEYS = ("users", "items", "interactions", "train_interactions", "valid_users",
              "test_users", "train_only_users")
LIB_FILES = ("data/prepare.py", "data/validate.py", "data/movielens.py", "data/sources.py")


# ---------------------------------------------------------------------------------------
# Helpers shared by the parent and the workers
# ---------------------------------------------------------------------------------------

def _proc_status_mib(field: str) -> float:
    """``VmRSS`` (current) or ``VmHWM`` (peak) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _sha256_folder(folder: Path) -> str:
    """Sorted (relative name, file sha256) pairs, like ``movierec.data.sources.hash_path``."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        file_digest = hashlib.sha256()
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                file_digest.update(chunk)
        digest.update(f"{file.relative_to(folder).as_posix()}\0{file_digest.hexdigest()}\n"
                      .encode())
    return digest.hexdigest()


def _paths(workdir: Path, size: int) -> dict[str, Path]:
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

    target = _paths(workdir, size)["data"]
    tmp = target.with_name(target.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.perf_counter()
    sizes = write_synthetic(SynthConfig(interactions=size, seed=0), tmp)
    seconds = time.perf_counter() - started
    os.replace(tmp, target)
    return {"seconds": seconds, "tables": sizes}


def work_movierec(size: int, workdir: Path) -> dict[str, Any]:
    """Time ``movierec.data.prepare.prepare`` on the canonical folder."""
    started = time.perf_counter()
    import polars as pl

    from movierec.config import Settings
    from movierec.data.prepare import PrepareConfig, prepare

    import_seconds = time.perf_counter() - started
    rss_after_import = _proc_status_mib("VmRSS")
    paths = _paths(workdir, size)
    started = time.perf_counter()
    card = prepare(PrepareConfig(dataset="canonical"), paths["movierec"], source=paths["data"],
                   settings=Settings(home=paths["home"]))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "import_seconds": import_seconds,
            "rss_after_import_mib": rss_after_import, "polars_threads": pl.thread_pool_size(),
            "counts": {k: card[k] for k in COUNT_KEYS}, "data_version": card["data_version"]}


def pandas_prepare(folder: Path, out: Path, strict: bool = True) -> dict[str, Any]:
    """The steps of ``movierec.data.prepare.prepare`` for a canonical folder, plain pandas.

    Read, validate (same rules), sort by user, time and file line, remap ids densely,
    leave-one-out split, item train counts, users, card with a content hash, Parquet (lz4).
    """
    import numpy as np
    import pandas as pd

    source_sha256 = _sha256_folder(folder)
    inter = pd.read_parquet(folder / "interactions.parquet", columns=[USER, ITEM, RATING, TS])
    items = pd.read_parquet(folder / "items.parquet")
    users_path = folder / "users.parquet"
    users = pd.read_parquet(users_path) if users_path.exists() else None
    inter[RATING] = inter[RATING].astype("float64")
    inter[TS] = np.floor(inter[TS].astype("float64"))  # seconds; NaN until validated
    inter[LINE] = np.arange(1, len(inter) + 1)

    rules = {
        "bad_user_id": inter[USER].isna() | (inter[USER] <= 0),
        "bad_item_id": inter[ITEM].isna() | (inter[ITEM] <= 0),
        "rating_out_of_range": ~inter[RATING].between(RATING_MIN, RATING_MAX),
        "bad_timestamp": inter[TS].isna() | (inter[TS] < 0),
        "duplicate_interaction": inter.duplicated([USER, ITEM, TS]),
        "item_without_metadata": inter[ITEM].notna() & ~inter[ITEM].isin(items[ITEM]),
    }
    counts = {name: int(mask.sum()) for name, mask in rules.items()}
    if strict and any(counts.values()):
        raise ValueError(f"interactions.parquet: rules fired: {counts}")
    bad = np.logical_or.reduce([mask.to_numpy() for mask in rules.values()])
    inter = inter[~bad]
    inter[TS] = inter[TS].astype("int64")

    seq = inter.sort_values([USER, TS, LINE], kind="stable", ignore_index=True)
    user_idx = pd.factorize(seq[USER], sort=True)[0] + 1
    item_idx = pd.factorize(seq[ITEM], sort=True)[0] + 1
    seq["user_idx"] = user_idx.astype("int32")
    position = seq.groupby("user_idx").cumcount()
    length = seq.groupby("user_idx")["user_idx"].transform("size")
    from_end = length - 1 - position
    codes = np.select([length < MIN_SPLIT_LENGTH, from_end == 0, from_end == 1], [0, 2, 1],
                      default=0)
    seq = pd.DataFrame({
        "user_idx": seq["user_idx"], "item_idx": item_idx.astype("int32"),
        USER: seq[USER], ITEM: seq[ITEM], RATING: seq[RATING].astype("float32"),
        TS: seq[TS], "position": position.astype("int32"),
        "split": pd.Categorical.from_codes(codes, categories=list(SPLITS)),
    })

    train_counts = (seq.loc[seq["split"] == "train", "item_idx"].value_counts()
                    .rename("train_count"))
    items_out = (seq[["item_idx", ITEM]].drop_duplicates().merge(items, on=ITEM)
                 .merge(train_counts, left_on="item_idx", right_index=True, how="left"))
    items_out["train_count"] = items_out["train_count"].fillna(0).astype("int32")
    items_out = items_out.sort_values("item_idx", ignore_index=True)
    users_out = seq[["user_idx", USER]].drop_duplicates().sort_values("user_idx",
                                                                      ignore_index=True)
    if users is not None:
        users_out = users_out.merge(users.drop_duplicates(USER), on=USER, how="left")

    split_counts = seq["split"].value_counts()
    lengths = seq.groupby("user_idx").size()
    params = {"dataset": "canonical", "min_rating": None, "min_user": 0, "min_item": 0}
    digest = hashlib.sha256(json.dumps({"format": 1, "params": params}, sort_keys=True)
                            .encode())
    for col in (USER, ITEM, TS, RATING):
        digest.update(seq[col].to_numpy().tobytes())
    digest.update(seq["split"].cat.codes.to_numpy().tobytes())
    digest.update(items_out.to_json(orient="records").encode())
    card = {
        "name": "canonical", "data_version": digest.hexdigest()[:16],
        "users": len(users_out), "items": len(items_out), "interactions": len(seq),
        "train_interactions": int(split_counts["train"]),
        "valid_users": int(split_counts["valid"]), "test_users": int(split_counts["test"]),
        "train_only_users": int((lengths < MIN_SPLIT_LENGTH).sum()),
        "sequence_length": {"min": int(lengths.min()), "median": float(lengths.median()),
                            "mean": round(float(lengths.mean()), 2),
                            "max": int(lengths.max())},
        "time_range": [int(seq[TS].min()), int(seq[TS].max())],
        "source": {"path": str(folder), "sha256": source_sha256},
        "validation": counts,
    }

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    seq.to_parquet(out / "interactions.parquet", compression="lz4", index=False)
    items_out.to_parquet(out / "items.parquet", compression="lz4", index=False)
    users_out.to_parquet(out / "users.parquet", compression="lz4", index=False)
    (out / "dataset.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def work_pandas(size: int, workdir: Path) -> dict[str, Any]:
    """Time ``pandas_prepare`` on the canonical folder."""
    started = time.perf_counter()
    import pandas  # noqa: F401 - import cost is measured apart from the work
    import pyarrow  # noqa: F401

    import_seconds = time.perf_counter() - started
    rss_after_import = _proc_status_mib("VmRSS")
    paths = _paths(workdir, size)
    started = time.perf_counter()
    card = pandas_prepare(paths["data"], paths["pandas"])
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "import_seconds": import_seconds,
            "rss_after_import_mib": rss_after_import,
            "counts": {k: card[k] for k in COUNT_KEYS}, "data_version": card["data_version"]}


def work_verify(size: int, workdir: Path) -> dict[str, Any]:
    """Compare the two prepared folders table by table, value by value."""
    import polars as pl

    paths = _paths(workdir, size)
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

    paths = _paths(workdir, size)
    config = PrepareConfig(dataset="canonical")
    settings = Settings(home=paths["home"])
    steps: list[dict[str, Any]] = []

    def step(name: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = fn()
        steps.append({"step": name, "seconds": round(time.perf_counter() - started, 3),
                      "rss_mib": _proc_status_mib("VmRSS"),
                      "peak_rss_mib": _proc_status_mib("VmHWM")})
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
          lambda: content_version(seq, items, params))
    piece("write: interactions.parquet only (lz4)",
          lambda: seq.write_parquet(paths["profile"] / "_probe.parquet", compression="lz4"))
    (paths["profile"] / "_probe.parquet").unlink()
    return {"total_seconds": round(total, 3), "steps": steps, "pieces": detail,
            "peak_rss_mib": _proc_status_mib("VmHWM")}


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


# ---------------------------------------------------------------------------------------
# Parent: data, subprocesses, summary, targets, report
# ---------------------------------------------------------------------------------------

def run_worker(impl: str, size: int, workdir: Path) -> dict[str, Any]:
    """Run one worker in a fresh interpreter; add its wall time and its own peak RSS."""
    os.sync()  # the previous run's output must not be written back during this one
    return _run_worker(Path(__file__).resolve(), [impl, str(size), "--workdir", str(workdir)],
                       workdir / f".result-{impl}-{size}.json")


def ensure_data(size: int, workdir: Path) -> dict[str, Any]:
    """Generate the synthetic folder for ``size`` unless a complete one is already there."""
    folder = _paths(workdir, size)["data"]
    if all((folder / f"{t}.parquet").exists() for t in ("interactions", "items", "users")):
        return {"folder": str(folder), "reused": True}
    print(f"generating {size:,} synthetic interactions in {folder} ...", flush=True)
    made = run_worker("synth", size, workdir)
    return {"folder": str(folder), "reused": False, "seconds": round(made["seconds"], 2),
            "peak_rss_mib": made["peak_rss_mib"]}


def warm_page_cache(folder: Path) -> None:
    """Read the input once so that neither implementation pays for a cold disk."""
    for file in folder.glob("*.parquet"):
        with file.open("rb") as handle:
            while handle.read(1 << 24):
                pass


def summarise(runs: list[dict[str, Any]], size: int) -> dict[str, Any]:
    """Median times and the highest peak RSS over the repeats of one implementation."""
    seconds = statistics.median(r["seconds"] for r in runs)
    return {"seconds": round(seconds, 3),
            "subprocess_seconds": round(statistics.median(r["subprocess_seconds"]
                                                          for r in runs), 3),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "seconds_per_million": round(seconds / (size / 1e6), 3),
            "runs": runs}


def machine_info() -> dict[str, Any]:
    """The machine and the versions of the data libraries compared here."""
    return _machine_info(("polars", "pandas", "pyarrow", "numpy"), LIB_FILES)


def evaluate_targets(sizes: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Pass/fail per target, at the largest size measured."""
    largest, smallest = max(sizes), min(sizes)
    ours, theirs = sizes[largest]["movierec"], sizes[largest]["pandas"]
    speedup = theirs["seconds"] / ours["seconds"]
    targets: dict[str, Any] = {
        "evaluated_at": largest, "at_target_scale": largest >= TARGET_SIZE,
        "speedup": {"target": f">= {TARGET_SPEEDUP}x pandas", "value": round(speedup, 2),
                    "pass": speedup >= TARGET_SPEEDUP},
        "peak_rss": {"target": "movierec <= pandas",
                     "value": f"{ours['peak_rss_mib']:.0f} vs {theirs['peak_rss_mib']:.0f} MiB",
                     "pass": ours["peak_rss_mib"] <= theirs["peak_rss_mib"]},
        "wall_time": {"target": f"< {TARGET_SECONDS:g} s", "value": ours["seconds"],
                      "pass": ours["seconds"] < TARGET_SECONDS},
    }
    if largest != smallest:
        ratio = (ours["seconds_per_million"]
                 / sizes[smallest]["movierec"]["seconds_per_million"])
        targets["linearity"] = {
            "target": f"s/M rows at {largest:,} <= {TARGET_LINEARITY}x s/M at {smallest:,}",
            "value": round(ratio, 2), "pass": ratio <= TARGET_LINEARITY,
            "seconds_per_million": {str(s): sizes[s]["movierec"]["seconds_per_million"]
                                    for s in sorted(sizes)}}
    return targets


def markdown(report: dict[str, Any]) -> str:
    """A short markdown summary of the sizes, the targets and the step profile."""
    lines = ["| rows | movierec s | pandas s | speedup | movierec peak MiB | "
             "pandas peak MiB | movierec s/M | pandas s/M | same output |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for size, entry in sorted((int(k), v) for k, v in report["sizes"].items()):
        ours, theirs = entry["movierec"], entry["pandas"]
        same = entry["same_data_version"] and all(t["identical"]
                                                  for t in entry["verify"].values())
        lines.append(f"| {size:,} | {ours['seconds']:.2f} | {theirs['seconds']:.2f} | "
                     f"{theirs['seconds'] / ours['seconds']:.2f}x | {ours['peak_rss_mib']:.0f} | "
                     f"{theirs['peak_rss_mib']:.0f} | {ours['seconds_per_million']:.3f} | "
                     f"{theirs['seconds_per_million']:.3f} | {'yes' if same else 'NO'} |")
    probes = ", ".join(f"{int(k):,}: {v['calibration']['touch_1gib_seconds']:.2f} s touch 1 GiB"
                       f" / {v['calibration']['sort_10m_seconds']:.2f} s sort 10M"
                       for k, v in report["sizes"].items())
    lines += ["", f"Machine probe before each size ({probes})."]
    targets = report.get("targets", {})
    if targets:
        lines += ["", f"Targets at {targets['evaluated_at']:,} rows"
                  + ("" if targets["at_target_scale"] else " (below 25M: indicative only)")
                  + ":", ""]
        for name in ("speedup", "peak_rss", "wall_time", "linearity"):
            if name in targets:
                t = targets[name]
                lines.append(f"- {name}: {t['target']}: {t['value']} -> "
                             f"{'PASS' if t['pass'] else 'FAIL'}")
    for size, entry in sorted((int(k), v) for k, v in report["sizes"].items()):
        if "profile" not in entry:
            continue
        prof = entry["profile"]
        lines += ["", f"movierec prepare steps at {size:,} rows "
                  f"(total {prof['total_seconds']:.2f} s, peak {prof['peak_rss_mib']:.0f} MiB):",
                  "", "| step | s | RSS after MiB |", "|---|---:|---:|"]
        lines += [f"| {s['step']} | {s['seconds']:.2f} | {s['rss_mib']:.0f} |"
                  for s in prof["steps"]]
        lines += [f"| &nbsp;&nbsp;{name} | {sec:.2f} | |" for name, sec in prof["pieces"].items()]
    return "\n".join(lines)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Every size: data, both implementations (alternating order), verify, optional profile."""
    sizes = sorted(int(s) for s in args.sizes.split(","))
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "data_pipeline", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": False, "repeats": args.repeats, "workdir": str(workdir),
        "machine": machine_info(), "load_before": os.getloadavg(), "sizes": {}}
    measured: dict[int, dict[str, Any]] = {}
    for size in sizes:
        data = ensure_data(size, workdir)
        warm_page_cache(Path(data["folder"]))
        calibration = run_worker("calibrate", size, workdir)
        runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in IMPLS}
        for repeat in range(args.repeats):
            for impl in IMPLS if repeat % 2 == 0 else IMPLS[::-1]:
                print(f"{size:>12,} {impl:<9} run {repeat + 1}/{args.repeats} ...", flush=True)
                runs[impl].append(run_worker(impl, size, workdir))
        counts = [r["counts"] for impl in IMPLS for r in runs[impl]]
        if any(c != counts[0] for c in counts):
            raise AssertionError(f"{size:,}: movierec and pandas disagree (users, items, "
                                 f"split counts), the comparison is not fair: {counts}")
        versions = {r["data_version"] for impl in IMPLS for r in runs[impl]}
        entry = {"data": data, "counts": counts[0], "calibration": calibration,
                 "same_data_version": len(versions) == 1,
                 **{impl: summarise(runs[impl], size) for impl in IMPLS},
                 "verify": run_worker("verify", size, workdir)}
        entry["verify"] = {k: v for k, v in entry["verify"].items() if isinstance(v, dict)}
        if args.profile_steps:
            print(f"{size:>12,} profiling prepare's steps ...", flush=True)
            entry["profile"] = run_worker("profile", size, workdir)
        measured[size] = entry
        report["sizes"][str(size)] = entry
        write_json(report, args.out)  # partial results survive a later failure
    report["targets"] = evaluate_targets(measured)
    report["load_after"] = os.getloadavg()
    report["complete"] = True
    write_json(report, args.out)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--_worker`` and ``--_result`` are internal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help="comma-separated interaction counts")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help="synthetic data (reused) and prepared outputs")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per implementation and size (median time, max RSS)")
    parser.add_argument("--profile-steps", action="store_true",
                        help="also time prepare's steps one by one at each size")
    parser.add_argument("--_worker", nargs=2, metavar=("IMPL", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--_result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, or one worker when called by it."""
    args = parse_args(argv)
    if args._worker:
        impl, size = args._worker
        result = WORKERS[impl](int(size), args.workdir)
        result.setdefault("self_peak_rss_mib", _proc_status_mib("VmHWM"))
        args._result.write_text(json.dumps(result))
        return 0
    report = run_benchmark(args)
    print()
    print(markdown(report))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
