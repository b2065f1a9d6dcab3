"""Every bad input gets a message naming file, row and column, or a counted fix; nothing is
dropped silently. Each case breaks a file of real SciFact rows written to tmp_path.
"""

from __future__ import annotations

import gzip
import json
import zipfile

import pandas as pd
import pytest

from workbench.data.readers import DataValidationError, read_lists, read_pairs
from workbench.security import UploadTooLargeError, check_upload_size


@pytest.fixture(scope="module")
def rows(scifact_train) -> pd.DataFrame:
    """Twelve real (claim, abstract, label) pairs: six claims, each with its cited abstract
    (label 1) and an abstract it does not cite (label 0)."""
    doc_ids = list(scifact_train.corpus)
    records = []
    for i, (query_id, judged) in enumerate(list(scifact_train.qrels.items())[:6]):
        query = scifact_train.queries[query_id]
        negative = next(d for d in doc_ids[i * 11 :] if d not in judged)
        records.append((query, scifact_train.corpus[next(iter(judged))], 1))
        records.append((query, scifact_train.corpus[negative], 0))
    return pd.DataFrame(records, columns=["query", "passage", "label"])


def _csv(frame: pd.DataFrame, path, **options):
    frame.to_csv(path, index=False, **options)
    return path


def _jsonl(frame: pd.DataFrame, path):
    frame.to_json(path, orient="records", lines=True, force_ascii=False)
    return path


# Each builder writes the broken file and returns (path, read_pairs options).


def empty_file(rows, tmp):
    (tmp / "pairs.csv").write_bytes(b"")
    return tmp / "pairs.csv", {}


def header_only(rows, tmp):
    return _csv(rows.iloc[:0], tmp / "pairs.csv"), {}


def missing_column(rows, tmp):
    return _csv(rows.drop(columns=["label"]), tmp / "pairs.csv"), {}


def malformed_jsonl_line(rows, tmp):
    path = _jsonl(rows, tmp / "pairs.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[4] = lines[4][: len(lines[4]) // 2]  # cut in the middle of the passage
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, {}


def out_of_range_for_bce(rows, tmp):
    bad = rows.copy()
    bad.loc[2, "label"] = 3
    return _csv(bad, tmp / "pairs.csv"), {"loss": "BinaryCrossEntropyLoss"}


def not_a_class_for_ce(rows, tmp):
    bad = rows.astype({"label": float})
    bad.loc[5, "label"] = 0.5
    return _csv(bad, tmp / "pairs.csv"), {"loss": "CrossEntropyLoss", "num_labels": 2}


def missing_label(rows, tmp):
    bad = rows.astype({"label": object})
    bad.loc[3, "label"] = None
    return _csv(bad, tmp / "pairs.csv"), {}


def non_numeric_label(rows, tmp):
    bad = rows.astype({"label": object})
    bad.loc[6, "label"] = "relevant"
    return _csv(bad, tmp / "pairs.csv"), {}


def empty_query(rows, tmp):
    bad = rows.copy()
    bad.loc[1, "query"] = ""
    return _csv(bad, tmp / "pairs.csv"), {}


def blank_passage(rows, tmp):
    bad = rows.copy()
    bad.loc[7, "passage"] = "   "
    return _csv(bad, tmp / "pairs.csv"), {}


def row_longer_than_header(rows, tmp):
    path = _csv(rows, tmp / "pairs.csv")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[3] = lines[3].rstrip("\n") + ",stray value\n"
    path.write_text("".join(lines), encoding="utf-8")
    return path, {}


def query_without_positive_required(rows, tmp):
    bad = rows.copy()
    bad.loc[0, "label"] = 0  # the first claim's only positive
    return _csv(bad, tmp / "pairs.csv"), {"require_positive": True}


def zip_with_two_files(rows, tmp):
    path = tmp / "pairs.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("train.csv", rows.to_csv(index=False))
        archive.writestr("eval.csv", rows.to_csv(index=False))
    return path, {}


ERRORS = {
    empty_file: r"pairs\.csv: the file is empty; expected a header row and data rows",
    header_only: r"pairs\.csv: has a header \(query, passage, label\) but no data rows",
    missing_column: r"pairs\.csv: missing required column\(s\) \['label'\]; got columns "
    r"\['query', 'passage'\]\. Rename them or pass column_map",
    malformed_jsonl_line: r"pairs\.jsonl, line 5: invalid JSON \(Unterminated string",
    out_of_range_for_bce: r"pairs\.csv, row 3, column 'label': BinaryCrossEntropyLoss expects a "
    r"value in \[0\.0, 1\.0\], got 3\. Rescale the labels to 0\.\.1",
    not_a_class_for_ce: r"row 6, column 'label': CrossEntropyLoss with num_labels=2 expects a "
    r"whole number in \[0, 1\], got 0\.5",
    missing_label: r"pairs\.csv, row 4, column 'label': missing label \(empty cell\); fill it in",
    non_numeric_label: r"row 7, column 'label': expected a number, got 'relevant' \(yes/no",
    empty_query: r"pairs\.csv, row 2, column 'query': expected non-empty text, got ''",
    blank_passage: r"pairs\.csv, row 8, column 'passage': expected non-empty text, got '   '",
    row_longer_than_header: r"pairs\.csv, row 3: 4 fields but the header names 3 \(extra value "
    r"'stray value'\)\. Quote fields that contain commas",
    query_without_positive_required: r"pairs\.csv, row 1, column 'query': query .* has no "
    r"positive pair \(label > 0\)",
    zip_with_two_files: r"pairs\.zip: the zip archive holds 2 files \(train\.csv, eval\.csv\); "
    r"put exactly one data file",
}


@pytest.mark.parametrize("build", list(ERRORS), ids=lambda f: f.__name__)
def test_bad_input_error_names_file_row_and_column(build, rows, tmp_path):
    path, options = build(rows, tmp_path)
    with pytest.raises(DataValidationError, match=ERRORS[build]):
        read_pairs(path, **options)


def semicolons_in_csv(rows, tmp):
    return _csv(rows, tmp / "pairs.csv", sep=";"), {}


def tabs_in_csv(rows, tmp):
    return _csv(rows, tmp / "pairs.csv", sep="\t"), {}


def index_column(rows, tmp):
    rows.to_csv(tmp / "pairs.csv", index=True)  # pandas' default: an unnamed index column
    return tmp / "pairs.csv", {}


def trailing_delimiters(rows, tmp):
    path = _csv(rows, tmp / "pairs.csv")
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("".join(line + ",\n" for line in lines), encoding="utf-8")
    return path, {}


def utf8_bom(rows, tmp):
    return _csv(rows, tmp / "pairs.csv", encoding="utf-8-sig"), {}


def windows_1252(rows, tmp):
    return _csv(rows, tmp / "pairs.csv", encoding="cp1252", errors="strict"), {}


def yes_no_labels(rows, tmp):
    words = rows.assign(label=rows["label"].map({1: "Yes", 0: "no"}))
    return _csv(words, tmp / "pairs.csv"), {}


def numbers_as_text_in_jsonl(rows, tmp):
    return _jsonl(rows.assign(label=rows["label"].map("{:.1f}".format)), tmp / "pairs.jsonl"), {}


def duplicate_rows(rows, tmp):
    return _csv(pd.concat([rows, rows.iloc[[2, 5, 9]]]), tmp / "pairs.csv"), {}


def query_without_positive(rows, tmp):
    bad = rows.copy()
    bad.loc[0, "label"] = 0
    return _csv(bad, tmp / "pairs.csv"), {}


def long_passage(rows, tmp):
    long = rows.copy()
    long.loc[4, "passage"] = " ".join(rows["passage"].tolist() * 40)[:100_000]
    return _jsonl(long, tmp / "pairs.jsonl"), {}


# The fix's kind and count; the data must come out as the twelve rows went in (duplicates gone).
FIXES = {
    semicolons_in_csv: ("delimiter", 1),
    tabs_in_csv: ("delimiter", 1),
    index_column: ("unnamed_columns", 1),
    trailing_delimiters: ("unnamed_columns", 1),
    utf8_bom: ("bom", 1),
    yes_no_labels: ("text_labels", 12),
    numbers_as_text_in_jsonl: ("text_labels", 12),
    duplicate_rows: ("duplicate_rows", 3),
    query_without_positive: ("no_positive", 1),
    long_passage: ("long_text", 1),
}


@pytest.mark.parametrize("build", list(FIXES), ids=lambda f: f.__name__)
def test_bad_input_fix_is_counted_and_data_kept(build, rows, tmp_path):
    path, options = build(rows, tmp_path)
    kind, count = FIXES[build]
    loaded = read_pairs(path, **options)
    (fix,) = [f for f in loaded.fixes if f.kind == kind]
    assert fix.count == count and fix.message.startswith(str(path))
    assert loaded.dataset["query"] == rows["query"].tolist()
    if kind != "long_text":
        assert loaded.dataset["passage"] == rows["passage"].tolist()
    if kind != "no_positive":
        assert loaded.dataset["label"] == [float(x) for x in rows["label"]]


def test_non_utf8_file_is_decoded_and_each_bad_line_counted(rows, scifact_train, tmp_path):
    # Real abstracts with dashes and curly quotes that Windows-1252 can write.
    legacy = [t for t in scifact_train.corpus.values() if _cp1252_only(t)][:3]
    frame = rows.iloc[:3].assign(passage=legacy)
    path = _csv(frame, tmp_path / "pairs.csv", encoding="cp1252")
    loaded = read_pairs(path)
    (fix,) = [f for f in loaded.fixes if f.kind == "encoding"]
    assert fix.count == 3 and fix.rows == (2, 3, 4)  # file lines; the header is line 1
    assert "not valid UTF-8 (3 line(s), first at line 2: byte 0x" in fix.message
    assert "read as Windows-1252. Check accented characters" in fix.message
    assert loaded.dataset["passage"] == legacy


def _cp1252_only(text: str) -> bool:
    try:
        text.encode("cp1252")
    except UnicodeEncodeError:
        return False
    return not text.isascii() and "\n" not in text


def test_quoted_newlines_and_tabs_survive_csv_and_tsv(rows, tmp_path):
    odd = rows.copy()
    odd.loc[2, "passage"] = odd.loc[2, "passage"].replace(". ", ".\n\t", 2)
    for sep, name in ((",", "pairs.csv"), ("\t", "pairs.tsv")):
        loaded = read_pairs(_csv(odd, tmp_path / name, sep=sep))
        assert loaded.dataset["passage"] == odd["passage"].tolist()
        assert loaded.fixes == []


@pytest.mark.parametrize("suffix", [".csv.gz", ".zip", ".jsonl.gz"])
def test_compressed_files_read_like_plain_ones(rows, tmp_path, suffix):
    path = tmp_path / f"pairs{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("pairs.csv", rows.to_csv(index=False))
    elif suffix == ".csv.gz":
        path.write_bytes(gzip.compress(rows.to_csv(index=False).encode()))
    else:
        text = rows.to_json(orient="records", lines=True, force_ascii=False)
        path.write_bytes(gzip.compress(text.encode()))
    loaded = read_pairs(path)
    assert loaded.dataset["passage"] == rows["passage"].tolist()


def test_list_lengths_that_disagree_name_the_row(rows, tmp_path):
    path = tmp_path / "lists.jsonl"
    lists = [
        {"query": q, "documents": group["passage"].tolist(), "labels": group["label"].tolist()}
        for q, group in rows.groupby("query", sort=False)
    ]
    lists[2]["labels"] = lists[2]["labels"][:1]
    path.write_text("".join(json.dumps(r) + "\n" for r in lists), encoding="utf-8")
    with pytest.raises(
        DataValidationError,
        match=r"lists\.jsonl, row 3, columns 'documents' and 'labels': 2 documents but 1 labels;"
        r" give one label per document",
    ):
        read_lists(path)
    lists[2]["labels"] = ["yes", "no"]
    path.write_text("".join(json.dumps(r) + "\n" for r in lists), encoding="utf-8")
    loaded = read_lists(path)
    assert loaded.dataset["labels"][2] == [1.0, 0.0]
    assert [f.kind for f in loaded.fixes] == ["text_labels"]


def test_long_passage_is_truncated_at_tokenization(rows, tmp_path, tiny_model):
    path, _ = long_passage(rows, tmp_path)
    pairs = read_pairs(path).dataset
    assert len(pairs["passage"][4]) == 100_000
    features = tiny_model.tokenize([(pairs["query"][4], pairs["passage"][4])])
    assert features["input_ids"].shape == (1, tiny_model.max_length)
    assert tiny_model.predict([(pairs["query"][4], pairs["passage"][4])]).shape == (1,)


def test_upload_over_the_cap_is_refused_before_reading(rows, tmp_path):
    path = _csv(rows, tmp_path / "pairs.csv")
    size = path.stat().st_size
    assert check_upload_size(path, max_bytes=size) == size
    with pytest.raises(
        UploadTooLargeError,
        match=rf"pairs\.csv is {size / 1024:.0f} KB, over the 10 KB upload limit\. "
        "Upload a smaller",
    ):
        check_upload_size(path, max_bytes=10 * 1024)
