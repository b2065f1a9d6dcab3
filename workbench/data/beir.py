"""BEIR folders: corpus.jsonl, queries.jsonl and qrels/<split>.tsv."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from workbench.data.readers import DataValidationError

logger = logging.getLogger(__name__)


@dataclass
class BeirData:
    """A BEIR split held in memory.

    Attributes:
        corpus: Doc id -> text (title and body joined by a space).
        queries: Query id -> text, only the queries judged in this split.
        qrels: Query id -> {doc id: grade}.
    """

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def scifact_path() -> Path:
    """The bundled SciFact sample (CC BY-NC 2.0, non-commercial; see its LICENSE)."""
    return Path(__file__).resolve().parent.parent / "samples" / "scifact"


def load_beir(folder: str | Path, split: str = "test") -> BeirData:
    """Load one split of a BEIR folder.

    Args:
        folder: Holds `corpus.jsonl`, `queries.jsonl` and `qrels/<split>.tsv`.
        split: The qrels file to read.

    Returns:
        Corpus, the split's queries, and its judgments.

    Raises:
        FileNotFoundError: If a required file is missing.
        DataValidationError: If a line is malformed or a judged query has no text.
    """
    folder = Path(folder)
    corpus = {
        doc["_id"]: f"{doc.get('title', '')} {doc.get('text', '')}".strip()
        for doc in _read_jsonl(folder / "corpus.jsonl", ("_id", "text"))
    }
    all_queries = {q["_id"]: q["text"] for q in _read_jsonl(folder / "queries.jsonl", ("_id",))}
    qrels = _read_qrels(folder / "qrels" / f"{split}.tsv")

    missing = [q for q in qrels if q not in all_queries]
    if missing:
        raise DataValidationError(
            f"{folder / 'qrels' / f'{split}.tsv'}: query ids {missing[:5]!r} have no text in "
            "queries.jsonl"
        )
    queries = {q: all_queries[q] for q in qrels}
    logger.info("Loaded %s/%s: %d docs, %d queries", folder.name, split, len(corpus), len(queries))
    return BeirData(corpus, queries, qrels)


def load_run(path: str | Path) -> dict[str, list[tuple[str, float]]]:
    """Read a first-stage run: query id -> [(doc id, score)], in file order.

    Two layouts are read: a TSV with the header `query-id corpus-id rank score` (as in the
    shared TREC DL 2019 folder), or a TREC run file (`qid Q0 docid rank score tag`, no header).

    Raises:
        FileNotFoundError: If the file is missing.
        DataValidationError: If a line has too few fields or a score is not a number.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    header = bool(lines) and lines[0].split("\t")[:2] == ["query-id", "corpus-id"]
    # Columns of query id, doc id and score in each layout.
    fields, columns = (4, (0, 1, 3)) if header else (6, (0, 2, 4))
    run: dict[str, list[tuple[str, float]]] = {}
    for line_no, line in enumerate(lines[1:] if header else lines, start=2 if header else 1):
        parts = line.split("\t") if header else line.split()
        if not parts:
            continue
        if len(parts) < fields:
            raise DataValidationError(
                f"{path}, line {line_no}: expected {fields} fields, got {len(parts)} ({line!r})"
            )
        query_id, doc_id, score = (parts[i] for i in columns)
        try:
            run.setdefault(query_id, []).append((doc_id, float(score)))
        except ValueError as err:
            raise DataValidationError(
                f"{path}, line {line_no}, column 'score': expected a number, got {score!r}"
            ) from err
    return run


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataValidationError(f"{path}, line {line_no}: invalid JSON ({err})") from err
            for column in required:
                if column not in row:
                    raise DataValidationError(
                        f"{path}, line {line_no}, column {column!r}: missing required field"
                    )
            row["_id"] = str(row["_id"])
            rows.append(row)
    return rows


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    expected = ["query-id", "corpus-id", "score"]
    if list(table.columns[:3]) != expected:
        raise DataValidationError(
            f"{path}: expected a header {expected!r}, got {list(table.columns)!r}"
        )
    qrels: dict[str, dict[str, int]] = {}
    for row, (query_id, doc_id, score) in enumerate(table[expected].itertuples(index=False), 1):
        try:
            grade = int(float(score))
        except ValueError as err:
            raise DataValidationError(
                f"{path}, row {row}, column 'score': expected an integer grade, got {score!r}"
            ) from err
        qrels.setdefault(query_id, {})[doc_id] = grade
    return qrels
