"""Validation rules for canonical interactions, with a report of every rule and its count.

Each rule is a boolean polars expression that is true on a bad row. ``--strict`` (the
default) fails on the first violated rule with a message naming the file, the line and the
value; ``--lenient`` drops the flagged rows and the report says how many, per rule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import polars as pl
from pydantic import BaseModel, ConfigDict

from movierec.data.columns import ITEM_COL, LINE_COL, RATING_COL, TIMESTAMP_COL, USER_COL
from movierec.data.movielens import MALFORMED_COL, RAW_COL, RawTables
from movierec.data.ordering import has_time_ties, sort_in_time

RATING_MIN, RATING_MAX = 0.5, 5.0
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Rule:
    """One validation rule: a name, what it means, and the expression flagging bad rows."""

    name: str
    description: str
    flags: pl.Expr
    shows: str  # the column whose value an error message quotes


def may_have_duplicates(inter: pl.DataFrame) -> bool:
    """False when no (user, item, timestamp) can repeat: all their 64-bit hashes differ.

    Sorting 25M hashes costs under half the hash table behind ``is_first_distinct``; equal
    hashes (a real duplicate, or a rare collision) send validation to the exact rule.
    """
    hashes = inter.select(pl.struct(USER_COL, ITEM_COL, TIMESTAMP_COL).hash().sort())
    return bool(hashes.select((pl.all() == pl.all().shift(1)).any()).item())


def interaction_rules(known_items: pl.Series | None, duplicates_possible: bool = True,
                      malformed_shows: str = USER_COL) -> list[Rule]:
    """The rules, in the order they are checked and reported.

    ``malformed_shows`` is the column a malformed line's message quotes: the line's own
    text (``raw``) where the reader kept it.
    """
    ok = ~pl.col(MALFORMED_COL)
    # Later than a day from now: milliseconds read as seconds land tens of millennia ahead.
    latest = int(time.time()) + 86_400
    rules = [
        Rule("malformed_line", "line cannot be split into user, item, rating, timestamp",
             pl.col(MALFORMED_COL), malformed_shows),
        Rule("bad_user_id", "user id missing or not a positive integer",
             ok & (pl.col(USER_COL).is_null() | (pl.col(USER_COL) <= 0)), USER_COL),
        Rule("bad_item_id", "item id missing or not a positive integer",
             ok & (pl.col(ITEM_COL).is_null() | (pl.col(ITEM_COL) <= 0)), ITEM_COL),
        Rule("rating_out_of_range", f"rating missing or outside {RATING_MIN}-{RATING_MAX:g}",
             ok & ~pl.col(RATING_COL).is_between(RATING_MIN, RATING_MAX).fill_null(False),
             RATING_COL),
        Rule("bad_timestamp", "timestamp missing, negative or in the future (milliseconds "
             "instead of seconds?)",
             ok & (pl.col(TIMESTAMP_COL).is_null() | (pl.col(TIMESTAMP_COL) < 0)
                   | (pl.col(TIMESTAMP_COL) > latest)), TIMESTAMP_COL),
    ]
    if known_items is not None:
        rules.append(Rule("item_without_metadata", "item id absent from the movie metadata",
                          ok & pl.col(ITEM_COL).is_not_null()
                          & ~pl.col(ITEM_COL).is_in(known_items.implode()), ITEM_COL))
    if duplicates_possible:
        # Only later copies of a row that is kept are flagged: a rejected first copy (a bad
        # rating, say) must not take a valid repeat down with it.
        kept = ~pl.any_horizontal([rule.flags for rule in rules])
        key = pl.when(kept).then(pl.struct(USER_COL, ITEM_COL, TIMESTAMP_COL))
        duplicate = kept & key.is_first_distinct().not_()
    else:
        duplicate = pl.lit(False)
    # Reported after the field checks, before the metadata check, as it always was.
    rules.insert(5, Rule("duplicate_interaction", "repeats an earlier (user, item, timestamp) "
                         "row", duplicate, ITEM_COL))
    return rules


class RuleResult(BaseModel):
    """How often one rule fired, with the first few offending lines."""

    model_config = ConfigDict(extra="forbid")

    description: str
    count: int
    examples: list[str]


class ValidationReport(BaseModel):
    """Every rule and its count, the rows read and the rows kept."""

    model_config = ConfigDict(extra="forbid")

    file: str
    rows_read: int
    rows_dropped: int
    rules: dict[str, RuleResult]

    @property
    def violations(self) -> int:
        """Total rule firings (a row may violate several rules)."""
        return sum(r.count for r in self.rules.values())

    def summary(self) -> str:
        """A few human lines: one per rule that fired, or 'all rules passed'."""
        fired = [f"{name}: {r.count} ({r.description})" for name, r in self.rules.items()
                 if r.count]
        if not fired:
            return f"{self.file}: {self.rows_read:,} rows, all {len(self.rules)} rules passed"
        return (f"{self.file}: {self.rows_read:,} rows, dropped {self.rows_dropped:,}:\n  "
                + "\n  ".join(fired))


class DataValidationError(ValueError):
    """Strict validation failed; the message names file, line, value and the fix."""

    def __init__(self, message: str, report: ValidationReport) -> None:
        super().__init__(message)
        self.report = report


def _quote(column: str, value: object) -> str:
    """How a message shows an offending value: a line's own text in quotes, else name=value."""
    return repr(value) if column == RAW_COL else f"{column}={value}"


def validate(tables: RawTables, strict: bool = True) -> tuple[pl.DataFrame, ValidationReport]:
    """Apply every rule to ``tables.interactions``.

    The rows are put in time order first (user, timestamp, file line), which preparation
    needs anyway: a duplicate (user, item, timestamp) can then only sit among rows that tie
    on (user, timestamp), so data without such ties skips the duplicate search entirely.

    Args:
        tables: Parsed canonical tables (with ``line`` and ``malformed`` columns).
        strict: Raise on any violation (default); otherwise drop flagged rows and report.

    Returns:
        The clean interactions in time order (helper columns kept) and the report.

    Raises:
        DataValidationError: In strict mode, when any rule fires.
    """
    inter = sort_in_time(tables.interactions)
    known = tables.items[ITEM_COL] if tables.items.height else None
    duplicates_possible = has_time_ties(inter) and may_have_duplicates(inter)
    rules = interaction_rules(known, duplicates_possible=duplicates_possible,
                              malformed_shows=RAW_COL if RAW_COL in inter.columns else USER_COL)
    flagged = inter.with_columns([r.flags.alias(f"_bad_{r.name}") for r in rules])
    counts = flagged.select([pl.col(f"_bad_{r.name}").sum() for r in rules]).row(0)
    results: dict[str, RuleResult] = {}
    first_error = ""
    for rule, count in zip(rules, counts, strict=True):
        examples: list[str] = []
        if count:
            bad = flagged.filter(pl.col(f"_bad_{rule.name}")).sort(LINE_COL).head(MAX_EXAMPLES)
            quoted = [_quote(rule.shows, value) for value in bad[rule.shows]]
            examples = [f"{tables.interactions_file} line {line}: {text}"
                        for line, text in zip(bad[LINE_COL], quoted, strict=True)]
            first_error = first_error or (
                f"{examples[0].split(':')[0]}: {rule.description} ({quoted[0]}); "
                f"{count:,} such row(s) in all. Fix the file or use --lenient to drop such "
                "rows")
        results[rule.name] = RuleResult(description=rule.description, count=int(count),
                                        examples=examples)
    any_bad = pl.any_horizontal([pl.col(f"_bad_{r.name}") for r in rules])
    # Nothing flagged, the usual case: keep the frame rather than copy every column.
    clean = flagged.filter(~any_bad).select(inter.columns) if any(counts) else inter
    report = ValidationReport(file=tables.interactions_file, rows_read=inter.height,
                              rows_dropped=inter.height - clean.height, rules=results)
    if strict and first_error:
        raise DataValidationError(first_error, report)
    if inter.height and not clean.height:
        # Found by fuzzing: --lenient on a file with no good row (wrong separator or
        # encoding throughout) went on and crashed while summarising an empty dataset.
        raise DataValidationError(
            f"{first_error.split('. Fix the file')[0]}: no valid row is left in "
            f"{tables.interactions_file} after dropping all {inter.height:,}; check its "
            "separator and encoding", report)
    return clean, report
