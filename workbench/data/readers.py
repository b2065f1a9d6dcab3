"""Read (query, passage, label) pairs and (query, positive, negative...) tuples, validated.

Sources: CSV, TSV, JSONL/JSON, Parquet files, a pandas DataFrame, a `datasets.Dataset`, or a
folder written by `Dataset.save_to_disk`. Every rule that fails names the file, the row (1-based,
header not counted) and the column.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import datasets
import pandas as pd

logger = logging.getLogger(__name__)

_READERS = {
    ".csv": lambda p: pd.read_csv(p, keep_default_na=False, encoding="utf-8-sig"),
    ".tsv": lambda p: pd.read_csv(p, sep="\t", keep_default_na=False, encoding="utf-8-sig"),
    ".jsonl": lambda p: pd.read_json(p, lines=True, dtype=False, encoding="utf-8-sig"),
    ".json": lambda p: pd.read_json(p, dtype=False, encoding="utf-8-sig"),
    ".parquet": pd.read_parquet,
}
_NEGATIVE = re.compile(r"^negative(_\d+)?$")


class DataValidationError(ValueError):
    """Training or evaluation data broke a rule; the message names file, row and column."""


def read_table(source, *, column_map: Mapping[str, str] | None = None) -> tuple[pd.DataFrame, str]:
    """Read any supported source into a DataFrame.

    Args:
        source: A file path, a saved-dataset folder, a DataFrame or a `datasets.Dataset`.
        column_map: Renames columns to roles, e.g. `{"question": "query"}`.

    Returns:
        The table and a label naming where it came from (for error messages).

    Raises:
        FileNotFoundError: If a path does not exist.
        DataValidationError: If the file type is unknown or the file cannot be parsed.
    """
    table, origin = _read_any(source)
    if column_map:
        table = table.rename(columns=dict(column_map))
    return table, origin


def load_pairs(
    source,
    *,
    column_map: Mapping[str, str] | None = None,
    label_range: tuple[float, float] | None = (0.0, 1.0),
    require_positive: bool = False,
) -> datasets.Dataset:
    """Load labelled (query, passage, label) pairs.

    Args:
        source: See `read_table`.
        column_map: Renames columns to the roles `query`, `passage`, `label`.
        label_range: Inclusive bounds a label must lie in (BCE wants 0..1); None for no bound.
        require_positive: Every query needs at least one pair with label > 0 (for ranking).

    Returns:
        A Dataset with columns `query`, `passage` (str) and `label` (float).

    Raises:
        DataValidationError: On a missing column, empty text, a non-numeric or out-of-range
            label, or (with `require_positive`) a query without a positive.
    """
    table, origin = read_table(source, column_map=column_map)
    _require_columns(table, ("query", "passage", "label"), origin)
    for column in ("query", "passage"):
        _check_text(table, column, origin)
    labels = _check_labels(table, origin, label_range)
    if require_positive:
        _check_positives(table["query"], labels, origin)

    frame = pd.DataFrame(
        {"query": table["query"].astype(str), "passage": table["passage"].astype(str)}
    )
    frame["label"] = labels.astype("float32")
    logger.info("Loaded %d pairs from %s", len(frame), origin)
    return datasets.Dataset.from_pandas(frame, preserve_index=False)


def load_tuples(source, *, column_map: Mapping[str, str] | None = None) -> datasets.Dataset:
    """Load (query, positive, negative_1..n) rows; a single `negative` column is accepted.

    Returns:
        A Dataset with columns `query`, `positive`, `negative_1`, ... (all str).

    Raises:
        DataValidationError: On a missing column or empty text.
    """
    table, origin = read_table(source, column_map=column_map)
    negatives = [c for c in table.columns if _NEGATIVE.match(str(c))]
    _require_columns(table, ("query", "positive"), origin)
    if not negatives:
        raise DataValidationError(
            f"{origin}: expected at least one negative column ('negative' or 'negative_1', ...), "
            f"got columns {list(table.columns)!r}"
        )
    columns = ["query", "positive", *negatives]
    for column in columns:
        _check_text(table, column, origin)
    frame = table[columns].astype(str)
    frame = frame.rename(columns={"negative": "negative_1"})
    logger.info("Loaded %d tuples (%d negatives each) from %s", len(frame), len(negatives), origin)
    return datasets.Dataset.from_pandas(frame, preserve_index=False)


def tuples_to_pairs(dataset: datasets.Dataset) -> datasets.Dataset:
    """Expand (query, positive, negative_1..n) rows into labelled pairs (1 and 0)."""
    negatives = [c for c in dataset.column_names if _NEGATIVE.match(c)]
    rows = {"query": [], "passage": [], "label": []}
    for row in dataset:
        for column, label in [("positive", 1.0)] + [(c, 0.0) for c in negatives]:
            rows["query"].append(row["query"])
            rows["passage"].append(row[column])
            rows["label"].append(label)
    return datasets.Dataset.from_dict(rows)


def _read_any(source) -> tuple[pd.DataFrame, str]:
    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True), "DataFrame"
    if isinstance(source, datasets.Dataset):
        return source.to_pandas(), "Dataset"

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"No such data file or folder: {str(path)!r}")
    if path.is_dir():
        return datasets.load_from_disk(str(path)).to_pandas(), str(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataValidationError(
            f"{path}: unknown file type {path.suffix!r}; expected one of {sorted(_READERS)}"
        )
    try:
        return reader(path), str(path)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataValidationError(f"{path}: could not be parsed as {path.suffix}: {err}") from err


def _require_columns(table: pd.DataFrame, columns: tuple[str, ...], origin: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataValidationError(
            f"{origin}: missing required column(s) {missing!r}; got columns "
            f"{list(table.columns)!r}. Rename them or pass column_map={{'your_name': "
            f"{missing[0]!r}}}."
        )


def _check_text(table: pd.DataFrame, column: str, origin: str) -> None:
    for row, value in enumerate(table[column], start=1):
        if not isinstance(value, str) or not value.strip():
            raise DataValidationError(
                f"{origin}, row {row}, column {column!r}: expected non-empty text, got {value!r}"
            )


def _check_labels(
    table: pd.DataFrame, origin: str, label_range: tuple[float, float] | None
) -> pd.Series:
    labels = pd.to_numeric(table["label"], errors="coerce")
    for row, (raw, value) in enumerate(zip(table["label"], labels, strict=True), start=1):
        if pd.isna(value) or isinstance(raw, bool):
            raise DataValidationError(
                f"{origin}, row {row}, column 'label': expected a number, got {raw!r}"
            )
        if label_range and not label_range[0] <= value <= label_range[1]:
            raise DataValidationError(
                f"{origin}, row {row}, column 'label': expected a value in "
                f"[{label_range[0]}, {label_range[1]}], got {raw!r}"
            )
    return labels


def _check_positives(queries: pd.Series, labels: pd.Series, origin: str) -> None:
    has_positive = (labels > 0).groupby(queries.values).any()
    for row, query in enumerate(queries, start=1):
        if not has_positive[query]:
            raise DataValidationError(
                f"{origin}, row {row}, column 'query': query {query!r} has no positive pair "
                "(label > 0); ranking metrics and ranking losses need one"
            )
