"""Hard-negative mining: options change the output as documented, counts are exact on a small
hand-checked SciFact corpus, the embedding cache is hit, the false-negative screen flags planted
cases, and dense mining picks the negatives sentence-transformers picks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import shared_data

from workbench.data import DataValidationError
from workbench.embeddings import DenseEmbedder
from workbench.mining import FalseNegativeScreen, mine_hard_negatives
from workbench.retrieval import BM25Retriever

# Fourteen real SciFact abstracts: the cited abstracts of train claims 4, 12 and 14 and the
# best BM25 matches of those claims in the full corpus. On this corpus BM25 ranks (scores
# rounded; * marks the claim's positive):
#   claim 4:  10958594 3.199, 1387104 3.189, 5641851 3.184, 24980622 2.926, *22942787 2.316,
#             33409100 0.127, 6421792 0.119, ...
#   claim 12: 11705328 8.580, *33409100 7.311, 43557480 5.152, 23377475 4.629, 6421792 1.214,
#             1373287 0.438, ...
#   claim 14: 1373287 1.960, 10548391 1.158, 6421792 1.148, 393001 1.086, *641786 0.687,
#             then nothing shares a term with the claim (score 0).
HAND_DOCS = [
    "10548391", "10958594", "11705328", "1373287", "1387104", "22942787", "23377475",
    "24980622", "33409100", "393001", "43557480", "5641851", "641786", "6421792",
]  # fmt: skip
HAND_CLAIMS = ["4", "12", "14"]
TUPLE_COLUMNS = ["query", "positive", "negative_1", "negative_2", "negative_3"]


@pytest.fixture(scope="module")
def hand(scifact_train):
    corpus = {d: scifact_train.corpus[d] for d in HAND_DOCS}
    rows = [
        (scifact_train.queries[q], scifact_train.corpus[d])
        for q in HAND_CLAIMS
        for d in scifact_train.qrels[q]
    ]
    return pd.DataFrame(rows, columns=["query", "positive"]), corpus


@pytest.fixture(scope="module")
def scifact_slice(scifact_train):
    """The first 40 train claims with their cited abstracts, over the full 5,183 abstracts."""
    rows = [
        (scifact_train.queries[q], scifact_train.corpus[d])
        for q in list(scifact_train.qrels)[:40]
        for d in scifact_train.qrels[q]
    ]
    return pd.DataFrame(rows, columns=["query", "positive"]), scifact_train.corpus


@pytest.fixture(scope="module")
def wikiqa_slice():
    """WikiQA train questions 1-60 that have an answer, and all sentences of those questions."""
    path = shared_data("wikiqa") / "train.jsonl"
    with open(path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    ids = list(dict.fromkeys(r["query_id"] for r in rows))[:60]
    rows = [r for r in rows if r["query_id"] in set(ids)]
    pairs = pd.DataFrame(
        [(r["query"], r["passage"]) for r in rows if r["label"] == 1], columns=["query", "positive"]
    )
    return pairs, rows, list(dict.fromkeys(r["passage"] for r in rows))


def _negatives(result) -> dict[str, list[str]]:
    table = result.dataset.to_pandas()
    columns = sorted(
        (c for c in table.columns if c.startswith("negative_")), key=lambda c: int(c[9:])
    )
    return {row.query: [getattr(row, c) for c in columns] for row in table.itertuples()}


def _window(pairs, corpus, size: int) -> dict[str, list[str]]:
    """Each query's top-`size` negatives in rank order; short queries keep what they have."""
    result = mine_hard_negatives(pairs, corpus, num_negatives=size, range_max=size)
    window: dict[str, list[str]] = {}
    for row in result.dataset:
        if row["negative"] not in window.setdefault(row["query"], []):
            window[row["query"]].append(row["negative"])
    return window


def test_mine_counts_exact_on_hand_checked_corpus(hand):
    pairs, corpus = hand
    result = mine_hard_negatives(
        pairs, corpus, num_negatives=3, range_max=5, absolute_margin=0.1, max_score=5.0
    )
    report = result.report
    # Claim 4: 4 of its window score within 0.1 of 2.316 -> 1 left. Claim 12: 11705328 fails
    # the margin, 43557480 (5.152) the cap -> 3 left. Claim 14: all 4 ranked fail the margin.
    assert report.negatives_per_query == {0: 1, 1: 1, 2: 0, 3: 1}
    assert report.queries_short == 2
    assert report.short_by_reason == {"absolute_margin": 2}
    assert report.removed_by_filter == {"absolute_margin": 9, "max_score": 1}
    assert (report.rows_in, report.pairs_used, report.queries) == (3, 3, 3)
    assert (report.corpus_size, report.rows_out, report.pairs_dropped) == (14, 4, 1)
    assert report.positive_scores["count"] == 3
    assert report.positive_scores["median"] == pytest.approx(2.316, abs=1e-3)
    assert report.negative_scores["count"] == 4
    assert report.negative_scores["min"] == pytest.approx(0.127, abs=1e-3)


def test_mine_window_too_small_is_the_reason(hand):
    pairs, corpus = hand
    report = mine_hard_negatives(pairs, corpus, num_negatives=5, range_max=5).report
    # Claim 14 has only 4 candidates sharing a term with it.
    assert report.negatives_per_query == {0: 0, 1: 0, 2: 0, 3: 0, 4: 1, 5: 2}
    assert report.short_by_reason == {"window": 1}
    assert report.removed_by_filter == {}


def test_mine_window_follows_the_bm25_ranking(scifact_slice):
    pairs, corpus = scifact_slice
    result = mine_hard_negatives(
        pairs, corpus, num_negatives=3, range_min=2, range_max=5, output_format="n-tuple"
    )
    runs = BM25Retriever(corpus).search(pairs["query"].tolist(), top_k=20)
    positives = pairs.groupby("query")["positive"].apply(set)
    for query, run in zip(pairs["query"], runs, strict=True):
        ranked = [corpus[d] for d, s in run if corpus[d] not in positives[query] and s > 0]
        assert _negatives(result)[query] == ranked[2:5]


def test_mine_margins_and_score_bounds_hold(scifact_slice):
    pairs, corpus = scifact_slice
    result = mine_hard_negatives(
        pairs,
        corpus,
        num_negatives=3,
        relative_margin=0.2,
        min_score=4.0,
        output_format="n-tuple-scores",
    )
    assert result.report.removed_by_filter["relative_margin"] > 0
    lowest = pd.DataFrame(result.dataset.to_dict()).assign(
        positive_score=[s[0] for s in result.dataset["labels"]]
    )
    lowest = lowest.groupby("query")["positive_score"].min()
    for query, scores in zip(result.dataset["query"], result.dataset["labels"], strict=True):
        for negative in scores[1:]:
            assert negative <= lowest[query] - abs(lowest[query]) * 0.2 + 1e-6
            assert negative >= 4.0


def test_mine_random_sampling_stays_in_window_and_is_seeded(scifact_slice):
    pairs, corpus = scifact_slice
    options = dict(num_negatives=3, range_max=15, output_format="n-tuple")
    window = _window(pairs, corpus, 15)
    first = _negatives(mine_hard_negatives(pairs, corpus, sampling="random", seed=1, **options))
    again = _negatives(mine_hard_negatives(pairs, corpus, sampling="random", seed=1, **options))
    other = _negatives(mine_hard_negatives(pairs, corpus, sampling="random", seed=2, **options))
    assert first == again and first != other
    for query, negatives in first.items():
        assert set(negatives) <= set(window[query])
        # Kept in rank order.
        assert negatives == [n for n in window[query] if n in negatives]


def test_mine_random_share_draws_easy_negatives_outside_the_window(scifact_slice):
    pairs, corpus = scifact_slice
    result = mine_hard_negatives(
        pairs, corpus, num_negatives=5, random_share=0.4, range_max=10, output_format="n-tuple"
    )
    top = _window(pairs, corpus, 10)
    positives = set(pairs["positive"])
    for query, negatives in _negatives(result).items():
        assert negatives[:3] == top[query][:3]
        assert not set(negatives[3:]) & (set(top[query]) | positives)
    assert result.report.negatives_per_query[5] == result.report.queries


@pytest.mark.parametrize(
    ("output_format", "columns", "rows"),
    [
        ("triplet", ["query", "positive", "negative"], 9),
        ("n-tuple", TUPLE_COLUMNS, 3),
        ("n-tuple-scores", [*TUPLE_COLUMNS, "labels"], 3),
        ("labeled-pairs", ["query", "passage", "label"], 12),
        ("labeled-list", ["query", "documents", "labels"], 3),
    ],
)  # fmt: skip
def test_mine_output_formats(hand, output_format, columns, rows):
    pairs, corpus = hand
    result = mine_hard_negatives(pairs, corpus, num_negatives=3, output_format=output_format)
    assert result.dataset.column_names == columns
    assert len(result.dataset) == rows == result.report.rows_out
    if output_format == "labeled-list":
        assert result.dataset["labels"][0] == [1, 0, 0, 0]
    if output_format == "labeled-pairs":
        assert sorted(result.dataset["label"]) == [0.0] * 9 + [1.0] * 3


def test_mine_include_positives_keeps_them_in_rank_order(hand, scifact_train):
    pairs, corpus = hand
    result = mine_hard_negatives(
        pairs,
        corpus,
        num_negatives=4,
        range_max=5,
        include_positives=True,
        output_format="labeled-list",
    )
    claim_12 = result.dataset[1]
    expected = ["11705328", "33409100", "43557480", "23377475", "6421792"]
    assert claim_12["documents"] == [scifact_train.corpus[d] for d in expected]
    assert claim_12["labels"] == [0, 1, 0, 0, 0]
    # Every claim's positive ranks 5th or better, so all three are in the window.
    assert result.report.positives_in_window == 3


def test_mine_labeled_pairs_input_counts_skipped_rows(wikiqa_slice):
    _, rows, sentences = wikiqa_slice
    table = pd.DataFrame(rows)[["query", "passage", "label"]]
    result = mine_hard_negatives(table, sentences, num_negatives=2)
    report = result.report
    assert report.rows_in == len(rows)
    assert report.rows_skipped["label <= 0"] == sum(r["label"] == 0 for r in rows)
    assert report.pairs_used == sum(r["label"] == 1 for r in rows)


def test_screen_flags_planted_near_duplicate_and_drop_removes_it(hand, scifact_train):
    pairs, corpus = hand
    # A copy of claim 14's positive with one word changed.
    positive = scifact_train.corpus["641786"]
    planted = positive.replace("Relapsed", "Relapsing", 1)
    assert planted != positive
    corpus = corpus | {"planted": planted}

    flagged = mine_hard_negatives(pairs, corpus, num_negatives=5, range_max=6)
    # Claim 4's window also holds 33409100, claim 12's positive.
    assert flagged.report.false_negative_flags == {"near_duplicate": 1, "other_query_positive": 1}
    assert [
        e["negative"] for e in flagged.report.flag_examples if "near_duplicate" in e["kinds"]
    ] == [planted]
    assert planted in flagged.dataset["negative"]

    dropped = mine_hard_negatives(
        pairs, corpus, num_negatives=5, range_max=6, false_negative_screen="drop"
    )
    assert dropped.report.removed_by_filter == {"false_negative_screen": 2}
    assert planted not in dropped.dataset["negative"]

    off = mine_hard_negatives(
        pairs, corpus, num_negatives=5, range_max=6, false_negative_screen=None
    )
    assert off.report.false_negative_flags == {}


def test_screen_flags_another_querys_positive(hand, scifact_train):
    pairs, corpus = hand
    # Train claim 34 cites 11705328, the best BM25 match of claim 12.
    extra = pd.DataFrame(
        [(scifact_train.queries["34"], scifact_train.corpus["11705328"])], columns=pairs.columns
    )
    result = mine_hard_negatives(pd.concat([pairs, extra]), corpus, num_negatives=1)
    examples = result.report.flag_examples
    assert ("other_query_positive" in examples[0]["kinds"]) and len(examples) >= 1
    claim_12 = scifact_train.queries["12"]
    assert any(
        e["query"] == claim_12 and e["negative"] == scifact_train.corpus["11705328"]
        for e in examples
    )
    screen = FalseNegativeScreen(other_positives=False)
    quiet = mine_hard_negatives(
        pd.concat([pairs, extra]), corpus, num_negatives=1, false_negative_screen=screen
    )
    assert "other_query_positive" not in quiet.report.false_negative_flags


def test_rescorer_scores_drive_output_and_flags(hand, reranker):
    pairs, corpus = hand
    result = mine_hard_negatives(
        pairs,
        corpus,
        num_negatives=3,
        range_max=5,
        rescorer=reranker,
        output_format="n-tuple-scores",
    )
    above = 0
    for row in result.dataset:
        expected = reranker.predict([(row["query"], row["positive"])])[0]
        assert row["labels"][0] == pytest.approx(float(expected), abs=1e-5)
        assert row["labels"][1:] == sorted(row["labels"][1:], reverse=True)
        above += sum(s >= row["labels"][0] for s in row["labels"][1:])
    assert above > 0
    assert result.report.false_negative_flags["scored_above_positive"] == above


def test_dense_mining_reads_the_cache_on_a_second_call(wikiqa_slice, tmp_path):
    pairs, _, sentences = wikiqa_slice
    embedder = DenseEmbedder("minilm-l6-tiny", cache_dir=tmp_path, max_length=64)
    first = mine_hard_negatives(pairs, sentences, retriever=embedder, num_negatives=2)
    assert first.report.embeddings["embedded"] > 0

    calls = []
    original = embedder.embed
    embedder.embed = lambda texts: calls.append(len(texts)) or original(texts)
    second = mine_hard_negatives(pairs, sentences, retriever=embedder, num_negatives=3)
    assert calls == []
    assert second.report.embeddings == {
        "embedded": 0,
        "from_cache": first.report.embeddings["embedded"],
    }

    # A new text is embedded alone; the rest still comes from the cache.
    mine_hard_negatives(pairs, [*sentences, "A sentence nobody embedded."], retriever=embedder)
    assert calls == [1]


def test_dense_top_k_does_not_depend_on_chunk_size(wikiqa_slice, tmp_path):
    pairs, _, sentences = wikiqa_slice
    embedder = DenseEmbedder("minilm-l6-tiny", cache_dir=tmp_path, max_length=64)
    options = dict(retriever=embedder, num_negatives=4, output_format="n-tuple")
    small = mine_hard_negatives(pairs, sentences, chunk_size=7, **options)
    whole = mine_hard_negatives(pairs, sentences, chunk_size=100_000, **options)
    assert small.dataset.to_list() == whole.dataset.to_list()


def test_dense_mining_matches_sentence_transformers(wikiqa_slice, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine

    from workbench.embedded import resolve

    pairs, _, sentences = wikiqa_slice
    st_model = SentenceTransformer(resolve("minilm-l6")[0], device="cpu")
    # The reference embeds in fp32; "auto" may pick bf16 (checked below).
    embedder = DenseEmbedder("minilm-l6", cache_dir=tmp_path, precision="fp32")
    st_vectors = st_model.encode(sentences[:20], normalize_embeddings=True)
    np.testing.assert_allclose(embedder.encode(sentences[:20]), st_vectors, atol=1e-5)
    bf16 = DenseEmbedder("minilm-l6", cache_dir=False, precision="bf16").encode(sentences[:20])
    assert np.min(np.sum(bf16 * st_vectors, axis=1)) > 0.99  # cosine to the fp32 vectors

    import datasets

    dataset = datasets.Dataset.from_pandas(pairs, preserve_index=False)
    for options in (
        dict(range_min=1, range_max=6, num_negatives=3),
        dict(range_max=30, num_negatives=3, relative_margin=0.1),
    ):
        ours = mine_hard_negatives(
            dataset, sentences, retriever=embedder, output_format="n-tuple", **options
        )
        theirs = st_mine(
            dataset,
            st_model,
            corpus=sentences,
            output_format="n-tuple",
            sampling_strategy="top",
            verbose=False,
            cache_folder=str(tmp_path / "st"),
            **options,
        )
        assert len(ours.dataset) == len(theirs) > 0
        assert sorted(ours.dataset.to_list(), key=str) == sorted(theirs.to_list(), key=str)


def test_bge_small_embedder_uses_cls_pooling_and_query_prefix(tmp_path):
    embedder = DenseEmbedder("bge-small", cache_dir=False, max_length=64)
    assert (embedder.pooling, embedder.query_prefix[:9]) == ("cls", "Represent")
    query = embedder.encode(["how are glacier caves formed?"], is_query=True)
    passages = embedder.encode(
        ["A glacier cave is a cave formed within the ice of a glacier .", "Pasta is boiled."]
    )
    assert query.shape == (1, 384)
    assert np.linalg.norm(query) == pytest.approx(1.0, abs=1e-5)
    scores = passages @ query[0]
    assert scores[0] > scores[1] + 0.1


def test_mine_rejects_bad_options(hand):
    pairs, corpus = hand
    with pytest.raises(ValueError, match="Cannot mine 5 hard negatives from a window of 3"):
        mine_hard_negatives(pairs, corpus, num_negatives=5, range_max=3)
    with pytest.raises(ValueError, match="include_positives=True builds ranked lists"):
        mine_hard_negatives(pairs, corpus, include_positives=True)
    with pytest.raises(ValueError, match="output_format must be one of"):
        mine_hard_negatives(pairs, corpus, output_format="quads")
    with pytest.raises(ValueError, match="sampling must be one of"):
        mine_hard_negatives(pairs, corpus, sampling="bottom")
    with pytest.raises(DataValidationError, match=r"mining needs columns query and positive"):
        mine_hard_negatives(pairs.rename(columns={"positive": "answer"}), corpus)
    bad = pairs.copy()
    bad.loc[1, "positive"] = " "
    with pytest.raises(DataValidationError, match=r"row 2, column 'positive': expected non-empty"):
        mine_hard_negatives(bad, corpus)


def test_mining_report_renders(hand):
    pairs, corpus = hand
    report = mine_hard_negatives(pairs, corpus, num_negatives=3, absolute_margin=0.1).report
    assert json.loads(json.dumps(report.to_dict()))["queries"] == 3
    markdown = report.to_markdown()
    # Claim 14's positive scores 0.687 and every candidate above it: no negative within 0.1.
    assert "Why queries fell short: absolute_margin: 1" in markdown
    assert "| count | 3 |" in markdown
