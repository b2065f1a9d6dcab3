"""The validation report: what is in a training (and eval) file and what is wrong with it,
before an hour of GPU time goes into it. The dashboard's Data tab and `workbench validate` both
call `validate_data`.

Errors block training (a missing column, an empty text, a label the loss cannot take); warnings
do not (duplicates dropped, queries without a positive, train queries that reappear in eval,
pairs cut at `max_length`). Nothing the readers drop or change goes uncounted: every `DataFix`
they return is a finding here.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import datasets
import numpy as np
import pandas as pd

from workbench.data.fixes import DataFix, DataValidationError
from workbench.data.readers import (
    LoadedData,
    drop_duplicate_rows,
    read_lists,
    read_pairs,
    read_table,
    read_tuples,
)
from workbench.losses import detect_format, recommend_losses

logger = logging.getLogger(__name__)

# Column names people use for each role, matched case-insensitively; an explicit column map wins.
ROLE_ALIASES = {
    "query": ("query", "question", "anchor", "claim", "q", "search_query"),
    "passage": ("passage", "text", "document", "doc", "answer", "sentence", "context", "body"),
    "label": ("label", "score", "relevance", "relevant", "grade", "target", "is_relevant"),
    "positive": ("positive", "pos", "positive_passage"),
    "negative": ("negative", "neg", "negative_passage"),
    "documents": ("documents", "docs", "passages", "candidates"),
    "labels": ("labels", "scores", "grades"),
}
_NEGATIVE = re.compile(r"^negative_\d+$")
# Notes that change nothing but still deserve a user's eye.
_WARNING_NOTES = ("no_positive", "conflicting_labels")
# Pairs tokenized for the length histogram; more are sampled down (seeded).
DEFAULT_LENGTH_SAMPLE = 5000
_EXAMPLES = 5


@dataclass(frozen=True)
class Finding:
    """One thing the report says: an error (blocks training), a warning or a note.

    Attributes:
        level: `"error"`, `"warning"` or `"info"`.
        kind: A stable key, e.g. `missing_column`, `duplicate_rows`, `leakage`, `truncation`.
        message: One sentence naming the file, rows and column where they apply.
        count: How many rows, queries or pairs it concerns.
        rows: The first rows concerned (1-based, header not counted).
    """

    level: str
    kind: str
    message: str
    count: int = 0
    rows: tuple[int, ...] = ()


@dataclass
class ValidationReport:
    """What `validate_data` found. `ok` is False when any finding is an error.

    Attributes:
        origin: The training file (or "DataFrame" / "Dataset").
        data_format: `pairs`, `tuples` or `lists`; None when the columns fit no format.
        column_roles: Source column -> role, after the explicit map and the aliases.
        rows_in: Rows read from the file.
        rows_out: Rows kept (after dropping duplicates), 0 when an error stopped the read.
        queries: Distinct queries kept.
        labels: Label value -> count, over every (query, passage) pair.
        positives: Pairs with a positive label (tuples: the positive column).
        negatives: The other pairs.
        queries_without_positive: Queries none of whose pairs is positive.
        token_lengths: Histogram and truncation share of (query, passage) pairs at `max_length`.
        eval: Rows, queries and format of the eval file, when one was given.
        leakage: Queries found in both train and eval (normalised text), with examples.
        losses: The losses that fit, best first, with settings (`recommend_losses`).
        findings: Errors, warnings and notes, in the order they arose.
    """

    origin: str
    data_format: str | None = None
    column_roles: dict[str, str] = field(default_factory=dict)
    rows_in: int = 0
    rows_out: int = 0
    queries: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    positives: int = 0
    negatives: int = 0
    queries_without_positive: int = 0
    token_lengths: dict = field(default_factory=dict)
    eval: dict | None = None
    leakage: dict | None = None
    losses: list[dict] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no finding is an error: training may start."""
        return not self.errors

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    def to_dict(self) -> dict:
        """JSON-ready: every field plus `ok`."""
        return asdict(self) | {"ok": self.ok}

    def to_markdown(self) -> str:
        """The report for people: verdict, counts, findings, lengths and losses."""
        verdict = "ready to train" if self.ok else f"{len(self.errors)} error(s) block training"
        lines = [f"## Data validation: `{self.origin}`: {verdict}", ""]
        roles = ", ".join(f"{c} → {r}" for c, r in self.column_roles.items()) or "none"
        lines += [
            "| | |",
            "|---|---|",
            f"| format | {self.data_format or 'unknown'} |",
            f"| column roles | {roles} |",
            f"| rows in / kept | {self.rows_in} / {self.rows_out} |",
            f"| queries | {self.queries} |",
            f"| positive : negative pairs | {self.positives} : {self.negatives}"
            + (f" (1 : {self.negatives / self.positives:.1f})" if self.positives else "")
            + " |",
            f"| queries without a positive (label ≥ 0.5, graded > 0) | "
            f"{self.queries_without_positive} |",
        ]
        if self.labels:
            lines.append(
                "| labels | " + ", ".join(f"{k}: {v}" for k, v in self.labels.items()) + " |"
            )
        if self.eval:
            lines.append(
                f"| eval | {self.eval['origin']}: {self.eval['rows']} rows, "
                f"{self.eval['queries']} queries |"
            )
        if self.leakage is not None:
            lines.append(f"| queries in both train and eval | {self.leakage['queries']} |")
        if self.token_lengths:
            t = self.token_lengths
            lines.append(
                f"| pairs cut at {t['max_length']} tokens | {t['truncated']} of {t['pairs']} "
                f"({t['truncated_share']:.1%}{', sampled' if t['sampled'] else ''}) |"
            )
        for level in ("error", "warning", "info"):
            found = [f for f in self.findings if f.level == level]
            if found:
                lines += ["", f"**{level.capitalize()}s**", ""]
                lines += [f"- {f.message}" for f in found]
        if self.token_lengths:
            t = self.token_lengths
            lines += ["", "Token lengths of (query, passage) pairs:", ""]
            lines += ["| tokens | pairs |", "|---|---|"]
            edges, counts = t["histogram"]["edges"], t["histogram"]["counts"]
            for low, high, count in zip(edges[:-1], edges[1:], counts, strict=True):
                lines.append(f"| {low}-{high - 1} | {count} |")
            lines.append(f"| over {t['max_length']} (cut) | {t['truncated']} |")
        if self.losses:
            lines += ["", "Losses that fit (best first):", ""]
            for item in self.losses:
                settings = ", ".join(f"{k}={v}" for k, v in item["settings"].items())
                lines.append(
                    f"- `{item['loss']}`" + (f" ({settings})" if settings else "")
                    + f": {item['reason']}"
                )  # fmt: skip
        return "\n".join(lines) + "\n"


def guess_column_roles(columns, column_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """Map source columns to roles: the explicit map first, then the usual names.

    Args:
        columns: The file's column names.
        column_map: Source column -> role, e.g. `{"question": "query"}`; it always wins.

    Returns:
        Source column -> role, only for columns that get one; columns already named for
        their role map to themselves. `negative_<i>` columns keep their names.
    """
    roles = dict(column_map or {})
    taken = set(roles.values())
    for role, aliases in ROLE_ALIASES.items():
        if role in taken:
            continue
        # The earliest alias wins: with both `label` and `score`, `label` is the label.
        found = [c for c in columns if c not in roles and str(c).strip().lower() in aliases]
        if found:
            column = min(found, key=lambda c: aliases.index(str(c).strip().lower()))
            roles[column] = role
            taken.add(role)
    for column in columns:
        if column not in roles and _NEGATIVE.match(str(column)):
            roles[column] = str(column)
    return roles


def validate_data(
    train,
    eval_data=None,
    *,
    column_map: Mapping[str, str] | None = None,
    loss: str | None = None,
    tokenizer=None,
    max_length: int = 256,
    length_sample: int = DEFAULT_LENGTH_SAMPLE,
    seed: int = 12,
) -> ValidationReport:
    """Check training data (and eval data) and describe it, without raising on bad data.

    Args:
        train: A file path, saved-dataset folder, DataFrame or `datasets.Dataset`.
        eval_data: Optional eval data in the same forms; checked the same way, and its
            queries compared with the training queries (leakage).
        column_map: Source column -> role (`query`, `passage`, `label`, `positive`,
            `negative`, `documents`, `labels`); unmapped columns with the usual names
            (`question`, `text`, `score`, ...) are mapped too.
        loss: The loss you plan to use (class name); an error if it does not fit the data or
            its labels.
        tokenizer: A tokenizer, a model (anything with `.tokenizer`), a model name or folder;
            None skips the token-length histogram.
        max_length: The model's token limit: pairs longer than this are cut in training.
        length_sample: At most this many pairs are tokenized (seeded sample).
        seed: Seeds the sample.

    Returns:
        The report; `report.ok` says whether training may start.
    """
    report, loaded = _check_one(train, column_map, loss)
    if loaded is not None:
        report.losses = recommend_losses(loaded.dataset)
        if loss is not None and loss not in {item["loss"] for item in report.losses}:
            fitting = ", ".join(item["loss"] for item in report.losses) or "none"
            report.findings.append(
                Finding(
                    "error",
                    "loss_format",
                    f"{report.origin}: {loss} does not train on {report.data_format} "
                    f"(columns {list(loaded.dataset.column_names)!r}); losses that fit: "
                    f"{fitting}.",
                )
            )
        if tokenizer is not None:
            report.token_lengths = _token_lengths(
                loaded.dataset, _tokenizer(tokenizer), max_length, length_sample, seed
            )
            _truncation_finding(report)
    if eval_data is not None:
        eval_report, eval_loaded = _check_one(eval_data, column_map, None)
        report.eval = {
            "origin": eval_report.origin,
            "format": eval_report.data_format,
            "rows": eval_report.rows_out,
            "queries": eval_report.queries,
            "queries_without_positive": eval_report.queries_without_positive,
        }
        report.findings += [
            Finding(f.level, f.kind, f.message, f.count, f.rows) for f in eval_report.findings
        ]
        if loaded is not None and eval_loaded is not None:
            report.leakage = _leakage(loaded.dataset, eval_loaded.dataset)
            if report.leakage["queries"]:
                report.findings.append(
                    Finding(
                        "warning",
                        "leakage",
                        f"{report.leakage['queries']} eval queries of {eval_report.origin} "
                        f"also appear in {report.origin} (e.g. "
                        f"{report.leakage['examples'][0]!r}): eval scores will be optimistic.",
                        report.leakage["queries"],
                    )
                )
    return report


def _check_one(source, column_map, loss) -> tuple[ValidationReport, object]:
    """Read one source with the readers; every failure and fix becomes a finding."""
    try:
        table, origin = read_table(source)
    except (DataValidationError, FileNotFoundError, OSError) as err:
        origin = source if isinstance(source, str) else type(source).__name__
        return ValidationReport(str(origin), findings=[Finding("error", "read", str(err))]), None

    report = ValidationReport(origin, rows_in=len(table))
    # The reader repeats the file's fixes (encoding, delimiter, ...) when it succeeds.
    file_findings = [_from_fix(fix) for fix in table.attrs.get("fixes", [])]
    roles = guess_column_roles(list(table.columns), column_map)
    report.column_roles = {str(c): r for c, r in roles.items()}
    # One column per role: a column named like a role that the map gave to another is unused.
    frame = pd.DataFrame({role: table[column] for column, role in roles.items()})
    report.data_format = detect_format(list(frame.columns))
    if report.data_format is None:
        report.findings += file_findings
        report.findings.append(
            Finding(
                "error",
                "format",
                f"{origin}: columns {list(table.columns)!r} fit no format: map them to pairs "
                "(query, passage, label), tuples (query, positive[, negative_1..n]) or lists "
                "(query, documents, labels).",
            )
        )
        return report, None
    empty = _empty_cells(frame, report.data_format, origin)
    if empty:
        report.findings += file_findings + empty
        return report, None

    unused = [str(c) for c in table.columns if c not in roles]
    # The readers rename to roles themselves; an unused column named like a role moves aside.
    reader_map = {c: r for c, r in roles.items() if c != r}
    reader_map |= {c: f"{c} (unused)" for c in unused if c in ROLE_ALIASES}
    try:
        loaded = _read(source, frame, report.data_format, loss, reader_map)
    except DataValidationError as err:
        report.findings += file_findings + [Finding("error", "rows", str(err))]
        return report, None
    report.findings += [_from_fix(fix) for fix in loaded.fixes]
    if unused:
        report.findings.append(
            Finding(
                "info", "unused_columns", f"{origin}: columns not used: {unused!r}", len(unused)
            )
        )
    _describe(report, loaded.dataset)
    return report, loaded


def _read(source, frame: pd.DataFrame, data_format: str, loss, column_map: dict):
    """Read `source` with the reader of its format (so fixes name the file and its rows)."""
    if data_format == "pairs":
        if loss in ("BinaryCrossEntropyLoss", "CrossEntropyLoss", "MSELoss"):
            return read_pairs(source, column_map=column_map, loss=loss)
        return read_pairs(source, column_map=column_map, label_range=None)
    if data_format == "lists":
        return read_lists(source, column_map=column_map)
    if any(_NEGATIVE.match(c) or c == "negative" for c in frame.columns):
        return read_tuples(source, column_map=column_map)
    # (query, positive) rows only: in-batch losses take other rows' positives as negatives.
    deduplicated, fixes = drop_duplicate_rows(frame[["query", "positive"]].astype(str), "DataFrame")
    dataset = datasets.Dataset.from_pandas(deduplicated.reset_index(drop=True))
    return LoadedData(dataset, "DataFrame", fixes)


def _empty_cells(frame: pd.DataFrame, data_format: str, origin: str) -> list[Finding]:
    """Every empty text cell of the role columns, counted per column (the readers stop at the
    first one)."""
    text_columns = {
        "pairs": ["query", "passage"],
        "tuples": ["query", "positive"] + [c for c in frame.columns if str(c).startswith("neg")],
        "lists": ["query"],
    }[data_format]
    findings = []
    for column in text_columns:
        values = frame[column]
        empty = values.isna() | values.astype(str).str.strip().eq("")
        if empty.any():
            rows = tuple(int(i) + 1 for i in np.flatnonzero(empty.to_numpy())[:10])
            findings.append(
                Finding(
                    "error",
                    "empty_text",
                    f"{origin}, column {column!r}: {int(empty.sum())} empty value(s), rows "
                    f"{', '.join(map(str, rows))}{' ...' if empty.sum() > len(rows) else ''}. "
                    "Fill them in or delete those rows.",
                    int(empty.sum()),
                    rows,
                )
            )
    return findings


def _from_fix(fix: DataFix) -> Finding:
    level = "warning" if fix.changed or fix.kind in _WARNING_NOTES else "info"
    return Finding(level, fix.kind, fix.message, fix.count, fix.rows)


def _describe(report: ValidationReport, dataset) -> None:
    """Counts of rows, queries, labels and positives."""
    report.rows_out = len(dataset)
    queries = dataset["query"]
    report.queries = len(set(queries))
    if report.data_format == "pairs":
        labels = np.asarray(dataset["label"], dtype=float)
        report.labels = _label_counts(labels)
        positive = _is_positive(labels, _graded(labels))
        report.positives, report.negatives = int(positive.sum()), int((~positive).sum())
        has = {q for q, p in zip(queries, positive, strict=True) if p}
    elif report.data_format == "lists":
        flat = np.asarray([y for row in dataset["labels"] for y in row], dtype=float)
        report.labels = _label_counts(flat)
        graded = _graded(flat)
        report.positives = int(_is_positive(flat, graded).sum())
        report.negatives = len(flat) - report.positives
        has = {
            q
            for q, ys in zip(queries, dataset["labels"], strict=True)
            if _is_positive(np.asarray(ys, dtype=float), graded).any()
        }
    else:
        negatives = [c for c in dataset.column_names if _NEGATIVE.match(c)]
        report.positives, report.negatives = len(dataset), len(dataset) * len(negatives)
        report.labels = {"1": report.positives, "0": report.negatives}
        has = set(queries)
    report.queries_without_positive = report.queries - len(has)


def _graded(labels: np.ndarray) -> bool:
    """Labels above 1 are relevance grades (TREC 0-3); otherwise binary or soft 0..1."""
    return bool(labels.size and labels.max() > 1)


def _is_positive(labels: np.ndarray, graded: bool) -> np.ndarray:
    """Positive as the job judges it: from 0.5 for 0..1 labels, above 0 for grades."""
    return labels > 0 if graded else labels >= 0.5


def _label_counts(labels: np.ndarray) -> dict[str, int]:
    counts = Counter(f"{v:g}" for v in labels.tolist())
    if len(counts) > 12:  # soft labels: a histogram instead of every value
        hist, edges = np.histogram(labels, bins=10)
        return {
            f"{lo:.2g}..{hi:.2g}": int(c)
            for lo, hi, c in zip(edges[:-1], edges[1:], hist, strict=True)
        }
    return dict(sorted(counts.items(), key=lambda kv: float(kv[0])))


def _pair_texts(dataset) -> list[tuple[str, str]]:
    columns = dataset.column_names
    pairs = []
    for row in dataset:
        for column in columns:
            if column == "query" or column in ("label", "labels"):
                continue
            value = row[column]
            for text in value if isinstance(value, list) else [value]:
                if isinstance(text, str):
                    pairs.append((row["query"], text))
    return pairs


def _token_lengths(dataset, tokenizer, max_length: int, sample: int, seed: int) -> dict:
    """Histogram of (query, passage) token lengths and the share longer than `max_length`."""
    pairs = _pair_texts(dataset)
    sampled = len(pairs) > sample
    if sampled:
        chosen = np.random.default_rng(seed).choice(len(pairs), size=sample, replace=False)
        pairs = [pairs[i] for i in sorted(chosen)]
    lengths = np.zeros(len(pairs), dtype=np.int64)
    for start in range(0, len(pairs), 512):
        chunk = pairs[start : start + 512]
        # One token past the limit tells a cut pair from one that fits exactly.
        encoded = tokenizer(
            [q for q, _ in chunk],
            [p for _, p in chunk],
            truncation="longest_first",
            max_length=max_length + 1,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        lengths[start : start + len(chunk)] = [len(ids) for ids in encoded["input_ids"]]
    truncated = int((lengths > max_length).sum())
    edges = np.linspace(0, max_length, 9).astype(int).tolist()
    edges[-1] = max_length + 1
    counts, _ = np.histogram(np.minimum(lengths, max_length), bins=edges)
    return {
        "max_length": max_length,
        "pairs": len(pairs),
        "sampled": sampled,
        "truncated": truncated,
        "truncated_share": truncated / max(len(pairs), 1),
        "median": float(np.median(lengths)) if len(pairs) else 0.0,
        "histogram": {"edges": edges, "counts": [int(c) for c in counts]},
    }


def _truncation_finding(report: ValidationReport) -> None:
    t = report.token_lengths
    if t["truncated"]:
        level = "warning" if t["truncated_share"] >= 0.2 else "info"
        report.findings.append(
            Finding(
                level,
                "truncation",
                f"{report.origin}: {t['truncated_share']:.1%} of (query, passage) pairs are "
                f"longer than max_length={t['max_length']} tokens and will be cut; raise "
                "max_length (slower) if the relevant part may come late in a passage.",
                t["truncated"],
            )
        )


def _tokenizer(value):
    if hasattr(value, "tokenizer"):
        return value.tokenizer
    if not isinstance(value, str):
        return value
    from transformers import AutoTokenizer

    from workbench import embedded

    path = embedded.resolve(value)[0] if value in embedded.EMBEDDED_MODELS else value
    return AutoTokenizer.from_pretrained(path)


def _normalise(text: str) -> str:
    return " ".join(str(text).lower().split())


def _leakage(train, eval_rows) -> dict:
    train_queries = {_normalise(q) for q in train["query"]}
    shared = []
    for query in dict.fromkeys(eval_rows["query"]):
        if _normalise(query) in train_queries:
            shared.append(query)
    return {"queries": len(shared), "examples": shared[:_EXAMPLES]}
