"""Evaluators and the trec_eval-compatible ranking metrics behind them."""

from workbench.evaluation.metrics import average_precision, mrr_at_k, ndcg_at_k, rank_metrics
from workbench.evaluation.reranking import RerankingEvaluator, RerankingSample, build_samples

__all__ = [
    "RerankingEvaluator",
    "RerankingSample",
    "average_precision",
    "build_samples",
    "mrr_at_k",
    "ndcg_at_k",
    "rank_metrics",
]
