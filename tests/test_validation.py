"""The validation report on real WikiQA and SciFact rows: counts checked against pandas, and each
problem the report lists caught as an error or a warning."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import shared_data

from workbench.data import guess_column_roles, validate_data


@pytest.fixture(scope="module")
def wikiqa() -> pd.DataFrame:
    """The first 60 WikiQA train questions, columns renamed as people name them."""
    frame = pd.read_json(shared_data("wikiqa") / "train.jsonl", lines=True)
    keep = sorted(frame["query_id"].unique())[:60]
    frame = frame[frame["query_id"].isin(keep)]
    return frame.rename(columns={"query": "question", "passage": "sentence"})[
        ["question", "sentence", "label"]
    ].reset_index(drop=True)


def _write(frame: pd.DataFrame, path) -> str:
    frame.to_csv(path, index=False)
    return str(path)


def _kinds(report, level: str) -> set[str]:
    return {f.kind for f in report.findings if f.level == level}


def test_validate_counts_equal_pandas_counts(wikiqa, tmp_path):
    report = validate_data(_write(wikiqa, tmp_path / "train.csv"))
    positives = int((wikiqa["label"] == 1).sum())
    with_positive = wikiqa.groupby("question")["label"].max()

    assert report.ok
    assert report.data_format == "pairs"
    assert report.column_roles == {"question": "query", "sentence": "passage", "label": "label"}
    assert (report.rows_in, report.rows_out) == (len(wikiqa), len(wikiqa))
    assert report.queries == wikiqa["question"].nunique()
    assert (report.positives, report.negatives) == (positives, len(wikiqa) - positives)
    assert report.labels == {"0": len(wikiqa) - positives, "1": positives}
    assert report.queries_without_positive == int((with_positive == 0).sum())
    assert report.queries_without_positive > 0  # WikiQA has questions with no answer sentence
    assert "no_positive" in _kinds(report, "warning")


def test_validate_recommends_bce_with_the_data_ratio(wikiqa, tmp_path):
    report = validate_data(_write(wikiqa, tmp_path / "train.csv"))
    positives = int((wikiqa["label"] == 1).sum())
    best = report.losses[0]

    assert best["loss"] == "BinaryCrossEntropyLoss"
    ratio = (len(wikiqa) - positives) / positives
    assert best["settings"]["pos_weight"] == pytest.approx(ratio, rel=0.01)


def test_validate_counts_and_drops_duplicates_as_a_warning(wikiqa, tmp_path):
    doubled = pd.concat([wikiqa, wikiqa.iloc[[3, 7, 7]]], ignore_index=True)
    report = validate_data(_write(doubled, tmp_path / "train.csv"))
    finding = next(f for f in report.findings if f.kind == "duplicate_rows")

    assert report.ok
    assert finding.level == "warning"
    assert finding.count == 3
    assert report.rows_in - report.rows_out == 3
    assert finding.rows == (len(wikiqa) + 1, len(wikiqa) + 2, len(wikiqa) + 3)


def test_validate_empty_passages_are_errors_naming_every_row(wikiqa, tmp_path):
    broken = wikiqa.copy()
    broken.loc[[4, 9], "sentence"] = "  "
    report = validate_data(_write(broken, tmp_path / "train.csv"))
    finding = next(f for f in report.findings if f.kind == "empty_text")

    assert not report.ok
    assert finding.count == 2
    assert finding.rows == (5, 10)
    assert "train.csv" in finding.message and "'passage'" in finding.message


def test_validate_columns_that_fit_no_format_are_an_error(wikiqa, tmp_path):
    report = validate_data(_write(wikiqa[["question", "label"]], tmp_path / "train.csv"))

    assert not report.ok
    assert "format" in _kinds(report, "error")
    assert report.data_format is None


def test_validate_explicit_column_map_wins_over_aliases(wikiqa, tmp_path):
    swapped = wikiqa.rename(columns={"question": "a", "sentence": "b"})
    roles = guess_column_roles(list(swapped.columns), {"a": "query", "b": "passage"})
    report = validate_data(
        _write(swapped, tmp_path / "train.csv"), column_map={"a": "query", "b": "passage"}
    )

    assert roles == {"a": "query", "b": "passage", "label": "label"}
    assert report.ok and report.queries == wikiqa["question"].nunique()


def test_validate_labels_out_of_range_for_the_loss_are_errors(wikiqa, tmp_path):
    graded = wikiqa.assign(label=wikiqa["label"] * 3)
    path = _write(graded, tmp_path / "train.csv")

    assert validate_data(path).ok  # graded labels are fine for ranking losses
    report = validate_data(path, loss="BinaryCrossEntropyLoss")
    assert not report.ok
    assert "rows" in _kinds(report, "error")
    assert "label" in report.errors[0].message


def test_validate_loss_that_does_not_fit_the_format_is_an_error(wikiqa, tmp_path):
    report = validate_data(
        _write(wikiqa, tmp_path / "train.csv"), loss="MultipleNegativesRankingLoss"
    )

    assert not report.ok
    assert "loss_format" in _kinds(report, "error")
    assert "BinaryCrossEntropyLoss" in report.errors[0].message


def test_validate_leakage_counts_eval_queries_seen_in_training(wikiqa, tmp_path):
    questions = sorted(wikiqa["question"].unique())
    train = wikiqa[wikiqa["question"].isin(questions[:40])]
    # Eval: 20 unseen questions plus 5 training questions with other casing and spacing.
    leaked = wikiqa[wikiqa["question"].isin(questions[35:40])].copy()
    leaked["question"] = leaked["question"].str.upper() + "  "
    held_out = pd.concat([wikiqa[wikiqa["question"].isin(questions[40:])], leaked])
    report = validate_data(
        _write(train, tmp_path / "train.csv"), _write(held_out, tmp_path / "eval.csv")
    )

    assert report.ok
    assert report.leakage["queries"] == 5
    assert report.eval["queries"] == 25
    assert "leakage" in _kinds(report, "warning")


def test_validate_truncation_share_equals_the_tokenizers_count(scifact_train, tiny_model):
    query_id = sorted(scifact_train.queries)[:30]
    rows = [
        {"query": scifact_train.queries[q], "passage": scifact_train.corpus[d], "label": 1}
        for q in query_id
        for d in scifact_train.qrels[q]
    ]
    frame = pd.DataFrame(rows)
    report = validate_data(frame, tokenizer=tiny_model, max_length=128)
    encoded = tiny_model.tokenizer(list(frame["query"]), list(frame["passage"]))
    expected = sum(len(ids) > 128 for ids in encoded["input_ids"])

    assert report.token_lengths["pairs"] == len(frame)
    assert report.token_lengths["truncated"] == expected > 0
    assert sum(report.token_lengths["histogram"]["counts"]) == len(frame)
    assert "truncation" in {f.kind for f in report.findings}


def test_validate_missing_file_is_an_error_not_an_exception(tmp_path):
    report = validate_data(str(tmp_path / "nope.csv"))

    assert not report.ok
    assert "nope.csv" in report.errors[0].message


def test_cli_validate_exits_1_on_errors_and_prints_json(wikiqa, tmp_path):
    good = _write(wikiqa, tmp_path / "good.csv")
    bad = _write(wikiqa[["question", "label"]], tmp_path / "bad.csv")
    command = [sys.executable, "-m", "workbench", "validate", "--json", "--model", "minilm-l6"]
    passed = subprocess.run([*command, good], capture_output=True, text=True)
    failed = subprocess.run([*command, bad], capture_output=True, text=True)

    assert passed.returncode == 0, passed.stderr
    assert json.loads(passed.stdout)["rows_out"] == len(wikiqa)
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["ok"] is False
