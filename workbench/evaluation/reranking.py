"""Rerank first-stage candidates with a cross-encoder and score both orders (MAP, MRR, nDCG)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from workbench.evaluation.metrics import ndcg_at_k, rank_metrics, recall_at_k
from workbench.retrieval import scores_to_run, sort_run

logger = logging.getLogger(__name__)


@dataclass
class RerankingSample:
    """One query with its first-stage candidates and judgments.

    Attributes:
        query_id: The query's id.
        query: The query text.
        candidates: (doc_id, text, first_stage_score), in first-stage order.
        qrels: doc_id -> graded label, for every judged document of the query.
        missed: (doc_id, text) of relevant documents the first stage did not return; used by the
            optimistic setting only.
    """

    query_id: str
    query: str
    candidates: list[tuple[str, str, float]]
    qrels: dict[str, int]
    missed: list[tuple[str, str]] = field(default_factory=list)


class RerankingEvaluator:
    """Score first-stage candidates with a model and report ranking metrics.

    Metrics (prefixed by `name`): `ndcg@k`, `mrr@k`, `map` of the reranked candidates in the
    realistic setting (positives the first stage missed stay missed); `base_*` for the first-stage
    order; `optimistic_*` with the missed positives added to the candidates. Values equal
    trec_eval's (see `workbench.evaluation.metrics`). Queries without a document at
    `relevance_level` are skipped and counted in `skipped_queries`.

    Also reported: `base_recall@c`, the first stage's recall at each cut-off c (trec_eval's
    `recall_c`: relevant candidates in the top c over all relevant judged documents);
    `ndcg@k_depth<d>` for each rerank depth d, nDCG@k when only the first stage's top d are
    reranked and the rest keep their first-stage order (build the samples to the deepest depth:
    every candidate is scored once); `score_std` and `score_margin`, the mean over queries of
    the spread of the model's raw scores and of mean(relevant) - mean(other candidates), which
    reveal a model whose scores collapsed (see `workbench.guardrails`). `per_query` holds every
    metric per query; `per_query.to_csv(path)` saves it.

    Args:
        samples: The queries to rerank.
        name: Metric prefix, e.g. `scifact-dev`.
        k: Cut-off for nDCG and MRR.
        relevance_level: Minimum grade that counts as relevant for MAP and MRR (TREC DL: 2).
        optimistic: Also report the optimistic setting.
        depths: Rerank depths for the `ndcg@k_depth<d>` sweep, e.g. (10, 30, 100, 200).
        recall_at: First-stage recall cut-offs; defaults to k, the depths and the deepest
            candidate list.
        batch_size: Pairs per forward pass.
        precision: Autocast precision for scoring.

    Example:
        >>> evaluator = RerankingEvaluator(samples, name="scifact-dev")
        >>> evaluator(model)["scifact-dev_ndcg@10"]
    """

    def __init__(
        self,
        samples: Sequence[RerankingSample],
        *,
        name: str = "",
        k: int = 10,
        relevance_level: int = 1,
        optimistic: bool = False,
        depths: Sequence[int] = (),
        recall_at: Sequence[int] | None = None,
        batch_size: int = 32,
        precision: str = "fp32",
    ) -> None:
        self.samples = [s for s in samples if _has_relevant(s.qrels, relevance_level)]
        self.skipped_queries = len(samples) - len(self.samples)
        if self.skipped_queries:
            logger.info("Skipping %d queries without a relevant judgment", self.skipped_queries)
        if not self.samples:
            raise ValueError("RerankingEvaluator needs at least one query with a relevant document")
        self.name = name
        self.k = k
        self.relevance_level = relevance_level
        self.optimistic = optimistic
        self.depths = _check_cutoffs("depths", depths)
        deepest = max(len(s.candidates) for s in self.samples)
        self.recall_at = _check_cutoffs(
            "recall_at", recall_at if recall_at is not None else {k, deepest, *self.depths}
        )
        self.batch_size = batch_size
        self.precision = precision
        self.per_query: pd.DataFrame | None = None

    @property
    def primary_metric(self) -> str:
        """The metric key used for model selection."""
        return self._key(f"ndcg@{self.k}")

    @property
    def num_pairs(self) -> int:
        """Pairs scored by one call (optimistic extras included)."""
        extra = sum(len(s.missed) for s in self.samples) if self.optimistic else 0
        return sum(len(s.candidates) for s in self.samples) + extra

    def __call__(self, model) -> dict[str, float]:
        """Score every candidate with `model` and return the metrics."""
        return self.compute(self.score(model))

    def score(self, model) -> list[np.ndarray]:
        """Model scores per query: candidates first, then missed positives when optimistic."""
        pairs, sizes = [], []
        for sample in self.samples:
            texts = [text for _, text, _ in sample.candidates]
            if self.optimistic:
                texts += [text for _, text in sample.missed]
            pairs += [(sample.query, text) for text in texts]
            sizes.append(len(texts))
        scores = model.predict(
            pairs, batch_size=self.batch_size, activation="identity", precision=self.precision
        )
        return np.split(np.asarray(scores, dtype=np.float64), np.cumsum(sizes)[:-1])

    def compute(self, scores: Sequence[np.ndarray]) -> dict[str, float]:
        """Metrics from precomputed scores (as returned by `score`); fills `per_query`."""
        rows = []
        for sample, query_scores in zip(self.samples, scores, strict=True):
            rows.append(self._query_row(sample, query_scores))
        self.per_query = pd.DataFrame(rows)

        metrics = self.per_query.drop(columns=["query_id"]).mean().to_dict()
        metrics = {self._key(name): float(value) for name, value in metrics.items()}
        logger.info(
            "%s nDCG@%d: first stage %.4f -> reranked %.4f (%d queries)",
            self.name or "reranking",
            self.k,
            metrics[self._key(f"base_ndcg@{self.k}")],
            metrics[self.primary_metric],
            len(self.samples),
        )
        return metrics

    def _query_row(self, sample: RerankingSample, scores: np.ndarray) -> dict:
        ids = [doc for doc, _, _ in sample.candidates]
        n = len(ids)
        first_stage = [(doc, score) for doc, _, score in sample.candidates]
        row = {"query_id": sample.query_id}
        row |= self._metrics(first_stage, sample.qrels, "base_")
        base_order = [doc for doc, _ in sort_run(first_stage)]
        for cutoff in self.recall_at:
            row[f"base_recall@{cutoff}"] = recall_at_k(
                base_order, sample.qrels, cutoff, relevance_level=self.relevance_level
            )
        row |= self._metrics(scores_to_run(ids, scores[:n]), sample.qrels, "")
        row |= self._depth_sweep(base_order, dict(zip(ids, scores[:n], strict=True)), sample.qrels)
        row |= _score_spread(ids, scores[:n], sample.qrels, self.relevance_level)
        if self.optimistic:
            all_ids = ids + [doc for doc, _ in sample.missed]
            row |= self._metrics(scores_to_run(all_ids, scores), sample.qrels, "optimistic_")
        return row

    def _depth_sweep(
        self, base_order: list[str], scores: Mapping[str, float], qrels: Mapping[str, int]
    ) -> dict[str, float]:
        """nDCG@k with the first stage's top d reranked and its tail left in place, per depth."""
        row = {}
        for depth in self.depths:
            head = base_order[:depth]
            reranked = scores_to_run(head, np.array([scores[doc] for doc in head]))
            ranking = [doc for doc, _ in reranked] + base_order[depth:]
            row[f"ndcg@{self.k}_depth{depth}"] = ndcg_at_k(ranking, qrels, self.k)
        return row

    def _metrics(self, run, qrels: Mapping[str, int], prefix: str) -> dict[str, float]:
        values = rank_metrics(run, qrels, k=self.k, relevance_level=self.relevance_level)
        return {prefix + name: value for name, value in values.items()}

    def _key(self, metric: str) -> str:
        return f"{self.name}_{metric}" if self.name else metric


def build_samples(
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    corpus: Mapping[str, str],
    runs: Mapping[str, Sequence[tuple[str, float]]],
    *,
    top_k: int,
) -> list[RerankingSample]:
    """Build reranking samples from first-stage runs (query_id -> [(doc_id, score)], best first).

    Args:
        queries: Query id -> text; only queries with judgments and a run are used.
        qrels: Query id -> {doc_id: grade}.
        corpus: Doc id -> text; must hold every candidate and, for the optimistic setting, the
            missed relevant documents (those absent are left out of `missed`).
        runs: First-stage results per query.
        top_k: Candidates kept per query.

    Returns:
        One sample per query, in `runs` order.
    """
    samples = []
    for query_id, run in runs.items():
        if query_id not in qrels:
            continue
        top = list(run)[:top_k]
        seen = {doc for doc, _ in top}
        missed = [
            (doc, corpus[doc])
            for doc, grade in qrels[query_id].items()
            if grade > 0 and doc not in seen and doc in corpus
        ]
        candidates = [(doc, corpus[doc], float(score)) for doc, score in top]
        samples.append(
            RerankingSample(query_id, queries[query_id], candidates, dict(qrels[query_id]), missed)
        )
    return samples


def _has_relevant(qrels: Mapping[str, int], level: int) -> bool:
    return any(grade >= level for grade in qrels.values())


def _score_spread(
    ids: list[str], scores: np.ndarray, qrels: Mapping[str, int], level: int
) -> dict[str, float]:
    """Spread of one query's scores, and relevant minus other mean (nan without both kinds)."""
    relevant = np.array([qrels.get(doc, 0) >= level for doc in ids])
    margin = float("nan")
    if relevant.any() and not relevant.all():
        margin = float(scores[relevant].mean() - scores[~relevant].mean())
    return {"score_std": float(np.std(scores)), "score_margin": margin}


def _check_cutoffs(argument: str, values) -> list[int]:
    values = sorted(set(values))
    if any(not isinstance(v, int | np.integer) or v < 1 for v in values):
        raise ValueError(
            f"`RerankingEvaluator` expects {argument} as positive integers, but got {values!r}. "
            "Pass e.g. (10, 30, 100)."
        )
    return [int(v) for v in values]
