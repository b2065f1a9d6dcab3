"""Read (query, passage, label) pairs, (query, positive, negative...) tuples and (query,
documents, labels) lists, validated.

Sources: CSV, TSV, JSONL/JSON, Parquet files (optionally .gz, .bz2, .xz or .zip compressed), a
pandas DataFrame, a `datasets.Dataset`, or a folder written by `Dataset.save_to_disk`. Every
rule that fails names the file, the row (1-based, header not counted) and the column; every
repair (a byte-order mark, another delimiter, duplicate rows, "yes"/"no" labels, ...) is counted
in a `DataFix` that `read_pairs` and friends return and `load_pairs` and friends log.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from workbench.data.files import drop_unnamed_columns, read_file
from workbench.data.fixes import DataFix, DataValidationError

logger = logging.getLogger(__name__)

_NEGATIVE = re.compile(r"^negative(_\d+)?$")
# Words accepted as binary labels (case and surrounding spaces ignored), counted as a fix.
TEXT_LABELS = {"yes": 1.0, "no": 0.0, "true": 1.0, "false": 0.0}
# Texts longer than this get a note: they are cut to max_length tokens when tokenized.
LONG_TEXT_CHARS = 10_000
_SHOWN_ROWS = 10


@dataclass
class LoadedData:
    """A validated dataset, where it came from, and what the reader fixed or noticed.

    Attributes:
        dataset: The rows, in the columns of their format.
        origin: The file (or "DataFrame" / "Dataset") for messages.
        fixes: Every change made and every note, in the order they arose.
    """

    dataset: datasets.Dataset
    origin: str
    fixes: list[DataFix] = field(default_factory=list)


def read_table(source, *, column_map: Mapping[str, str] | None = None) -> tuple[pd.DataFrame, str]:
    """Read any supported source into a DataFrame.

    Columns with no header name are dropped; those and other repairs of the file (a byte-order
    mark, a non-UTF-8 encoding, another delimiter) are listed in `table.attrs["fixes"]`.

    Args:
        source: A file path, a saved-dataset folder, a DataFrame or a `datasets.Dataset`.
        column_map: Renames columns to roles, e.g. `{"question": "query"}`.

    Returns:
        The table and a label naming where it came from (for error messages).

    Raises:
        FileNotFoundError: If a path does not exist.
        DataValidationError: If the file is empty, has no data rows, is of an unknown type, or
            cannot be parsed.
    """
    table, origin, fixes, _ = _read_any(source)
    if column_map:
        table = table.rename(columns=dict(column_map))
    table.attrs["fixes"] = fixes
    return table, origin


def label_range_for(loss, num_labels: int = 1) -> tuple[float, float] | None:
    """The labels a pairs loss accepts: inclusive bounds, or None for any finite number.

    Args:
        loss: A loss class name (`"BinaryCrossEntropyLoss"`), class or instance.
        num_labels: Classes of the model, for `CrossEntropyLoss`.

    Raises:
        ValueError: If the loss does not train on pairs.
    """
    name = loss if isinstance(loss, str) else getattr(loss, "__name__", type(loss).__name__)
    if name == "BinaryCrossEntropyLoss":
        return (0.0, 1.0)
    if name == "CrossEntropyLoss":
        return (0.0, float(num_labels - 1))
    if name == "MSELoss":
        return None
    raise ValueError(
        f"label_range_for expects a pairs loss (BinaryCrossEntropyLoss, CrossEntropyLoss, "
        f"MSELoss), got {name!r}"
    )


def read_pairs(
    source,
    *,
    column_map: Mapping[str, str] | None = None,
    label_range: tuple[float, float] | None = (0.0, 1.0),
    require_positive: bool = False,
    loss=None,
    num_labels: int = 1,
    drop_duplicates: bool = True,
) -> LoadedData:
    """Load labelled (query, passage, label) pairs with the fixes made on the way.

    Args:
        source: See `read_table`.
        column_map: Renames columns to the roles `query`, `passage`, `label`.
        label_range: Inclusive bounds a label must lie in (BCE wants 0..1); None for no bound.
        require_positive: Every query needs at least one pair with label > 0 (for ranking);
            otherwise queries without one are counted in a note.
        loss: The pairs loss the data is for (name, class or instance); its label rule
            (`label_range_for`) replaces `label_range`, and its name is in the message.
        num_labels: The model's classes, for `CrossEntropyLoss` (labels 0..num_labels-1).
        drop_duplicates: Drop rows repeating an earlier (query, passage, label), counted.

    Returns:
        The pairs (`query`, `passage` str, `label` float), origin and fixes.

    Raises:
        DataValidationError: On a missing column, empty text, a missing, non-numeric or
            out-of-range label, or (with `require_positive`) a query without a positive.
    """
    table, origin, fixes, typed = _read_any(source, column_map)
    _require_columns(table, ("query", "passage", "label"), origin)
    for column in ("query", "passage"):
        _check_text(table, column, origin)
    rule = _LabelRule.for_loss(loss, num_labels) if loss is not None else _LabelRule(label_range)
    labels, label_fixes = _parse_labels(table["label"], origin, typed)
    rule.check(labels, table["label"], origin)
    fixes += label_fixes

    frame = pd.DataFrame(
        {"query": table["query"].astype(str), "passage": table["passage"].astype(str)}
    )
    frame["label"] = labels.astype("float32")
    fixes += _conflicting_labels(frame, origin)
    if drop_duplicates:
        frame, more = drop_duplicate_rows(frame, origin)
        fixes += more
    fixes += _positives(frame, origin, require_positive)
    fixes += _long_texts(frame, ("query", "passage"), origin)
    return _finish(frame, origin, fixes, "pairs")


def load_pairs(
    source,
    *,
    column_map: Mapping[str, str] | None = None,
    label_range: tuple[float, float] | None = (0.0, 1.0),
    require_positive: bool = False,
    loss=None,
    num_labels: int = 1,
    drop_duplicates: bool = True,
) -> datasets.Dataset:
    """Load labelled (query, passage, label) pairs; fixes are logged (see `read_pairs`).

    Returns:
        A Dataset with columns `query`, `passage` (str) and `label` (float).

    Raises:
        DataValidationError: As `read_pairs`.
    """
    return read_pairs(
        source,
        column_map=column_map,
        label_range=label_range,
        require_positive=require_positive,
        loss=loss,
        num_labels=num_labels,
        drop_duplicates=drop_duplicates,
    ).dataset


def read_tuples(
    source, *, column_map: Mapping[str, str] | None = None, drop_duplicates: bool = True
) -> LoadedData:
    """Load (query, positive, negative_1..n) rows with the fixes made on the way.

    A single `negative` column is accepted (renamed `negative_1`).

    Raises:
        DataValidationError: On a missing column or empty text.
    """
    table, origin, fixes, _ = _read_any(source, column_map)
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
    frame = table[columns].astype(str).rename(columns={"negative": "negative_1"})
    if drop_duplicates:
        frame, more = drop_duplicate_rows(frame, origin)
        fixes += more
    fixes += _long_texts(frame, list(frame.columns), origin)
    return _finish(frame, origin, fixes, f"tuples ({len(negatives)} negatives each)")


def load_tuples(source, *, column_map: Mapping[str, str] | None = None) -> datasets.Dataset:
    """Load (query, positive, negative_1..n) rows; fixes are logged (see `read_tuples`).

    Returns:
        A Dataset with columns `query`, `positive`, `negative_1`, ... (all str).

    Raises:
        DataValidationError: On a missing column or empty text.
    """
    return read_tuples(source, column_map=column_map).dataset


def read_lists(source, *, column_map: Mapping[str, str] | None = None) -> LoadedData:
    """Load (query, documents, labels) rows for listwise losses, with the fixes made.

    `documents` and `labels` are lists (in CSV, JSON arrays written as text) of equal length.

    Raises:
        DataValidationError: On a missing column, empty text, a value that is not a list, lists
            of different lengths, or a label that is not a number.
    """
    table, origin, fixes, typed = _read_any(source, column_map)
    _require_columns(table, ("query", "documents", "labels"), origin)
    _check_text(table, "query", origin)
    rows, text_rows = {"query": [], "documents": [], "labels": []}, []
    for row, (query, documents, labels) in enumerate(
        zip(table["query"], table["documents"], table["labels"], strict=True), start=1
    ):
        documents = _as_list(documents, origin, row, "documents")
        labels = _as_list(labels, origin, row, "labels")
        _check_list_row(documents, labels, origin, row)
        values = []
        for item, cell in enumerate(labels):
            where = f"{origin}, row {row}, column 'labels', item {item}"
            value, was_text = _label_value(cell, where)
            values.append(value)
            if was_text and (typed or not _numeric_text(cell)):
                text_rows.append(row)
        rows["query"].append(str(query))
        rows["documents"].append(list(documents))
        rows["labels"].append(values)
    if text_rows:
        message = (
            f"{origin}, column 'labels': read {len(text_rows)} label(s) written as text as numbers"
        )
        fixes.append(DataFix("text_labels", len(text_rows), message, tuple(text_rows[:10])))
    return _finish(pd.DataFrame(rows), origin, fixes, "lists")


def load_lists(source, *, column_map: Mapping[str, str] | None = None) -> datasets.Dataset:
    """Load (query, documents, labels) rows; see `read_lists`.

    Returns:
        A Dataset with columns `query` (str), `documents` (list of str), `labels` (list of float).
    """
    return read_lists(source, column_map=column_map).dataset


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


def _read_any(source, column_map=None) -> tuple[pd.DataFrame, str, list[DataFix], bool]:
    """Table, origin, fixes, and whether the source carries types (not CSV/TSV text)."""
    if isinstance(source, pd.DataFrame):
        table, origin, fixes, typed = source.reset_index(drop=True), "DataFrame", [], True
    elif isinstance(source, datasets.Dataset):
        table, origin, fixes, typed = source.to_pandas(), "Dataset", [], True
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"No such data file or folder: {str(path)!r}")
        origin = str(path)
        if path.is_dir():
            table, fixes, typed = datasets.load_from_disk(origin).to_pandas(), [], True
        else:
            table, fixes, typed = read_file(path)
    table, unnamed = drop_unnamed_columns(table, origin)
    if column_map:
        table = table.rename(columns=dict(column_map))
    if table.empty:
        raise DataValidationError(f"{origin}: has no data rows")
    return table, origin, fixes + unnamed, typed


def _finish(frame: pd.DataFrame, origin: str, fixes: list[DataFix], what: str) -> LoadedData:
    for fix in fixes:
        logger.log(logging.WARNING if fix.changed else logging.INFO, "%s", fix.message)
    changed = sum(1 for f in fixes if f.changed)
    logger.info("Loaded %d %s from %s (%d fixes)", len(frame), what, origin, changed)
    dataset = datasets.Dataset.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    return LoadedData(dataset, origin, fixes)


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
            shown = "an empty cell" if _is_missing(value) else repr(value)
            raise DataValidationError(
                f"{origin}, row {row}, column {column!r}: expected non-empty text, got {shown}"
            )


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _parse_labels(raw: pd.Series, origin: str, typed: bool) -> tuple[pd.Series, list[DataFix]]:
    """Numbers from label cells; "yes"/"no"/"true"/"false" (and, in typed formats, numbers
    written as text) are converted and counted."""
    values, converted, examples = [], [], {}
    for row, cell in enumerate(raw, start=1):
        value, was_text = _label_value(cell, f"{origin}, row {row}, column 'label'")
        values.append(value)
        if was_text and (typed or not _numeric_text(cell)):
            converted.append(row)
            examples.setdefault(str(cell).strip(), value)
    fixes = []
    if converted:
        shown = ", ".join(f"{k!r} -> {v:g}" for k, v in list(examples.items())[:4])
        message = (
            f"{origin}, column 'label': read {len(converted)} label(s) written as text as "
            f"numbers ({shown})"
        )
        fixes.append(DataFix("text_labels", len(converted), message, tuple(converted[:10])))
    return pd.Series(values, index=raw.index, dtype="float64"), fixes


def _label_value(cell, where: str) -> tuple[float, bool]:
    """A label cell as a float, and whether it was text (or a boolean) before.

    Args:
        cell: The raw value.
        where: File, row and column, for the message.
    """
    if _is_missing(cell) or (isinstance(cell, str) and not cell.strip()):
        raise DataValidationError(
            f"{where}: missing label (empty cell); fill it in or drop the row"
        )
    if isinstance(cell, bool | np.bool_):
        return float(cell), True
    if isinstance(cell, str):
        word = cell.strip().lower()
        if word in TEXT_LABELS:
            return TEXT_LABELS[word], True
        try:
            value = float(word)
        except ValueError:
            raise DataValidationError(
                f"{where}: expected a number, got {cell!r} (yes/no and true/false are read as 1/0)"
            ) from None
        was_text = True
    elif isinstance(cell, int | float | np.integer | np.floating):
        value, was_text = float(cell), False
    else:
        raise DataValidationError(f"{where}: expected a number, got {cell!r}")
    if not math.isfinite(value):
        raise DataValidationError(f"{where}: expected a finite number, got {cell!r}")
    return value, was_text


def _numeric_text(cell) -> bool:
    try:
        float(str(cell))
    except ValueError:
        return False
    return True


@dataclass
class _LabelRule:
    """Inclusive bounds for labels, whole numbers only for class ids, named after a loss."""

    bounds: tuple[float, float] | None
    whole: bool = False
    loss: str | None = None
    hint: str = ""

    @classmethod
    def for_loss(cls, loss, num_labels: int) -> _LabelRule:
        name = loss if isinstance(loss, str) else getattr(loss, "__name__", type(loss).__name__)
        bounds = label_range_for(name, num_labels)
        if name == "CrossEntropyLoss":
            hint = (
                f"Labels are class ids 0..{num_labels - 1}; load the model with num_labels = the "
                "number of classes."
            )
            return cls(bounds, True, f"CrossEntropyLoss with num_labels={num_labels}", hint)
        hint = "Rescale the labels to 0..1, or use MSELoss for scores without bounds."
        return cls(bounds, False, name, hint)

    def check(self, labels: pd.Series, raw: pd.Series, origin: str) -> None:
        low, high = self.bounds if self.bounds else (-math.inf, math.inf)
        for row, (value, cell) in enumerate(zip(labels, raw, strict=True), start=1):
            if low <= value <= high and (not self.whole or value.is_integer()):
                continue
            kind = "a whole number" if self.whole else "a value"
            shown = (
                f"{cell!r}" if isinstance(cell, str) and not _numeric_text(cell) else f"{value:g}"
            )
            expects = f"{self.loss} expects" if self.loss else "expected"
            bounds = f"[{low:g}, {high:g}]" if self.whole else f"[{low}, {high}]"
            raise DataValidationError(
                f"{origin}, row {row}, column 'label': {expects} {kind} in {bounds}, got "
                f"{shown}" + (f". {self.hint}" if self.hint else "")
            )


def _conflicting_labels(frame: pd.DataFrame, origin: str) -> list[DataFix]:
    """Note (query, passage) pairs given different labels in different rows."""
    labels_per_pair = frame.groupby(["query", "passage"], sort=False)["label"].nunique()
    conflicting = labels_per_pair[labels_per_pair > 1]
    if conflicting.empty:
        return []
    keys = set(conflicting.index)
    pairs = zip(frame["query"], frame["passage"], strict=True)
    rows = [i + 1 for i, key in enumerate(pairs) if key in keys]
    message = (
        f"{origin}: {len(conflicting)} (query, passage) pair(s) appear with different labels "
        f"(rows {', '.join(map(str, rows[:4]))}); all kept"
    )
    return [DataFix("conflicting_labels", len(conflicting), message, tuple(rows[:10]), False)]


def drop_duplicate_rows(frame: pd.DataFrame, origin: str) -> tuple[pd.DataFrame, list[DataFix]]:
    """Drop rows that repeat an earlier row exactly, counted with the rows they repeat."""
    repeated = frame.duplicated(keep="first")
    if not repeated.any():
        return frame, []
    first_of = {}
    pairs = []
    for row, key in enumerate(frame.itertuples(index=False), start=1):
        if key in first_of:
            pairs.append((row, first_of[key]))
        else:
            first_of[key] = row
    shown = ", ".join(f"row {r} repeats row {f}" for r, f in pairs[:3])
    message = f"{origin}: dropped {len(pairs)} duplicate row(s) ({shown})"
    rows = tuple(r for r, _ in pairs[:_SHOWN_ROWS])
    return frame[~repeated], [DataFix("duplicate_rows", len(pairs), message, rows)]


def _positives(frame: pd.DataFrame, origin: str, required: bool) -> list[DataFix]:
    """Queries whose pairs are all label <= 0: an error when required, else a note."""
    has_positive = (frame["label"] > 0).groupby(frame["query"].values).any()
    lacking = set(has_positive[~has_positive].index)
    if not lacking:
        return []
    rows = [i + 1 for i, q in enumerate(frame["query"]) if q in lacking]
    first_query = frame["query"].iloc[rows[0] - 1]
    if required:
        raise DataValidationError(
            f"{origin}, row {rows[0]}, column 'query': query {first_query!r} has no positive pair "
            f"(label > 0); ranking metrics and ranking losses need one ({len(lacking)} such "
            "queries)"
        )
    message = (
        f"{origin}: {len(lacking)} of {len(has_positive)} queries have no positive pair (label "
        f"> 0), first at row {rows[0]}; ranking metrics and ranking losses cannot use them"
    )
    return [DataFix("no_positive", len(lacking), message, tuple(rows[:10]), False)]


def _long_texts(frame: pd.DataFrame, columns, origin: str) -> list[DataFix]:
    """Note texts so long that tokenization will cut them (nothing is changed here)."""
    fixes = []
    for column in columns:
        lengths = frame[column].str.len()
        long_rows = np.flatnonzero(lengths.to_numpy() > LONG_TEXT_CHARS) + 1
        if len(long_rows) == 0:
            continue
        longest = int(lengths.to_numpy().argmax()) + 1
        message = (
            f"{origin}, column {column!r}: {len(long_rows)} text(s) longer than "
            f"{LONG_TEXT_CHARS:,} characters (longest {int(lengths.max()):,} at row {longest}); "
            "they are cut to max_length tokens when tokenized"
        )
        rows = tuple(int(r) for r in long_rows[:_SHOWN_ROWS])
        fixes.append(DataFix("long_text", len(long_rows), message, rows, False))
    return fixes


def _as_list(value, origin: str, row: int, column: str) -> list:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise DataValidationError(
                f"{origin}, row {row}, column {column!r}: expected a list (a JSON array in "
                f"text files), got {value[:40]!r}"
            ) from err
    if isinstance(value, np.ndarray | tuple):
        value = list(value)
    if not isinstance(value, list):
        raise DataValidationError(
            f"{origin}, row {row}, column {column!r}: expected a list, got {value!r}"
        )
    return value


def _check_list_row(documents: list, labels: list, origin: str, row: int) -> None:
    if not documents:
        raise DataValidationError(
            f"{origin}, row {row}, column 'documents': expected at least one document, got []"
        )
    if len(documents) != len(labels):
        raise DataValidationError(
            f"{origin}, row {row}, columns 'documents' and 'labels': {len(documents)} documents "
            f"but {len(labels)} labels; give one label per document"
        )
    for index, document in enumerate(documents):
        if not isinstance(document, str) or not document.strip():
            raise DataValidationError(
                f"{origin}, row {row}, column 'documents', item {index}: expected non-empty "
                f"text, got {document!r}"
            )
