"""RerankingEvaluator and BM25 on real data, checked against trec_eval (pytrec_eval)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import pytrec_eval

from tests.conftest import shared_data
from workbench import BM25Retriever, RerankingEvaluator
from workbench.data import load_beir
from workbench.evaluation.reranking import build_samples


def _mean_trec_eval(qrels, runs, relevance_level=1):
    evaluator = pytrec_eval.RelevanceEvaluator(
        qrels, {"ndcg_cut.10", "map"}, relevance_level=relevance_level
    )
    values = evaluator.evaluate(runs)
    return {
        "ndcg@10": np.mean([v["ndcg_cut_10"] for v in values.values()]),
        "map": np.mean([v["map"] for v in values.values()]),
    }


@pytest.fixture(scope="module")
def scifact_bm25(scifact_test):
    bm25 = BM25Retriever(scifact_test.corpus)
    hits = bm25.search(list(scifact_test.queries.values()), top_k=100)
    return dict(zip(scifact_test.queries, hits, strict=True))


def test_bm25_reproduces_the_scifact_reference(scifact_test, scifact_bm25):
    runs = {q: dict(h) for q, h in scifact_bm25.items()}
    # 0.6617: bm25s defaults, English stopwords, title + abstract (data README).
    assert _mean_trec_eval(scifact_test.qrels, runs)["ndcg@10"] == pytest.approx(0.6617, abs=5e-5)


def test_first_stage_metrics_equal_trec_eval_on_the_cut_run(scifact_test, scifact_bm25):
    samples = build_samples(
        scifact_test.queries, scifact_test.qrels, scifact_test.corpus, scifact_bm25, top_k=30
    )
    evaluator = RerankingEvaluator(samples, name="scifact")
    metrics = evaluator.compute([np.zeros(len(s.candidates)) for s in samples])
    top30 = {q: dict(h[:30]) for q, h in scifact_bm25.items()}
    reference = _mean_trec_eval(scifact_test.qrels, top30)
    assert metrics["scifact_base_ndcg@10"] == pytest.approx(reference["ndcg@10"], abs=1e-9)
    assert metrics["scifact_base_map"] == pytest.approx(reference["map"], abs=1e-9)
    assert len(evaluator.per_query) == 300


@pytest.fixture(scope="module")
def trec_dl():
    folder = shared_data("trec-dl-2019-passage")
    corpus = {}
    for line in (folder / "corpus.jsonl").read_text().splitlines():
        doc = json.loads(line)
        corpus[doc["_id"]] = doc["text"]
    queries = {}
    for line in (folder / "queries.jsonl").read_text().splitlines():
        query = json.loads(line)
        queries[query["_id"]] = query["text"]
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, g = line.split("\t")
        qrels.setdefault(q, {})[d] = int(g)
    runs: dict[str, list[tuple[str, float]]] = {}
    for line in (folder / "bm25_top100.tsv").read_text().splitlines()[1:]:
        q, d, _, score = line.split("\t")
        runs.setdefault(q, []).append((d, float(score)))
    return queries, qrels, corpus, runs


def test_bm25_order_on_trec_dl_2019_gives_the_published_ndcg(trec_dl):
    queries, qrels, corpus, runs = trec_dl
    samples = build_samples(queries, qrels, corpus, runs, top_k=100)
    evaluator = RerankingEvaluator(samples, name="dl19", relevance_level=2)
    metrics = evaluator.compute([np.zeros(len(s.candidates)) for s in samples])
    assert metrics["dl19_base_ndcg@10"] == pytest.approx(0.5058, abs=5e-5)
    assert metrics["dl19_base_mrr@10"] == pytest.approx(0.7024, abs=5e-5)


def test_reranked_metrics_equal_trec_eval_with_a_real_reranker(trec_dl, reranker):
    queries, qrels, corpus, runs = trec_dl
    chosen = dict(list(runs.items())[:4])
    samples = build_samples(queries, qrels, corpus, chosen, top_k=30)
    evaluator = RerankingEvaluator(samples, name="dl19", relevance_level=2, optimistic=True)
    scores = evaluator.score(reranker)
    metrics = evaluator.compute(scores)

    reranked = {
        s.query_id: {doc: float(x) for (doc, _, _), x in zip(s.candidates, sc, strict=False)}
        for s, sc in zip(samples, scores, strict=True)
    }
    reference = _mean_trec_eval({q: qrels[q] for q in chosen}, reranked, relevance_level=2)
    assert metrics["dl19_ndcg@10"] == pytest.approx(reference["ndcg@10"], abs=1e-9)
    assert metrics["dl19_map"] == pytest.approx(reference["map"], abs=1e-9)
    # A real reranker lifts nDCG@10 over BM25's order on these queries.
    assert metrics["dl19_ndcg@10"] > metrics["dl19_base_ndcg@10"]
    assert metrics["dl19_optimistic_ndcg@10"] >= metrics["dl19_ndcg@10"] - 1e-9


def test_optimistic_setting_adds_missed_positives(scifact_test, scifact_bm25):
    samples = build_samples(
        scifact_test.queries, scifact_test.qrels, scifact_test.corpus, scifact_bm25, top_k=5
    )
    missed = sum(len(s.missed) for s in samples)
    assert missed > 0
    evaluator = RerankingEvaluator(samples, optimistic=True)
    assert evaluator.num_pairs == 5 * len(samples) + missed


def test_beir_folder_loads_from_shared_data():
    beir = load_beir(shared_data("scifact"), "train")
    assert len(beir.queries) == 809
