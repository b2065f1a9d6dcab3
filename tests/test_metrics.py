"""Ranking metrics: hand-checked toy rankings, and equality with trec_eval on real runs."""

from __future__ import annotations

import json
import math

import pytest
import pytrec_eval

from tests.conftest import shared_data
from workbench.evaluation.metrics import average_precision, mrr_at_k, ndcg_at_k, rank_metrics
from workbench.retrieval import BM25Retriever


def test_ndcg_at_k_hand_checked():
    qrels = {"a": 2, "b": 1, "z": 1}  # z is judged but never retrieved
    dcg = 1 / math.log2(3) * 1 + 2 / math.log2(4)  # b at rank 2, a at rank 3
    idcg = 2 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(["x", "b", "a"], qrels, 10) == pytest.approx(dcg / idcg)


def test_mrr_at_k_cuts_the_run_first():
    qrels = {"r": 1}
    ranking = [f"d{i}" for i in range(10)] + ["r"]
    assert mrr_at_k(ranking, qrels, 10) == 0.0
    assert mrr_at_k(ranking, qrels, 11) == pytest.approx(1 / 11)


def test_average_precision_counts_unretrieved_relevant():
    qrels = {"a": 1, "b": 1, "missing": 1}
    assert average_precision(["a", "x", "b"], qrels) == pytest.approx((1 + 2 / 3) / 3)


def test_relevance_level_makes_low_grades_non_relevant():
    qrels = {"a": 1, "b": 2}
    assert mrr_at_k(["a", "b"], qrels, 10, relevance_level=2) == pytest.approx(0.5)


def test_rank_metrics_breaks_ties_by_doc_id_descending():
    # trec_eval orders equal scores by docno descending: "b" before "a".
    run = [("a", 1.0), ("b", 1.0)]
    assert rank_metrics(run, {"a": 1})["mrr@10"] == pytest.approx(0.5)


def _trec_eval(qrels, runs, relevance_level=1):
    measures = {"ndcg_cut.10", "map", "recip_rank"}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, measures, relevance_level=relevance_level)
    full = evaluator.evaluate(runs)
    # MRR@10: trec_eval's recip_rank on the run cut to 10 (trec_eval's own order decides the cut).
    top10 = {q: _cut10(r) for q, r in runs.items()}
    cut = evaluator.evaluate(top10)
    return {q: (full[q]["ndcg_cut_10"], cut[q]["recip_rank"], full[q]["map"]) for q in full}


def _cut10(run: dict[str, float]) -> dict[str, float]:
    ordered = sorted(sorted(run.items(), key=lambda x: x[0], reverse=True), key=lambda x: -x[1])
    return dict(ordered[:10])


def _assert_equal_to_trec_eval(runs, qrels, relevance_level=1):
    reference = _trec_eval(qrels, runs, relevance_level)
    for query_id, (ndcg, mrr, ap) in reference.items():
        ours = rank_metrics(
            list(runs[query_id].items()), qrels[query_id], relevance_level=relevance_level
        )
        assert ours["ndcg@10"] == pytest.approx(ndcg, abs=1e-6), query_id
        assert ours["mrr@10"] == pytest.approx(mrr, abs=1e-6), query_id
        assert ours["map"] == pytest.approx(ap, abs=1e-6), query_id
    return reference


def test_metrics_equal_trec_eval_on_scifact_bm25(scifact_test):
    bm25 = BM25Retriever(scifact_test.corpus)
    hits = bm25.search(list(scifact_test.queries.values()), top_k=100)
    # Rounded scores create ties, so the tie-breaking convention is exercised too.
    runs = {
        q: {d: round(s, 1) for d, s in h} for q, h in zip(scifact_test.queries, hits, strict=True)
    }
    reference = _assert_equal_to_trec_eval(runs, scifact_test.qrels)
    assert len(reference) == 300


def test_metrics_equal_trec_eval_on_trec_dl_2019_graded():
    folder = shared_data("trec-dl-2019-passage")
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, g = line.split("\t")
        qrels.setdefault(q, {})[d] = int(g)
    runs: dict[str, dict[str, float]] = {}
    for line in (folder / "bm25_top100.tsv").read_text().splitlines()[1:]:
        q, d, _, score = line.split("\t")
        runs.setdefault(q, {})[d] = float(score)
    queries = [json.loads(x)["_id"] for x in (folder / "queries.jsonl").read_text().splitlines()]
    assert set(runs) == set(queries)

    reference = _assert_equal_to_trec_eval(runs, qrels, relevance_level=2)
    mean_ndcg = sum(v[0] for v in reference.values()) / len(reference)
    assert mean_ndcg == pytest.approx(0.5058, abs=5e-5)
