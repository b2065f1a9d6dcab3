"""First-stage recall, the rerank-depth sweep, the BEIR suite and the paired test, on real data.

References: trec_eval (pytrec_eval) for ranking metrics, scikit-learn and scipy for
classification and correlation with real models.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import pytrec_eval
from scipy import stats
from sklearn import metrics as skm

from tests.conftest import shared_data
from workbench import CrossEncoder
from workbench.data import DataValidationError, load_run
from workbench.embedded import cache_dir
from workbench.evaluation import (
    BeirSet,
    BeirSuiteEvaluator,
    ClassificationEvaluator,
    CorrelationEvaluator,
    RerankingEvaluator,
    RerankingSample,
    build_samples,
    compare_runs,
)
from workbench.retrieval import BM25Retriever, sort_run


class _OverlapModel:
    """Scores pairs by Jaccard word overlap through `predict`; counts its calls."""

    def __init__(self) -> None:
        self.calls, self.pairs = 0, 0

    def predict(self, pairs, **kwargs) -> np.ndarray:
        self.calls += 1
        self.pairs += len(pairs)
        scores = []
        for first, second in pairs:
            a, b = set(first.lower().split()), set(second.lower().split())
            scores.append(len(a & b) / max(1, len(a | b)))
        return np.asarray(scores)


def _trec_eval(qrels, runs, measures, relevance_level=1) -> dict[str, dict[str, float]]:
    evaluator = pytrec_eval.RelevanceEvaluator(
        {q: qrels[q] for q in runs}, measures, relevance_level=relevance_level
    )
    return evaluator.evaluate(runs)


@pytest.fixture(scope="module")
def scifact_top200(scifact_test):
    bm25 = BM25Retriever(scifact_test.corpus)
    hits = bm25.search(list(scifact_test.queries.values()), top_k=200)
    return dict(zip(scifact_test.queries, hits, strict=True))


@pytest.fixture(scope="module")
def dl19():
    folder = shared_data("trec-dl-2019-passage")
    return BeirSet.from_folder(
        folder, name="dl19", relevance_level=2, run_file=folder / "bm25_top100.tsv"
    )


# First-stage recall and the depth sweep


def test_first_stage_recall_equals_trec_eval_on_scifact(scifact_test, scifact_top200):
    samples = build_samples(
        scifact_test.queries, scifact_test.qrels, scifact_test.corpus, scifact_top200, top_k=100
    )
    evaluator = RerankingEvaluator(samples, name="scifact")
    metrics = evaluator.compute([np.zeros(len(s.candidates)) for s in samples])
    assert evaluator.recall_at == [10, 100]

    runs = {q: dict(hits[:100]) for q, hits in scifact_top200.items()}
    reference = _trec_eval(scifact_test.qrels, runs, {"recall.10,100"})
    table = evaluator.per_query.set_index("query_id")
    for cutoff in (10, 100):
        ours = table[f"base_recall@{cutoff}"]
        theirs = {q: v[f"recall_{cutoff}"] for q, v in reference.items()}
        assert ours.to_dict() == pytest.approx(theirs, abs=1e-12)
        expected = np.mean(list(theirs.values()))
        assert metrics[f"scifact_base_recall@{cutoff}"] == pytest.approx(expected, abs=1e-12)


def test_first_stage_recall_equals_trec_eval_on_dl19_graded(dl19):
    runs = dl19.first_stage(100)
    samples = build_samples(dl19.data.queries, dl19.data.qrels, dl19.data.corpus, runs, top_k=100)
    evaluator = RerankingEvaluator(samples, relevance_level=2, recall_at=(10, 30, 100))
    evaluator.compute([np.zeros(len(s.candidates)) for s in samples])

    # Grade >= 2 counts as relevant; the denominator counts judged passages outside the pool.
    reference = _trec_eval(
        dl19.data.qrels, {q: dict(h) for q, h in runs.items()}, {"recall.10,30,100"}, 2
    )
    table = evaluator.per_query.set_index("query_id")
    for cutoff in (10, 30, 100):
        theirs = {q: v[f"recall_{cutoff}"] for q, v in reference.items()}
        assert table[f"base_recall@{cutoff}"].to_dict() == pytest.approx(theirs, abs=1e-12)


def test_depth_sweep_equals_trec_eval_from_one_scoring_pass(scifact_test, scifact_top200):
    samples = build_samples(
        scifact_test.queries, scifact_test.qrels, scifact_test.corpus, scifact_top200, top_k=200
    )
    depths = (5, 10, 30, 100, 200)
    evaluator = RerankingEvaluator(samples, name="scifact", depths=depths)
    model = _OverlapModel()
    metrics = evaluator(model)
    assert (model.calls, model.pairs) == (1, 200 * len(samples))

    scores = {
        s.query_id: dict(zip([d for d, _, _ in s.candidates], sc, strict=True))
        for s, sc in zip(samples, _model_scores(samples), strict=True)
    }
    table = evaluator.per_query.set_index("query_id")
    for depth in depths:
        runs = {}
        for query_id, hits in scifact_top200.items():
            order = [doc for doc, _ in sort_run(hits)]
            # The top `depth` by model score (0 to 1), the rest below in first-stage order.
            # No offset on the scores: trec_eval keeps them as float32.
            runs[query_id] = {doc: scores[query_id][doc] for doc in order[:depth]}
            runs[query_id] |= {doc: -1.0 - rank for rank, doc in enumerate(order[depth:])}
        reference = _trec_eval(scifact_test.qrels, runs, {"ndcg_cut.10"})
        theirs = {q: v["ndcg_cut_10"] for q, v in reference.items()}
        assert table[f"ndcg@10_depth{depth}"].to_dict() == pytest.approx(theirs, abs=1e-12)
        expected = np.mean(list(theirs.values()))
        assert metrics[f"scifact_ndcg@10_depth{depth}"] == pytest.approx(expected, abs=1e-12)
    # Reranking every candidate is the deepest depth.
    assert metrics["scifact_ndcg@10"] == pytest.approx(metrics["scifact_ndcg@10_depth200"])


def _model_scores(samples: list[RerankingSample]) -> np.ndarray:
    return _OverlapModel().predict(_pairs(samples)).reshape(len(samples), -1)


def _pairs(samples: list[RerankingSample]) -> list[tuple[str, str]]:
    return [(s.query, text) for s in samples for _, text, _ in s.candidates]


def test_score_spread_and_margin_are_hand_checked():
    sample = RerankingSample(
        "q1", "query", [("a", "x", 0.0), ("b", "y", 0.0), ("c", "z", 0.0)], {"a": 1, "b": 0}
    )
    evaluator = RerankingEvaluator([sample], name="toy")
    metrics = evaluator.compute([np.array([3.0, 1.0, 2.0])])
    assert metrics["toy_score_std"] == pytest.approx(np.std([3.0, 1.0, 2.0]))
    assert metrics["toy_score_margin"] == pytest.approx(3.0 - 1.5)


def test_reranking_evaluator_rejects_bad_depths(scifact_test, scifact_top200):
    samples = build_samples(
        scifact_test.queries, scifact_test.qrels, scifact_test.corpus, scifact_top200, top_k=5
    )
    with pytest.raises(ValueError, match="positive integers"):
        RerankingEvaluator(samples, depths=(0, 10))


# The BEIR suite


def test_suite_defaults_to_scifact_and_its_bm25_rows_equal_trec_eval():
    suite = BeirSuiteEvaluator(top_k=30)
    assert [s.name for s in suite.sets] == ["scifact"]
    assert suite.primary_metric == "beir_mean_ndcg@10"

    evaluator = suite.evaluators["scifact"]
    first_stage = [np.array([x for _, _, x in s.candidates]) for s in evaluator.samples]
    metrics = suite.compute({"scifact": first_stage})
    # The BM25 reference of the data README, and the same order when "reranked" by BM25.
    assert metrics["beir_scifact_base_ndcg@10"] == pytest.approx(0.6617, abs=5e-5)
    assert metrics["beir_mean_ndcg@10"] == pytest.approx(metrics["beir_mean_base_ndcg@10"])
    runs = {s.query_id: {d: x for d, _, x in s.candidates} for s in evaluator.samples}
    data = suite.sets[0].data
    reference = _trec_eval(data.qrels, runs, {"map", "recall.30"})
    assert metrics["beir_scifact_base_map"] == pytest.approx(
        np.mean([v["map"] for v in reference.values()]), abs=1e-12
    )
    assert metrics["beir_scifact_base_recall@30"] == pytest.approx(
        np.mean([v["recall_30"] for v in reference.values()]), abs=1e-12
    )


def test_suite_with_out_of_domain_sets_equals_trec_eval_per_set(dl19):
    wikiqa = BeirSet.from_pairs("wikiqa", shared_data("wikiqa") / "test.jsonl", max_queries=40)
    sets = [BeirSet.scifact(max_queries=40), dl19.head(10), wikiqa]
    suite = BeirSuiteEvaluator(sets, name="ood", top_k=20)
    model = _OverlapModel()
    metrics = suite(model)
    assert model.calls == 3

    for beir_set in sets:
        evaluator = suite.evaluators[beir_set.name]
        scores = model.predict(_pairs(evaluator.samples)).reshape(len(evaluator.samples), -1)
        runs = {
            s.query_id: {d: float(x) for (d, _, _), x in zip(s.candidates, sc, strict=True)}
            for s, sc in zip(evaluator.samples, scores, strict=True)
        }
        reference = _trec_eval(
            beir_set.data.qrels, runs, {"ndcg_cut.10", "map"}, beir_set.relevance_level
        )
        for ours, theirs in (("ndcg@10", "ndcg_cut_10"), ("map", "map")):
            expected = np.mean([v[theirs] for v in reference.values()])
            assert metrics[f"ood_{beir_set.name}_{ours}"] == pytest.approx(expected, abs=1e-12)

    names = ["scifact", "dl19", "wikiqa"]
    for metric in ("ndcg@10", "mrr@10", "map", "base_ndcg@10"):
        expected = np.mean([metrics[f"ood_{n}_{metric}"] for n in names])
        assert metrics[f"ood_mean_{metric}"] == pytest.approx(expected)
    assert suite.summary["set"].tolist() == [*names, "mean"]
    assert suite.summary["queries"].tolist() == [40, 10, 40, 90]
    assert suite.per_query.columns[0] == "set"
    assert len(suite.per_query) == 90


def test_beir_set_keeps_its_bm25_run(scifact_test):
    beir_set = BeirSet.scifact(max_queries=5)
    first = beir_set.first_stage(20)
    kept = beir_set.run
    assert beir_set.first_stage(10) == {q: hits[:10] for q, hits in first.items()}
    assert beir_set.run is kept  # no second retrieval for a shallower depth
    assert len(first) == 5 and all(len(h) == 20 for h in first.values())


def test_beir_set_from_pairs_builds_judgments(tmp_path):
    rows = [json.loads(x) for x in (shared_data("wikiqa") / "test.jsonl").open()][:30]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    beir_set = BeirSet.from_pairs("wikiqa", path)
    assert len(beir_set.data.queries) == len({r["query"] for r in rows})
    assert sum(len(j) for j in beir_set.data.qrels.values()) == len(rows)
    assert sum(g for j in beir_set.data.qrels.values() for g in j.values()) == sum(
        r["label"] for r in rows
    )
    rows[3]["label"] = 0.5
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataValidationError, match="row 4, column 'label'"):
        BeirSet.from_pairs("wikiqa", path)


def test_load_run_reads_tsv_and_trec_layouts(tmp_path, dl19):
    folder = shared_data("trec-dl-2019-passage")
    tsv = load_run(folder / "bm25_top100.tsv")
    lines = [
        f"{q} Q0 {d} {rank} {score} bm25"
        for q, hits in tsv.items()
        for rank, (d, score) in enumerate(hits, 1)
    ]
    (tmp_path / "run.trec").write_text("\n".join(lines) + "\n")
    assert load_run(tmp_path / "run.trec") == tsv
    assert sum(len(h) for h in tsv.values()) == 4300
    (tmp_path / "bad.trec").write_text("264014 Q0 5611210 1 high bm25\n")
    with pytest.raises(DataValidationError, match="line 1, column 'score'"):
        load_run(tmp_path / "bad.trec")


def test_suite_rejects_clashing_set_names():
    with pytest.raises(ValueError, match="distinct set names"):
        BeirSuiteEvaluator([BeirSet.scifact(max_queries=2), BeirSet.scifact(max_queries=3)])


# Classification and correlation with real models


@pytest.fixture(scope="module")
def stsb_test():
    rows = [json.loads(x) for x in (shared_data("stsb") / "test.jsonl").open()][:160]
    pairs = [(row["sentence1"], row["sentence2"]) for row in rows]
    return pairs, np.array([row["score"] for row in rows])


def test_correlation_of_a_real_model_equals_scipy_on_stsb(stsb_test, tiny_model):
    pairs, gold = stsb_test
    evaluator = CorrelationEvaluator(pairs, gold, name="stsb")
    scores = evaluator.score(tiny_model)
    metrics = evaluator.compute(scores)
    assert metrics["stsb_pearson"] == pytest.approx(stats.pearsonr(scores, gold)[0], abs=1e-12)
    assert metrics["stsb_spearman"] == pytest.approx(stats.spearmanr(scores, gold)[0], abs=1e-12)


def test_multiclass_of_a_real_three_label_model_equals_sklearn(stsb_test):
    pairs, gold = stsb_test
    labels = np.minimum(gold // 2, 2).astype(int)
    model = CrossEncoder("minilm-l6-tiny", num_labels=3, max_length=64)
    evaluator = ClassificationEvaluator(pairs, labels, name="stsb3")
    logits = evaluator.score(model)
    assert logits.shape == (len(pairs), 3)
    metrics = evaluator.compute(logits)
    predicted = logits.argmax(axis=1)
    assert metrics["stsb3_accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert metrics["stsb3_macro_f1"] == pytest.approx(
        skm.f1_score(labels, predicted, average="macro"), abs=1e-12
    )


# Paired significance with a real reranker


def _cached_scores(model: CrossEncoder, evaluator: RerankingEvaluator) -> list[np.ndarray]:
    """The model's scores of the evaluator's pairs, cached on disk by model and pairs."""
    digest = hashlib.sha256(f"{model.name_or_path}|{model.max_length}".encode())
    for query, passage in _pairs(evaluator.samples):
        digest.update(f"{query}\x1f{passage}\x1e".encode())
    path = cache_dir() / "scores" / f"test-{digest.hexdigest()[:24]}.npz"
    if path.exists():
        stored = np.load(path)
        return [stored[f"q{i}"] for i in range(len(stored.files))]
    scores = evaluator.score(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"q{i}": s for i, s in enumerate(scores)})
    return scores


@pytest.mark.slow
def test_paired_test_finds_the_reranker_significant_over_bm25_on_dl19(dl19, reranker):
    # 16 of the 43 queries, BM25 top 20: about 320 pairs, ~40 s on 2 cores when not cached.
    subset = dl19.head(16)
    runs = subset.first_stage(20)
    samples = build_samples(
        subset.data.queries, subset.data.qrels, dl19.data.corpus, runs, top_k=20
    )
    evaluator = RerankingEvaluator(samples, name="dl19", relevance_level=2)
    scores = _cached_scores(reranker, evaluator)
    evaluator.compute(scores)
    reranked = evaluator.per_query.copy()
    bm25 = reranked.drop(columns=["ndcg@10"]).rename(columns={"base_ndcg@10": "ndcg@10"})

    result = compare_runs(bm25, reranked, metric="ndcg@10", seed=0)
    assert result.mean_delta > 0.1
    assert result.randomization_p < 0.01
    assert result.t_test_p < 0.01
    itself = compare_runs(reranked, reranked.copy(), metric="ndcg@10")
    assert itself.randomization_p > 0.99 and itself.t_test_p == 1.0
