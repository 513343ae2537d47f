"""Time order of interactions: by user, then timestamp, ties in file order (``line``)."""

from __future__ import annotations

import polars as pl

from movierec.data.columns import LINE_COL, TIMESTAMP_COL, USER_COL

_KEY_LIMIT = 1 << 32  # timestamps and line numbers below this pack into one sort key


def time_order(inter: pl.DataFrame) -> list[pl.Expr]:
    """Sort key for (user, timestamp, line): one Int128 when the values allow, else three.

    Polars sorts one column faster than three row-encoded ones (~20% at 25M rows here,
    up to 2x on a busy machine). Rows with nulls (lenient mode) take the 3-column path.
    """
    cols = (USER_COL, TIMESTAMP_COL, LINE_COL)
    u0, t0, t1, l1, nulls = inter.select(
        pl.col(USER_COL).min().alias("u0"), pl.col(TIMESTAMP_COL).min().alias("t0"),
        pl.col(TIMESTAMP_COL).max().alias("t1"), pl.col(LINE_COL).max().alias("l1"),
        pl.sum_horizontal(pl.col(cols).null_count()).alias("nulls")).row(0)
    if nulls or u0 is None or u0 < 0 or t0 < 0 or t1 >= _KEY_LIMIT or l1 >= _KEY_LIMIT:
        return [pl.col(c) for c in cols]
    return [pl.col(USER_COL).cast(pl.Int128) * pl.lit(1 << 64, dtype=pl.Int128)
            + pl.col(TIMESTAMP_COL).cast(pl.Int128) * _KEY_LIMIT + pl.col(LINE_COL)]


def sort_in_time(inter: pl.DataFrame) -> pl.DataFrame:
    """``inter`` ordered by user, timestamp and file line (nulls first)."""
    return inter.sort(time_order(inter))


def has_time_ties(inter: pl.DataFrame) -> bool:
    """Whether two rows share (user, timestamp); ``inter`` must be in time order.

    Only such rows can repeat a (user, item, timestamp): without ties there is no duplicate.
    """
    same = ((pl.col(USER_COL) == pl.col(USER_COL).shift(1))
            & (pl.col(TIMESTAMP_COL) == pl.col(TIMESTAMP_COL).shift(1)))
    return bool(inter.select(same.fill_null(False).any()).item())
