"""Data readers: all formats load real SciFact rows; bad data is named by file, row and column."""

from __future__ import annotations

import json

import datasets
import pandas as pd
import pytest

from workbench.data import DataValidationError, load_beir, load_pairs, load_tuples, scifact_path
from workbench.data.readers import tuples_to_pairs


@pytest.fixture(scope="module")
def real_pairs(scifact_train) -> pd.DataFrame:
    """Twenty real (claim, abstract, label) pairs: each claim's cited abstract and another one."""
    rows = []
    doc_ids = list(scifact_train.corpus)
    for i, (query_id, judged) in enumerate(list(scifact_train.qrels.items())[:10]):
        positive = next(iter(judged))
        negative = next(d for d in doc_ids[i * 7 :] if d not in judged)
        query = scifact_train.queries[query_id]
        rows.append((query, scifact_train.corpus[positive], 1))
        rows.append((query, scifact_train.corpus[negative], 0))
    return pd.DataFrame(rows, columns=["query", "passage", "label"])


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_load_pairs_reads_every_file_format(real_pairs, tmp_path, suffix):
    path = tmp_path / f"pairs{suffix}"
    if suffix == ".csv":
        real_pairs.to_csv(path, index=False)
    elif suffix == ".tsv":
        real_pairs.to_csv(path, sep="\t", index=False)
    elif suffix == ".jsonl":
        real_pairs.to_json(path, orient="records", lines=True)
    else:
        real_pairs.to_parquet(path)
    loaded = load_pairs(path)
    assert loaded.column_names == ["query", "passage", "label"]
    assert loaded["passage"] == real_pairs["passage"].tolist()
    assert loaded["label"] == [float(x) for x in real_pairs["label"]]


def test_load_pairs_reads_dataframe_dataset_and_saved_folder(real_pairs, tmp_path):
    dataset = datasets.Dataset.from_pandas(real_pairs)
    dataset.save_to_disk(str(tmp_path / "saved"))
    for source in (real_pairs, dataset, tmp_path / "saved"):
        assert len(load_pairs(source)) == len(real_pairs)


def test_column_map_renames_user_columns(real_pairs):
    renamed = real_pairs.rename(columns={"query": "claim", "passage": "abstract"})
    loaded = load_pairs(renamed, column_map={"claim": "query", "abstract": "passage"})
    assert loaded["query"][0] == real_pairs["query"][0]


def _write(df: pd.DataFrame, tmp_path):
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    return path


def test_missing_column_is_named(real_pairs, tmp_path):
    path = _write(real_pairs.drop(columns=["label"]), tmp_path)
    with pytest.raises(
        DataValidationError, match=r"bad\.csv: missing required column\(s\) \['label'\]"
    ):
        load_pairs(path)


def test_empty_text_names_row_and_column(real_pairs, tmp_path):
    bad = real_pairs.copy()
    bad.loc[3, "passage"] = "   "
    with pytest.raises(
        DataValidationError, match=r"bad\.csv, row 4, column 'passage': expected non-empty"
    ):
        load_pairs(_write(bad, tmp_path))


def test_non_numeric_label_names_row(real_pairs, tmp_path):
    bad = real_pairs.astype({"label": object})
    bad.loc[5, "label"] = "relevant"
    with pytest.raises(
        DataValidationError, match=r"row 6, column 'label': expected a number, got 'relevant'"
    ):
        load_pairs(_write(bad, tmp_path))


def test_label_out_of_range_names_row(real_pairs, tmp_path):
    bad = real_pairs.copy()
    bad.loc[0, "label"] = 3
    with pytest.raises(
        DataValidationError, match=r"row 1, column 'label': expected a value in \[0.0, 1.0\], got 3"
    ):
        load_pairs(_write(bad, tmp_path))
    assert len(load_pairs(_write(bad, tmp_path), label_range=None)) == len(bad)


def test_query_without_positive_is_refused_when_required(real_pairs, tmp_path):
    bad = real_pairs.copy()
    bad.loc[0, "label"] = 0  # the first claim's only positive
    path = _write(bad, tmp_path)
    with pytest.raises(
        DataValidationError, match=r"row 1, column 'query': query .* has no positive"
    ):
        load_pairs(path, require_positive=True)
    assert len(load_pairs(path)) == len(bad)


def test_unparseable_and_unknown_files_are_named(tmp_path):
    odd = tmp_path / "pairs.xlsx"
    odd.write_text("x")
    with pytest.raises(DataValidationError, match=r"pairs\.xlsx: unknown file type '.xlsx'"):
        load_pairs(odd)
    with pytest.raises(FileNotFoundError, match="No such data file"):
        load_pairs(tmp_path / "absent.csv")


def test_tuples_load_and_expand_to_pairs(real_pairs):
    positives = real_pairs[real_pairs.label == 1].reset_index(drop=True)
    negatives = real_pairs[real_pairs.label == 0].reset_index(drop=True)
    table = pd.DataFrame(
        {
            "query": positives["query"],
            "positive": positives["passage"],
            "negative": negatives["passage"],
        }
    )
    tuples = load_tuples(table)
    assert tuples.column_names == ["query", "positive", "negative_1"]
    pairs = tuples_to_pairs(tuples)
    assert pairs["label"][:2] == [1.0, 0.0] and len(pairs) == 2 * len(table)


def test_tuples_without_negative_column_are_refused(real_pairs):
    table = real_pairs.rename(columns={"passage": "positive"}).drop(columns=["label"])
    with pytest.raises(DataValidationError, match="at least one negative column"):
        load_tuples(table)


def test_bundled_scifact_loads_with_expected_counts(scifact_train, scifact_test):
    assert len(scifact_train.corpus) == 5183
    assert (len(scifact_train.queries), len(scifact_test.queries)) == (809, 300)
    assert sum(len(j) for j in scifact_test.qrels.values()) == 339
    assert (scifact_path() / "LICENSE").read_text().count("CC BY-NC 2.0") >= 1


def test_beir_malformed_line_names_file_and_line(tmp_path):
    source = scifact_path()
    lines = (source / "queries.jsonl").read_text().splitlines()
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text((source / "qrels" / "test.tsv").read_text())
    (tmp_path / "corpus.jsonl").write_text((source / "corpus.jsonl").read_text())
    (tmp_path / "queries.jsonl").write_text("\n".join(lines[:2] + ["{broken"] + lines[2:]))
    with pytest.raises(DataValidationError, match=r"queries\.jsonl, line 3: invalid JSON"):
        load_beir(tmp_path)
    (tmp_path / "queries.jsonl").write_text("\n".join(json.dumps({"text": "no id"}) for _ in "x"))
    with pytest.raises(DataValidationError, match=r"line 1, column '_id': missing"):
        load_beir(tmp_path)
