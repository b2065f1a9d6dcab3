"""Training losses: each takes the `CrossEncoder` first and turns a batch into a loss."""

from workbench.losses.base import (
    RerankingLoss,
    detect_format,
    recommend_losses,
    suggest_losses,
)
from workbench.losses.in_batch import (
    CachedMultipleNegativesRankingLoss,
    MultipleNegativesRankingLoss,
)
from workbench.losses.listwise import LambdaLoss, ListMLELoss, ListNetLoss, PListMLELoss
from workbench.losses.pairwise import MarginMSELoss, RankNetLoss
from workbench.losses.pointwise import BinaryCrossEntropyLoss, CrossEntropyLoss, MSELoss

__all__ = [
    "BinaryCrossEntropyLoss",
    "CachedMultipleNegativesRankingLoss",
    "CrossEntropyLoss",
    "LambdaLoss",
    "ListMLELoss",
    "ListNetLoss",
    "MSELoss",
    "MarginMSELoss",
    "MultipleNegativesRankingLoss",
    "PListMLELoss",
    "RankNetLoss",
    "RerankingLoss",
    "detect_format",
    "recommend_losses",
    "suggest_losses",
]
