"""Evaluators and the trec_eval-compatible ranking metrics behind them."""

from workbench.evaluation.beir_suite import BeirSet, BeirSuiteEvaluator
from workbench.evaluation.classification import ClassificationEvaluator
from workbench.evaluation.compare import RunComparison, compare_runs, comparison_figures
from workbench.evaluation.correlation import CorrelationEvaluator
from workbench.evaluation.metrics import (
    average_precision,
    mrr_at_k,
    ndcg_at_k,
    rank_metrics,
    recall_at_k,
)
from workbench.evaluation.reranking import RerankingEvaluator, RerankingSample, build_samples
from workbench.evaluation.sequential import SequentialEvaluator

__all__ = [
    "BeirSet",
    "BeirSuiteEvaluator",
    "ClassificationEvaluator",
    "CorrelationEvaluator",
    "RerankingEvaluator",
    "RerankingSample",
    "RunComparison",
    "SequentialEvaluator",
    "average_precision",
    "build_samples",
    "compare_runs",
    "comparison_figures",
    "mrr_at_k",
    "ndcg_at_k",
    "rank_metrics",
    "recall_at_k",
]
