"""The main job on your own files: labelled rows (pairs, tuples or lists) become training rows,
and eval rows become queries with judged candidates ordered by a BM25 first stage.

Used by `workbench train --train-file ...` and by the dashboard, which writes its uploads in
role columns (`query`, `passage`, `label`, ...) before launching a run.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import datasets
import pandas as pd

from workbench.data import load_pairs, load_tuples, read_table
from workbench.data.readers import DataValidationError
from workbench.losses import detect_format
from workbench.losses.base import negative_columns
from workbench.retrieval import BM25Retriever, sort_run

logger = logging.getLogger(__name__)


@dataclass
class JudgedQueries:
    """Eval rows grouped per query.

    Attributes:
        queries: Query id -> text.
        corpus: Doc id -> text, every candidate of every query.
        qrels: Query id -> {doc id: grade}; every candidate is judged (0 = not relevant).
    """

    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_rows(source) -> datasets.Dataset:
    """Read training or eval rows in one of the loss formats, checked by the data readers.

    Args:
        source: A file or folder `workbench.data.read_table` reads, already in role columns.

    Returns:
        Pairs (`query`, `passage`, `label`), tuples (`query`, `positive`, `negative_1..n`) or
        lists (`query`, `documents`, `labels`).

    Raises:
        DataValidationError: If the columns fit no format, or a row breaks a reader's rule.
    """
    table, origin = read_table(source)
    data_format = detect_format(list(table.columns))
    if data_format == "pairs":
        # The loss checks the label range it needs; graded labels are fine here.
        return load_pairs(source, label_range=None)
    if data_format == "tuples":
        if negative_columns(table.columns):
            return load_tuples(source)
        return _positives_only(table, origin)
    if data_format == "lists":
        return _load_lists(table, origin)
    raise DataValidationError(
        f"{origin}: expected pairs (query, passage, label), tuples (query, positive, "
        f"negative_1..n) or lists (query, documents, labels), got columns {list(table.columns)!r}"
    )


def split_by_query(
    rows: datasets.Dataset, count: int, *, seed: int = 12
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Hold out `count` queries (all their rows) from `rows`, chosen at random with `seed`.

    Returns:
        (train rows, held-out rows), both in the input's order.

    Raises:
        ValueError: If `count` is not between 1 and the number of queries minus one.
    """
    queries = sorted(set(rows["query"]))
    if not 1 <= count < len(queries):
        raise ValueError(
            f"Holding out queries expects a count from 1 to {len(queries) - 1} (the data has "
            f"{len(queries)} queries), but got {count!r}. Lower the count or add queries."
        )
    random.Random(seed).shuffle(queries)
    held = set(queries[:count])
    keep = [i for i, q in enumerate(rows["query"]) if q not in held]
    out = [i for i, q in enumerate(rows["query"]) if q in held]
    return rows.select(keep), rows.select(out)


def judged_queries(rows: datasets.Dataset) -> JudgedQueries:
    """Group eval rows per query; each row's passages become that query's judged candidates.

    Grades: 0/1 labels (or soft labels in [0, 1]) count as relevant from 0.5; larger labels are
    graded relevance (rounded); a tuple's positive is 1 and its negatives 0.
    """
    judged = list(_judged_rows(rows))
    labels = [label for _, _, label in judged]
    graded = bool(labels) and max(labels) > 1.0

    queries, corpus, qrels = {}, {}, {}
    query_ids, doc_ids = {}, {}
    for query, passage, label in judged:
        query_id = query_ids.setdefault(query, f"q{len(query_ids) + 1}")
        doc_id = doc_ids.setdefault(passage, f"d{len(doc_ids) + 1}")
        queries[query_id] = query
        corpus[doc_id] = passage
        grade = max(0, round(label)) if graded else int(label >= 0.5)
        # A passage listed twice for a query keeps its highest grade.
        grades = qrels.setdefault(query_id, {})
        grades[doc_id] = max(grade, grades.get(doc_id, 0))
    return JudgedQueries(queries, corpus, qrels)


def first_stage_runs(judged: JudgedQueries) -> dict[str, list[tuple[str, float]]]:
    """Order each query's candidates by BM25 over the pool of all eval passages.

    The file gives the candidates; BM25 gives the first-stage order (a file's own row order
    often lists positives first, which would flatter the first stage).
    """
    bm25 = BM25Retriever(judged.corpus)
    ids = list(judged.queries)
    texts = [judged.queries[q] for q in ids]
    hits = bm25.search(texts, top_k=len(judged.corpus))
    runs = {}
    for query_id, query_hits in zip(ids, hits, strict=True):
        scores = dict(query_hits)
        candidates = judged.qrels[query_id]
        runs[query_id] = sort_run([(doc, scores.get(doc, 0.0)) for doc in candidates])
    return runs


def _judged_rows(rows: datasets.Dataset):
    """(query, passage, label) for every passage of every row."""
    columns = rows.column_names
    data_format = detect_format(columns)
    for row in rows:
        if data_format == "pairs":
            yield row["query"], row["passage"], float(row["label"])
        elif data_format == "tuples":
            yield row["query"], row["positive"], 1.0
            for column in negative_columns(columns):
                yield row["query"], row[column], 0.0
        else:
            for document, label in zip(row["documents"], row["labels"], strict=True):
                yield row["query"], document, float(label)


def _positives_only(table: pd.DataFrame, origin: str) -> datasets.Dataset:
    """(query, positive) rows for in-batch losses, which take other rows' positives as negatives."""
    frame = table[["query", "positive"]].astype(str)
    for column in frame.columns:
        empty = frame.index[frame[column].str.strip() == ""]
        if len(empty):
            raise DataValidationError(
                f"{origin}, row {empty[0] + 1}, column {column!r}: expected non-empty text, got ''"
            )
    return datasets.Dataset.from_pandas(frame, preserve_index=False)


def _load_lists(table: pd.DataFrame, origin: str) -> datasets.Dataset:
    pairs = zip(table["documents"], table["labels"], strict=True)
    for row, (documents, labels) in enumerate(pairs, start=1):
        # JSON gives lists, Parquet numpy arrays; a string is not a list of documents.
        if not all(hasattr(v, "__len__") and not isinstance(v, str) for v in (documents, labels)):
            raise DataValidationError(
                f"{origin}, row {row}, columns 'documents'/'labels': expected two lists, got "
                f"{type(documents).__name__} and {type(labels).__name__}"
            )
        if len(documents) != len(labels) or not documents:
            raise DataValidationError(
                f"{origin}, row {row}, columns 'documents'/'labels': expected non-empty lists of "
                f"equal length, got {len(documents)} documents and {len(labels)} labels"
            )
    frame = pd.DataFrame(
        {
            "query": table["query"].astype(str),
            "documents": [[str(d) for d in docs] for docs in table["documents"]],
            "labels": [[float(y) for y in labels] for labels in table["labels"]],
        }
    )
    return datasets.Dataset.from_pandas(frame, preserve_index=False)


def write_rows(rows: datasets.Dataset | pd.DataFrame, path: str | Path) -> Path:
    """Write rows as JSON lines (lists stay lists), the format the job reads back."""
    frame = rows.to_pandas() if isinstance(rows, datasets.Dataset) else rows
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
    tmp.replace(path)
    return path
