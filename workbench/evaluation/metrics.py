"""Ranking metrics computed the way trec_eval computes them.

Conventions (trec_eval 9.x): a run is sorted by score descending with ties broken by document
id descending; nDCG uses the graded labels as linear gains and the ideal ranking of *all* judged
documents of the query, retrieved or not; MAP and MRR are binary, a document counting as relevant
when its grade is at least `relevance_level`; MRR@k is the reciprocal rank in the run cut to k.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from workbench.retrieval import sort_run


def ndcg_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k of a ranked list of doc ids against graded judgments (unjudged count as 0)."""
    dcg = sum(
        _gain(qrels.get(doc, 0)) / math.log2(rank + 2) for rank, doc in enumerate(ranking[:k])
    )
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(
    ranking: Sequence[str], qrels: Mapping[str, int], k: int = 10, *, relevance_level: int = 1
) -> float:
    """Reciprocal rank of the first relevant document within the top k, else 0."""
    for rank, doc in enumerate(ranking[:k]):
        if qrels.get(doc, 0) >= relevance_level:
            return 1.0 / (rank + 1)
    return 0.0


def average_precision(
    ranking: Sequence[str], qrels: Mapping[str, int], *, relevance_level: int = 1
) -> float:
    """Average precision; the denominator counts every relevant judged document."""
    num_relevant = sum(1 for g in qrels.values() if g >= relevance_level)
    if num_relevant == 0:
        return 0.0
    hits, total = 0, 0.0
    for rank, doc in enumerate(ranking):
        if qrels.get(doc, 0) >= relevance_level:
            hits += 1
            total += hits / (rank + 1)
    return total / num_relevant


def recall_at_k(
    ranking: Sequence[str], qrels: Mapping[str, int], k: int, *, relevance_level: int = 1
) -> float:
    """Share of the query's relevant judged documents found in the top k (trec_eval `recall_k`).

    The denominator counts every judged document at `relevance_level` or above, retrieved or
    not; a run shorter than k is taken as it is. A query without relevant documents gives 0.
    """
    relevant = {doc for doc, grade in qrels.items() if grade >= relevance_level}
    if not relevant:
        return 0.0
    return sum(1 for doc in ranking[:k] if doc in relevant) / len(relevant)


def rank_metrics(
    run: Sequence[tuple[str, float]],
    qrels: Mapping[str, int],
    *,
    k: int = 10,
    relevance_level: int = 1,
) -> dict[str, float]:
    """`ndcg@k`, `mrr@k` and `map` of one query's scored run, sorted as trec_eval sorts it."""
    ranking = [doc for doc, _ in sort_run(list(run))]
    return {
        f"ndcg@{k}": ndcg_at_k(ranking, qrels, k),
        f"mrr@{k}": mrr_at_k(ranking, qrels, k, relevance_level=relevance_level),
        "map": average_precision(ranking, qrels, relevance_level=relevance_level),
    }


def _gain(grade: int) -> float:
    return float(grade) if grade > 0 else 0.0
