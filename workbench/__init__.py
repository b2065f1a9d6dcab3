"""Reranker Workbench: fine-tune and evaluate cross-encoder rerankers on your own data."""

from workbench.data import DataValidationError, load_beir, load_pairs, load_tuples
from workbench.distillation import add_teacher_scores, distill
from workbench.evaluation import RerankingEvaluator
from workbench.losses import (
    BinaryCrossEntropyLoss,
    CachedMultipleNegativesRankingLoss,
    CrossEntropyLoss,
    LambdaLoss,
    ListMLELoss,
    ListNetLoss,
    MarginMSELoss,
    MSELoss,
    MultipleNegativesRankingLoss,
    PListMLELoss,
    RankNetLoss,
    RerankingLoss,
)
from workbench.model import CrossEncoder
from workbench.retrieval import BM25Retriever
from workbench.sampling import (
    MultiDatasetBatchSampler,
    NamedConcatDataset,
    NoDuplicatesBatchSampler,
)
from workbench.trainer import CrossEncoderTrainer

__version__ = "0.1.0"

__all__ = [
    "BM25Retriever",
    "BinaryCrossEntropyLoss",
    "CachedMultipleNegativesRankingLoss",
    "CrossEncoder",
    "CrossEncoderTrainer",
    "CrossEntropyLoss",
    "DataValidationError",
    "LambdaLoss",
    "ListMLELoss",
    "ListNetLoss",
    "MSELoss",
    "MarginMSELoss",
    "MultiDatasetBatchSampler",
    "MultipleNegativesRankingLoss",
    "NamedConcatDataset",
    "NoDuplicatesBatchSampler",
    "PListMLELoss",
    "RankNetLoss",
    "RerankingEvaluator",
    "RerankingLoss",
    "add_teacher_scores",
    "distill",
    "load_beir",
    "load_pairs",
    "load_tuples",
]
