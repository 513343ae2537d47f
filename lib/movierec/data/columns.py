"""Column names shared by every table, so that functions compose."""

USER_COL = "user_id"
ITEM_COL = "item_id"
RATING_COL = "rating"
TIMESTAMP_COL = "timestamp"
TITLE_COL = "title"
YEAR_COL = "year"
GENRES_COL = "genres"

# Prepared (remapped) tables: dense indices 1..N, 0 is padding.
USER_IDX_COL = "user_idx"
ITEM_IDX_COL = "item_idx"
POSITION_COL = "position"
SPLIT_COL = "split"
LINE_COL = "line"  # 1-based line number in the source file, for error messages

TRAIN, VALID, TEST = "train", "valid", "test"
