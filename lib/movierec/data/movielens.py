"""Parsers for every MovieLens layout into one canonical schema.

Canonical tables (original MovieLens ids are kept):

- interactions: ``user_id`` Int64, ``item_id`` Int64, ``rating`` Float64, ``timestamp`` Int64
  (seconds), plus ``line`` (1-based line in the source file, for error messages),
  ``malformed`` (the line could not be split into typed fields) and, when the line-exact
  reader ran, ``raw`` (a malformed line's text, as error messages quote it; null elsewhere).
- items: ``item_id``, ``title``, ``year`` (nullable), ``genres`` (list of str).
- users (optional): ``user_id``, ``age``, ``gender``, ``occupation``, ``zip_code``.

Interactions are parsed by a typed, columnar fast path; only when that fails (a stray
field, a non-number, a bad encoding) a line-exact slow path runs, so that validation can
name every bad line instead of dying on the first one.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import polars as pl

from movierec.data.columns import (
    GENRES_COL,
    ITEM_COL,
    LINE_COL,
    RATING_COL,
    TIMESTAMP_COL,
    TITLE_COL,
    USER_COL,
    YEAR_COL,
)

MALFORMED_COL = "malformed"
RAW_COL = "raw"  # a malformed line's text (first 120 characters)
INTERACTION_COLS = (USER_COL, ITEM_COL, RATING_COL, TIMESTAMP_COL)
_TYPES = {USER_COL: pl.Int64, ITEM_COL: pl.Int64, RATING_COL: pl.Float64,
          TIMESTAMP_COL: pl.Float64}
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy",
                 "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
                 "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
_TITLE_YEAR = r"^(.*?)\s*\((\d{4})(?:[-–]\d{0,4})?\)\s*$"


class ParseError(ValueError):
    """A file cannot be read at all (missing, empty, wrong encoding, wrong layout)."""


class Layout(StrEnum):
    """The on-disk layouts movierec understands."""

    ML100K = "ml-100k"          # u.data / u.item / u.user, tab and pipe separated
    DAT = "dat"                 # ml-1m ratings.dat / movies.dat / users.dat, '::', latin-1
    CSV = "csv"                 # ml-latest*, ml-20m+, ratings.csv / movies.csv
    ATOMIC = "atomic"           # RecBole *.inter / *.item / *.user with typed headers
    CANONICAL = "canonical"     # our own Parquet folder


_MARKERS = (("u.data", Layout.ML100K), ("ratings.dat", Layout.DAT),
            ("ratings.csv", Layout.CSV), ("*.inter", Layout.ATOMIC),
            ("interactions.parquet", Layout.CANONICAL))


@dataclass(frozen=True)
class RawTables:
    """Canonical tables parsed from one source, before validation."""

    interactions: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame | None
    interactions_file: str
    layout: Layout


def unpack(path: Path, workdir: Path, sha256: str | None = None) -> Path:
    """Return a folder with the release files: ``path`` itself, or a zip extracted once.

    ``sha256`` (the zip's, as ``Source`` holds it) names the extraction: another zip of
    the same name gets its own folder instead of the first one's files.
    """
    if path.is_dir():
        return path
    if not zipfile.is_zipfile(path):
        raise ParseError(f"{path} is neither a folder nor a zip archive")
    name = f"{path.stem}-{sha256[:16]}" if sha256 else path.stem
    target = workdir / name
    if not target.exists():
        tmp = workdir / f".{name}.part"
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(path) as archive:
            archive.extractall(tmp)
        tmp.rename(target)
    return target


def _visible(paths: Iterable[Path], folder: Path) -> list[Path]:
    """``paths`` without hidden ones (a dot-name anywhere below ``folder``), sorted.

    Hidden files are not data (``.DS_Store``, an editor's backup), and a source whose
    files were verified one by one must not have an unverified one read instead.
    """
    return sorted(p for p in paths
                  if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def detect_layout(folder: Path) -> tuple[Layout, Path]:
    """Find the layout marker file under ``folder`` (searching one level of subfolders)."""
    for pattern, layout in _MARKERS:
        hits = (_visible(folder.glob(pattern), folder)
                or _visible(folder.glob(f"*/{pattern}"), folder))
        if hits:
            return layout, hits[0]
    raise ParseError(
        f"{folder}: no MovieLens files found (looked for u.data, ratings.dat, ratings.csv, "
        "*.inter or interactions.parquet)"
    )


def _finish(frame: pl.DataFrame, first_line: int) -> pl.DataFrame:
    """Cast timestamps to int seconds and number lines; ``first_line`` is the first data line."""
    return frame.select(
        pl.col(USER_COL), pl.col(ITEM_COL), pl.col(RATING_COL),
        pl.col(TIMESTAMP_COL).floor().cast(pl.Int64, strict=False),
        (pl.int_range(pl.len(), dtype=pl.Int64) + first_line).alias(LINE_COL),
        pl.col(MALFORMED_COL) if MALFORMED_COL in frame.columns
        else pl.lit(False).alias(MALFORMED_COL),
        *([pl.col(RAW_COL)] if RAW_COL in frame.columns else []),
    )


def _fast_read(data: bytes, separator: str, has_header: bool, columns: list[int],
               n_fields: int) -> pl.DataFrame:
    """Typed columnar read; raises on anything irregular (then the slow path runs)."""
    empty = [i for i in range(n_fields) if i not in columns]  # e.g. inside ratings.dat's '::'
    frame = pl.read_csv(data, separator=separator, has_header=has_header, quote_char=None,
                        new_columns=[f"c{i}" for i in range(n_fields)],
                        schema_overrides={f"c{c}": t for c, t in zip(columns, _TYPES.values(),
                                                                      strict=True)},
                        infer_schema_length=100)
    if frame.width != n_fields:
        raise ParseError("field count")
    if not has_header and empty and frame.select(
            pl.any_horizontal(pl.col(f"c{i}").is_not_null() for i in empty).any()).item():
        raise ParseError("a separator is broken")
    expected_rows = data.count(b"\n") + (0 if data.endswith(b"\n") else 1) - int(has_header)
    if frame.height != expected_rows:  # blank lines were skipped: line numbers would lie
        raise ParseError("row count")
    renamed = frame.select([pl.col(f"c{c}").alias(n) for c, n in zip(columns, _TYPES,
                                                                        strict=True)])
    if any(renamed[c].dtype != t for c, t in _TYPES.items()):
        raise ParseError("types")
    # polars fills missing trailing fields with nulls: only the exact reader can tell a
    # short line from an empty field, so any null sends the file there.
    if renamed.null_count().sum_horizontal().item():
        raise ParseError("nulls")
    return renamed


def _slow_read(data: bytes, file: str, separator: str, has_header: bool, columns: list[int],
               n_fields: int, lenient: bool) -> pl.DataFrame:
    """Line-exact read: every line is kept and malformed ones are flagged, not dropped.

    Without a header, the fields between ``columns`` must be empty: they are the middle of a
    two-character separator (ratings.dat's ``::``), so text there means a broken one.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        if not lenient:
            raise ParseError(f"{file} line {line}: not valid UTF-8 ({exc.reason}); re-encode "
                             "the file or use --lenient to drop such lines") from exc
        text = data.decode("utf-8", errors="replace")
    lines = text.removeprefix("\ufeff").split("\n")  # a BOM, as the fast path ignores it
    while lines and not lines[-1].strip():  # blank lines after the last row hold no data
        lines.pop()
    if has_header:
        lines = lines[1:]
    raw = pl.DataFrame({"raw": lines}, schema={"raw": pl.String})
    parts = pl.col("raw").str.strip_suffix("\r").str.split(separator)
    empty = [] if has_header else [i for i in range(n_fields) if i not in columns]
    typed = raw.select(
        *[parts.list.get(c, null_on_oob=True).str.strip_chars().cast(t, strict=False).alias(n)
          for c, (n, t) in zip(columns, _TYPES.items(), strict=True)],
        (parts.list.len() != n_fields).alias("_count_bad"),
        *[parts.list.get(c, null_on_oob=True).alias(f"_raw{c}") for c in columns],
        pl.any_horizontal(False, *[parts.list.get(i, null_on_oob=True).fill_null("") != ""
                                   for i in empty]).alias("_separator_bad"),
        pl.col("raw"),
    )
    # A field that is present but does not parse as a number makes the line malformed.
    unparsable = pl.any_horizontal(
        [pl.col(f"_raw{c}").is_not_null() & (pl.col(f"_raw{c}").str.strip_chars() != "")
         & pl.col(n).is_null() for c, n in zip(columns, _TYPES, strict=True)]
    )
    malformed = pl.col("_count_bad") | unparsable | pl.col("_separator_bad")
    return typed.select(*_TYPES, malformed.alias(MALFORMED_COL),
                        pl.when(malformed).then(pl.col("raw").str.slice(0, 120)).alias(RAW_COL))


def read_delimited_interactions(path: Path, separator: str, has_header: bool,
                                columns: list[int], n_fields: int,
                                lenient: bool) -> pl.DataFrame:
    """Read a ratings file whose fields ``columns`` hold user, item, rating, timestamp."""
    data = path.read_bytes()
    if not data.strip():
        raise ParseError(f"{path.name}: file is empty")
    try:
        frame = _fast_read(data, separator, has_header, columns, n_fields)
    except Exception:
        frame = _slow_read(data, path.name, separator, has_header, columns, n_fields, lenient)
    return _finish(frame, 2 if has_header else 1)


def _split_title_year(frame: pl.DataFrame, title_col: str) -> pl.DataFrame:
    title = pl.col(title_col).str.strip_chars()
    return frame.with_columns(
        pl.when(title.str.contains(_TITLE_YEAR)).then(title.str.extract(_TITLE_YEAR, 1))
        .otherwise(title).alias(TITLE_COL),
        title.str.extract(_TITLE_YEAR, 2).cast(pl.Int32, strict=False).alias(YEAR_COL),
    )


def _items_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """The canonical item table.

    Raises:
        ParseError: An item id listed twice (which title would it be?), naming the ids.
    """
    items = frame.select(pl.col(ITEM_COL).cast(pl.Int64), pl.col(TITLE_COL).cast(pl.String),
                         pl.col(YEAR_COL).cast(pl.Int32),
                         pl.col(GENRES_COL).cast(pl.List(pl.String)))
    repeated = items.filter(pl.col(ITEM_COL).is_duplicated())[ITEM_COL].unique().sort()
    if repeated.len():
        raise ParseError(f"the movie metadata lists {repeated.len()} item id(s) more than once "
                         f"({repeated.head(5).to_list()}): keep one line per movie")
    return items


def _read_text_table(path: Path, separator: str, encoding: str, n_fields: int) -> pl.DataFrame:
    """Small metadata files: decoded and numbered, then split in columnar polars code.

    Columns ``c0..c{n-1}`` plus ``_line`` (1-based line in the file, for error messages).

    Raises:
        ParseError: A line without exactly ``n_fields`` fields (a title or genre list that
            would otherwise read as null), naming the line.
    """
    text = path.read_bytes().decode(encoding)
    numbered = [(n, ln) for n, ln in enumerate(text.replace("\r\n", "\n").split("\n"), 1)
                if ln.strip()]
    if not numbered:  # found by fuzzing: an empty u.item gave a dataset without titles
        raise ParseError(f"{path.name}: file is empty; it is required (restore it from the "
                         "release)")
    raw = pl.DataFrame({"_line": [n for n, _ in numbered], "raw": [ln for _, ln in numbered]},
                       schema={"_line": pl.Int64, "raw": pl.String})
    parts = pl.col("raw").str.split(separator)
    counts = raw.select(parts.list.len()).to_series()
    if (wrong := counts != n_fields).any():
        line, text = raw.filter(wrong).row(0)
        raise ParseError(f"{path.name} line {line}: {counts.filter(wrong)[0]} fields separated "
                         f"by {separator!r}, expected {n_fields} ({text[:80]!r}); "
                         f"{int(wrong.sum())} such line(s) in all. Fix the file (restore it "
                         "from the release)")
    return raw.select([parts.list.get(i).alias(f"c{i}") for i in range(n_fields)]
                      + [pl.col("_line")])


def _checked_ids(frame: pl.DataFrame, column: str, file: str, what: str) -> pl.DataFrame:
    """Cast an id column of a metadata table to Int64, naming the first line that is not one.

    Found by fuzzing: a strict polars cast stopped ``prepare`` with a traceback instead.
    """
    ids = frame[column].str.strip_chars().cast(pl.Int64, strict=False)
    if ids.null_count():
        line, value = frame.filter(ids.is_null()).select("_line", column).row(0)
        raise ParseError(f"{file} line {line}: {what} {value!r} is not an integer; fix the "
                         "line (or remove it)")
    return frame.with_columns(ids.alias(column))


def _read_users(path: Path, separator: str, fields: tuple[str, ...]) -> pl.DataFrame:
    """Demographics in the canonical column order; ``fields`` names the file's columns."""
    raw = _read_text_table(path, separator, "latin-1", len(fields))
    raw = raw.rename({f"c{i}": name for i, name in enumerate(fields)})
    raw = _checked_ids(raw, "user_id", path.name, "user id")
    return raw.select(pl.col("user_id").alias(USER_COL),
                      pl.col("age").cast(pl.Int32, strict=False), "gender", "occupation",
                      "zip_code")


def parse_ml100k(folder: Path, lenient: bool) -> RawTables:
    """MovieLens 100K: ``u.data`` (tab), ``u.item`` and ``u.user`` (pipe, latin-1)."""
    inter = read_delimited_interactions(folder / "u.data", "\t", False, [0, 1, 2, 3], 4, lenient)
    raw = _checked_ids(_read_text_table(folder / "u.item", "|", "latin-1", 24), "c0", "u.item",
                       "movie id")
    flags = [pl.when(pl.col(f"c{5 + i}") == "1").then(pl.lit(g)) for i, g in
             enumerate(ML100K_GENRES)]
    items = _split_title_year(raw.with_columns(pl.col("c0").cast(pl.Int64).alias(ITEM_COL)), "c1")
    date_year = pl.col("c2").str.slice(-4).cast(pl.Int32, strict=False)
    items = items.with_columns(pl.coalesce(YEAR_COL, date_year).alias(YEAR_COL),
                               pl.concat_list(flags).list.drop_nulls().alias(GENRES_COL))
    users = _read_users(folder / "u.user", "|", ("user_id", "age", "gender", "occupation",
                                                  "zip_code"))
    return RawTables(inter, _items_frame(items), users, "u.data", Layout.ML100K)


def parse_dat(folder: Path, lenient: bool) -> RawTables:
    """MovieLens 1M: ``::``-separated .dat files in latin-1."""
    # '::' is two single-character ':' separators around an empty field: fields 0, 2, 4, 6.
    inter = read_delimited_interactions(folder / "ratings.dat", ":", False, [0, 2, 4, 6], 7,
                                        lenient)
    raw = _checked_ids(_read_text_table(folder / "movies.dat", "::", "latin-1", 3), "c0",
                       "movies.dat", "movie id")
    items = _split_title_year(raw.with_columns(pl.col("c0").cast(pl.Int64).alias(ITEM_COL)), "c1")
    items = items.with_columns(pl.col("c2").str.split("|").alias(GENRES_COL))
    users = None
    if (folder / "users.dat").exists():
        users = _read_users(folder / "users.dat", "::", ("user_id", "gender", "age",
                                                         "occupation", "zip_code"))
    return RawTables(inter, _items_frame(items), users, "ratings.dat", Layout.DAT)


CSV_RATING_COLUMNS = ("userId", "movieId", "rating", "timestamp")


def parse_csv(folder: Path, lenient: bool) -> RawTables:
    """ml-latest, ml-latest-small, ml-20m, ml-25m, ml-32m: ``ratings.csv`` and ``movies.csv``."""
    ratings = folder / "ratings.csv"
    with ratings.open(encoding="utf-8-sig") as handle:
        header = [field.strip() for field in handle.readline().strip().split(",")]
    # Columns are read by position, so a header in another order (or none, whose first
    # rating would be skipped as one) must stop here rather than swap users and items.
    if header != list(CSV_RATING_COLUMNS):
        raise ParseError(f"{ratings}: the header is {','.join(header)!r}; expected "
                         f"{','.join(CSV_RATING_COLUMNS)!r} as GroupLens writes it")
    inter = read_delimited_interactions(ratings, ",", True, [0, 1, 2, 3], 4, lenient)
    movies = pl.read_csv(folder / "movies.csv", schema_overrides={"movieId": pl.Int64})
    items = _split_title_year(movies.rename({"movieId": ITEM_COL}), "title")
    genres = pl.col("genres").str.split("|")
    items = items.with_columns(
        pl.when(pl.col("genres") == "(no genres listed)").then(pl.lit([], pl.List(pl.String)))
        .otherwise(genres).alias(GENRES_COL))
    return RawTables(inter, _items_frame(items), None, "ratings.csv", Layout.CSV)


def _atomic_header(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as handle:
        return [field.split(":")[0] for field in handle.readline().rstrip("\n").split("\t")]


def parse_atomic(folder: Path, lenient: bool) -> RawTables:
    """RecBole atomic files: ``<name>.inter/.item/.user`` with ``field:type`` headers."""
    inter_path = _visible(folder.glob("*.inter"), folder)[0]
    header = _atomic_header(inter_path)
    wanted = ["user_id", "item_id", "rating", "timestamp"]
    missing = [w for w in wanted if w not in header]
    if missing:
        raise ParseError(f"{inter_path.name}: header lacks {missing}; found {header}")
    inter = read_delimited_interactions(inter_path, "\t", True,
                                        [header.index(w) for w in wanted], len(header), lenient)
    item_path = inter_path.with_suffix(".item")
    if not item_path.exists():
        raise ParseError(f"{item_path} is missing: movie metadata is required")
    item_header = _atomic_header(item_path)
    raw = pl.read_csv(item_path, separator="\t", has_header=True, new_columns=item_header,
                      quote_char=None, infer_schema_length=0)
    items = raw.select(
        pl.col("item_id").cast(pl.Int64).alias(ITEM_COL),
        pl.col("movie_title").alias(TITLE_COL),
        pl.col("release_year").cast(pl.Int32, strict=False).alias(YEAR_COL),
        pl.col("class").fill_null("").str.split(" ").list.eval(pl.element().filter(
            pl.element() != "")).alias(GENRES_COL))
    users = None
    user_path = inter_path.with_suffix(".user")
    if user_path.exists():
        raw_users = pl.read_csv(user_path, separator="\t", has_header=True, quote_char=None,
                                new_columns=_atomic_header(user_path), infer_schema_length=0)
        users = raw_users.select(pl.col("user_id").cast(pl.Int64).alias(USER_COL),
                                 pl.col("age").cast(pl.Int32, strict=False),
                                 pl.col("gender"), pl.col("occupation"), pl.col("zip_code"))
    return RawTables(inter, _items_frame(items), users, inter_path.name, Layout.ATOMIC)


def _canonical_interactions(frame: pl.DataFrame) -> pl.DataFrame:
    """A canonical ``interactions.parquet`` in the canonical types, losing nothing silently.

    Integer columns are kept as they are (a round trip through Float64 would round
    timestamps above 2^53). Ids stored as floats must be whole numbers: a row with 3.5 as
    an id is malformed, not user 3. Float timestamps are floored to seconds, as the text
    readers do.

    Raises:
        ParseError: A column that is neither integer nor float (ratings: not numeric).
    """
    for column in INTERACTION_COLS:
        dtype = frame.schema[column]
        if not (dtype.is_integer() or dtype.is_float()):
            raise ParseError(f"interactions.parquet: column {column} is {dtype}; expected "
                             "numbers")
    whole = [(pl.col(c) == pl.col(c).floor()) & pl.col(c).is_finite()
             for c in (USER_COL, ITEM_COL) if frame.schema[c].is_float()]
    malformed = ~pl.all_horizontal(True, *whole).fill_null(True)  # a null id: another rule
    exact = [pl.col(c) if frame.schema[c].is_integer()
             else pl.when(pl.col(c).is_finite()).then(pl.col(c).floor())
             for c in (USER_COL, ITEM_COL, TIMESTAMP_COL)]
    flagged = frame.with_columns(malformed.alias(MALFORMED_COL))
    # The quoted ids only where a row is malformed: a column for 25M clean rows costs memory.
    quoted = ([pl.when(malformed).then(pl.format("user_id={}, item_id={}", USER_COL, ITEM_COL))
               .alias(RAW_COL)] if flagged[MALFORMED_COL].any() else [])
    return flagged.select(
        *[value.cast(pl.Int64, strict=False).alias(c)
          for value, c in zip(exact, (USER_COL, ITEM_COL, TIMESTAMP_COL), strict=True)],
        pl.col(RATING_COL).cast(pl.Float64),
        pl.col(MALFORMED_COL), *quoted,
    ).select(*INTERACTION_COLS, MALFORMED_COL, *([RAW_COL] if quoted else []))


def parse_canonical(folder: Path, lenient: bool) -> RawTables:
    """A canonical Parquet folder (written by ``movierec data synth`` or by hand)."""
    del lenient  # Parquet is typed: malformed rows (fractional ids) are flagged as usual.
    inter = pl.read_parquet(folder / "interactions.parquet",
                            columns=list(INTERACTION_COLS))
    inter = _finish(_canonical_interactions(inter), 1)
    items = _items_frame(pl.read_parquet(folder / "items.parquet"))
    users_path = folder / "users.parquet"
    users = pl.read_parquet(users_path) if users_path.exists() else None
    return RawTables(inter, items, users, "interactions.parquet", Layout.CANONICAL)


_PARSERS = {Layout.ML100K: parse_ml100k, Layout.DAT: parse_dat, Layout.CSV: parse_csv,
            Layout.ATOMIC: parse_atomic, Layout.CANONICAL: parse_canonical}


def parse_folder(folder: Path, lenient: bool = False) -> RawTables:
    """Detect the layout of ``folder`` and parse it into canonical tables."""
    layout, marker = detect_layout(folder)
    try:
        tables = _PARSERS[layout](marker.parent, lenient)
    except FileNotFoundError as exc:  # polars raises it without a filename
        missing = Path(exc.filename).name if exc.filename else str(exc).splitlines()[0]
        raise ParseError(f"{marker.parent}: a required file is missing: {missing}") from exc
    except UnicodeDecodeError as exc:
        raise ParseError(f"{marker.parent}: a metadata file is not in the expected "
                         f"encoding ({exc})") from exc
    except pl.exceptions.PolarsError as exc:  # a file of the wrong shape or types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ParseError(f"{marker.parent} ({layout} layout): a file does not have the "
                         f"expected columns or types: {first[:300]}") from exc
    if tables.items.is_empty():  # every item would then be "without metadata"
        raise ParseError(f"{marker.parent}: the movie metadata holds no movies")
    return tables


def write_canonical(tables: RawTables, out: Path) -> None:
    """Write the canonical Parquet folder (interactions without helper columns)."""
    out.mkdir(parents=True, exist_ok=True)
    tables.interactions.select(INTERACTION_COLS).write_parquet(out / "interactions.parquet")
    tables.items.write_parquet(out / "items.parquet")
    if tables.users is not None:
        tables.users.write_parquet(out / "users.parquet")


__all__ = ["Layout", "ParseError", "RawTables", "detect_layout", "parse_folder", "unpack",
           "write_canonical"]
