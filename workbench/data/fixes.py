"""What data readers report: an error that stops a load, and the fixes they count."""

from __future__ import annotations

from dataclasses import dataclass


class DataValidationError(ValueError):
    """Training or evaluation data broke a rule; the message names file, row and column."""


@dataclass(frozen=True)
class DataFix:
    """One change a reader made to the data, or one thing it noticed, counted for the report.

    Nothing is dropped or rewritten without a `DataFix`; the validation report shows them.

    Attributes:
        kind: A stable key: `bom`, `encoding`, `delimiter`, `unnamed_columns`, `json_lines`,
            `text_labels`, `duplicate_rows`, `conflicting_labels`, `no_positive`, `long_text`.
        count: How many rows, cells, lines or columns it concerns.
        message: One sentence for people, naming the file, rows and column.
        rows: The first rows concerned (1-based, header not counted), at most ten.
        changed: True when the data was changed (a fix); False for a note that changed nothing.
    """

    kind: str
    count: int
    message: str
    rows: tuple[int, ...] = ()
    changed: bool = True
