"""Classification, correlation, sequential evaluators and run comparison, on real data.

References: scikit-learn for classification metrics, scipy.stats for correlations and the t-test.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from scipy import stats
from sklearn import metrics as skm

from tests.conftest import shared_data
from workbench.evaluation import (
    ClassificationEvaluator,
    CorrelationEvaluator,
    RerankingEvaluator,
    SequentialEvaluator,
    build_samples,
    compare_runs,
    comparison_figures,
)
from workbench.evaluation.correlation import average_ranks


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _overlap(pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """Jaccard overlap of lower-cased words: a cheap, deterministic real scorer."""
    scores = []
    for first, second in pairs:
        a, b = set(first.lower().split()), set(second.lower().split())
        scores.append(len(a & b) / max(1, len(a | b)))
    return np.asarray(scores)


class _OverlapModel:
    """Scores pairs by word overlap through the `predict` contract of `CrossEncoder`."""

    def predict(self, pairs, **kwargs) -> np.ndarray:
        return _overlap(pairs)


@pytest.fixture(scope="module")
def wikiqa_rows():
    return _read_jsonl(shared_data("wikiqa") / "test.jsonl")[:300]


@pytest.fixture(scope="module")
def stsb_dev():
    rows = _read_jsonl(shared_data("stsb") / "dev.jsonl")
    pairs = [(row["sentence1"], row["sentence2"]) for row in rows]
    return pairs, np.array([row["score"] for row in rows])


# Classification


def test_classification_binary_metrics_equal_sklearn_with_tiny_model(wikiqa_rows, tiny_model):
    pairs = [(row["query"], row["passage"]) for row in wikiqa_rows]
    labels = np.array([row["label"] for row in wikiqa_rows])
    assert 0 < labels.sum() < len(labels)
    evaluator = ClassificationEvaluator(pairs, labels, name="wikiqa", batch_size=64)
    scores = evaluator.score(tiny_model)
    metrics = evaluator.compute(scores)

    at_f1 = scores >= metrics["wikiqa_f1_threshold"]
    assert metrics["wikiqa_f1"] == pytest.approx(skm.f1_score(labels, at_f1), abs=1e-12)
    assert metrics["wikiqa_precision"] == pytest.approx(skm.precision_score(labels, at_f1))
    assert metrics["wikiqa_recall"] == pytest.approx(skm.recall_score(labels, at_f1))
    at_accuracy = scores >= metrics["wikiqa_accuracy_threshold"]
    assert metrics["wikiqa_accuracy"] == pytest.approx(skm.accuracy_score(labels, at_accuracy))
    assert metrics["wikiqa_average_precision"] == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-12
    )

    # The thresholds are the best ones over the whole precision-recall curve.
    precision, recall, _ = skm.precision_recall_curve(labels, scores)
    best_f1 = np.max(2 * precision * recall / np.maximum(precision + recall, 1e-300))
    assert metrics["wikiqa_f1"] == pytest.approx(best_f1, abs=1e-12)
    assert evaluator.primary_metric == "wikiqa_average_precision"


def test_classification_binary_handles_tied_scores_like_sklearn(wikiqa_rows):
    pairs = [(row["query"], row["passage"]) for row in wikiqa_rows]
    labels = [row["label"] for row in wikiqa_rows]
    scores = np.round(_overlap(pairs), 1)  # few distinct values, many ties
    metrics = ClassificationEvaluator(pairs, labels).compute(scores)

    assert metrics["average_precision"] == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-12
    )
    at_f1 = scores >= metrics["f1_threshold"]
    assert metrics["f1"] == pytest.approx(skm.f1_score(labels, at_f1), abs=1e-12)
    at_accuracy = scores >= metrics["accuracy_threshold"]
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(labels, at_accuracy))


def test_classification_multiclass_metrics_equal_sklearn(stsb_dev):
    pairs, gold = stsb_dev
    labels = np.minimum(gold // 2, 2).astype(int)  # 0-5 similarity -> 3 classes
    overlap = _overlap(pairs)
    logits = -np.abs(overlap[:, None] * 3 - np.arange(3)[None, :])  # (num_pairs, 3)
    evaluator = ClassificationEvaluator(pairs, labels, name="stsb3")
    metrics = evaluator.compute(logits)

    predicted = logits.argmax(axis=1)
    assert metrics["stsb3_accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert metrics["stsb3_macro_f1"] == pytest.approx(
        skm.f1_score(labels, predicted, average="macro"), abs=1e-12
    )
    assert evaluator.primary_metric == "stsb3_macro_f1"


def test_classification_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="one label per pair"):
        ClassificationEvaluator([("a", "b")], [1, 0])
    with pytest.raises(TypeError, match="integer labels"):
        ClassificationEvaluator([("a", "b")], [0.5])
    with pytest.raises(ValueError, match="need 0/1 labels"):
        ClassificationEvaluator([("a", "b"), ("c", "d")], [0, 2]).compute(np.array([0.1, 0.2]))


# Correlation


def test_correlation_equals_scipy_on_stsb_dev(stsb_dev):
    pairs, gold = stsb_dev
    evaluator = CorrelationEvaluator(pairs, gold, name="stsb-dev")
    metrics = evaluator(_OverlapModel())

    predicted = _overlap(pairs)
    assert metrics["stsb-dev_pearson"] == pytest.approx(
        stats.pearsonr(predicted, gold).statistic, abs=1e-12
    )
    assert metrics["stsb-dev_spearman"] == pytest.approx(
        stats.spearmanr(predicted, gold).statistic, abs=1e-12
    )
    assert evaluator.primary_metric == "stsb-dev_spearman"


def test_correlation_average_ranks_equal_scipy_rankdata(stsb_dev):
    _, gold = stsb_dev  # many tied gold scores
    np.testing.assert_array_equal(average_ranks(gold), stats.rankdata(gold, method="average"))
    np.testing.assert_array_equal(average_ranks(np.array([10.0, 20, 20])), [1, 2.5, 2.5])


def test_correlation_rejects_wrong_length():
    evaluator = CorrelationEvaluator([("a", "b"), ("c", "d")], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        evaluator.compute([0.1, 0.2, 0.3])


# Sequential


def test_sequential_merges_metrics_and_defaults_primary(stsb_dev):
    pairs, gold = stsb_dev
    correlation = CorrelationEvaluator(pairs[:200], gold[:200], name="stsb")
    labels = (gold[:200] >= 2.5).astype(int)
    classification = ClassificationEvaluator(pairs[:200], labels, name="stsb-binary")
    evaluator = SequentialEvaluator([correlation, classification])
    metrics = evaluator(_OverlapModel())

    assert evaluator.primary_metric == "stsb_spearman"
    assert metrics == correlation(_OverlapModel()) | classification(_OverlapModel())
    chosen = SequentialEvaluator([correlation, classification], primary_metric="stsb-binary_f1")
    assert chosen.primary_metric == "stsb-binary_f1"


def test_sequential_rejects_clashing_keys(stsb_dev):
    pairs, gold = stsb_dev
    twice = [CorrelationEvaluator(pairs[:50], gold[:50]) for _ in range(2)]
    with pytest.raises(ValueError, match="distinct metric keys"):
        SequentialEvaluator(twice)(_OverlapModel())
    with pytest.raises(ValueError, match="at least one evaluator"):
        SequentialEvaluator([])


# Run comparison


@pytest.fixture(scope="module")
def dl19_per_query():
    """Per-query metrics on TREC DL 2019 for BM25's order and an oracle-like reranker."""
    folder = shared_data("trec-dl-2019-passage")
    corpus = {doc["_id"]: doc["text"] for doc in _read_jsonl(folder / "corpus.jsonl")}
    queries = {query["_id"]: query["text"] for query in _read_jsonl(folder / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        query_id, doc_id, grade = line.split("\t")
        qrels.setdefault(query_id, {})[doc_id] = int(grade)
    runs: dict[str, list[tuple[str, float]]] = {}
    for line in (folder / "bm25_top100.tsv").read_text().splitlines()[1:]:
        query_id, doc_id, _, score = line.split("\t")
        runs.setdefault(query_id, []).append((doc_id, float(score)))

    samples = build_samples(queries, qrels, corpus, runs, top_k=100)
    evaluator = RerankingEvaluator(samples, name="dl19", relevance_level=2)
    evaluator.compute([np.array([score for _, _, score in s.candidates]) for s in samples])
    bm25 = evaluator.per_query

    # Not a model: the judged grades plus small noise stand in for a near-oracle reranker, a
    # strong ordering whose gain over BM25 is certain, without running a 12-layer model.
    rng = np.random.default_rng(0)
    strong = [
        np.array([s.qrels.get(doc, 0) for doc, _, _ in s.candidates]) + rng.normal(0, 0.3, 100)
        for s in samples
    ]
    evaluator.compute(strong)
    return bm25, evaluator.per_query


def test_compare_runs_gives_p_near_one_for_a_run_against_itself(dl19_per_query):
    bm25, _ = dl19_per_query
    result = compare_runs(bm25, bm25.copy())
    assert result.randomization_p > 0.9
    assert result.t_test_p > 0.9
    assert (result.improved, result.regressed, result.tied) == (0, 0, len(bm25))
    assert result.mean_delta == 0.0


def test_compare_runs_finds_a_strong_reranker_significant(dl19_per_query):
    bm25, strong = dl19_per_query
    result = compare_runs(bm25, strong, metric="ndcg@10", seed=1)

    assert result.num_queries == 43
    assert result.randomization_p < 0.01
    assert result.mean_delta == pytest.approx((strong["ndcg@10"] - bm25["ndcg@10"]).mean())
    assert result.improved + result.regressed + result.tied == 43
    assert result.improved > result.regressed
    assert list(result.per_query.columns) == ["query_id", "a", "b", "delta"]
    moved = result.most_moved["delta"].abs().to_numpy()
    assert np.all(np.diff(moved) <= 0)
    assert moved[0] == result.per_query["delta"].abs().max()


def test_compare_runs_t_test_equals_scipy_ttest_rel(dl19_per_query):
    bm25, strong = dl19_per_query
    for metric in ("ndcg@10", "mrr@10", "map"):
        result = compare_runs(bm25, strong, metric=metric, resamples=100)
        reference = stats.ttest_rel(strong[metric], bm25[metric]).pvalue
        assert result.t_test_p == pytest.approx(reference, rel=1e-9)


def test_compare_runs_bootstrap_interval_contains_the_mean(dl19_per_query):
    bm25, strong = dl19_per_query
    result = compare_runs(bm25, strong, metric="mrr@10")
    assert result.ci_low < result.mean_delta < result.ci_high
    again = compare_runs(bm25, strong, metric="mrr@10")
    assert (again.ci_low, again.ci_high, again.randomization_p) == (
        result.ci_low,
        result.ci_high,
        result.randomization_p,
    )


def test_compare_runs_rejects_different_queries(dl19_per_query):
    bm25, strong = dl19_per_query
    with pytest.raises(ValueError, match="same queries"):
        compare_runs(bm25, strong.iloc[1:])
    with pytest.raises(ValueError, match="lacks"):
        compare_runs(bm25, strong, metric="recall@100")


def test_comparison_figures_are_plotly_figures_with_data(dl19_per_query):
    bm25, strong = dl19_per_query
    figures = comparison_figures(compare_runs(bm25, strong, resamples=100))
    assert set(figures) == {"deltas", "scatter"}
    for figure in figures.values():
        assert isinstance(figure, go.Figure)
        assert len(figure.data) > 0
    assert len(figures["deltas"].data[0].x) == 43
    assert list(figures["scatter"].data[-1].text) == list(bm25["query_id"])


def test_compare_runs_accepts_plain_dataframes():
    a = pd.DataFrame({"query_id": ["q1", "q2", "q3"], "map": [0.2, 0.5, 0.1]})
    b = pd.DataFrame({"query_id": ["q3", "q1", "q2"], "map": [0.1, 0.4, 0.5]})
    result = compare_runs(a, b, metric="map", resamples=200)
    assert result.per_query["delta"].tolist() == pytest.approx([0.2, 0.0, 0.0])
    assert (result.improved, result.regressed, result.tied) == (1, 0, 2)
