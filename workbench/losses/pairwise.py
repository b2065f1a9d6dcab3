"""Pairwise losses: a passage is judged against another passage for the same query."""

from __future__ import annotations

import torch
from torch import nn

from workbench.losses.base import (
    RerankingLoss,
    check_single_label,
    full_precision,
    negative_columns,
)
from workbench.losses.listwise import LambdaLoss


class RankNetLoss(LambdaLoss):
    """RankNet: logistic loss on the score difference of every pair with different labels.

    Input: lists (`query`, `documents`, `labels`) with graded labels. Requires a model with
    `num_labels == 1`. From Burges et al., 2005, "Learning to Rank using Gradient Descent"
    (ICML); it is `LambdaLoss` with no weighting, every misordered pair weighing the same.

    Args:
        model: The `CrossEncoder` being trained.
        k: Keep only pairs with a document in the predicted top `k`; all when None.
        sigma: Steepness of the logistic on score differences.
        eps: Floor of the ideal DCG (unused by the unweighted loss, kept for `LambdaLoss`).
        reduction_log: `"binary"` (log2) or `"natural"`.
        mini_batch_size: Pairs per forward pass; all at once when None.
    """

    def __init__(
        self,
        model,
        *,
        k: int | None = None,
        sigma: float = 1.0,
        eps: float = 1e-10,
        reduction_log: str = "binary",
        mini_batch_size: int | None = None,
    ) -> None:
        super().__init__(
            model,
            weighting_scheme="none",
            k=k,
            sigma=sigma,
            eps=eps,
            reduction_log=reduction_log,
            mini_batch_size=mini_batch_size,
        )

    def config(self) -> dict:
        config = super().config()
        del config["weighting_scheme"], config["mu"]
        return config


class MarginMSELoss(RerankingLoss):
    """Margin-MSE: match the student's positive-minus-negative margins to a teacher's.

    Input: tuples (`query`, `positive`, `negative_1..n`) with teacher labels, either the margins
    (a `labels` list of n numbers, or a `label` number when n is 1) or the raw teacher scores of
    the positive and each negative (a `labels` list of 1 + n numbers). Requires a model with
    `num_labels == 1`. From Hofstätter et al., 2020, "Improving Efficient Neural Ranking Models
    with Cross-Architecture Knowledge Distillation" (arXiv:2010.02666).

    Args:
        model: The `CrossEncoder` being trained.

    Raises:
        ValueError: If the model has more than one label.
    """

    data_format = "tuples"

    def __init__(self, model) -> None:
        super().__init__(model)
        check_single_label(self)

    def check_columns(self, columns: list[str]) -> None:
        """Also require at least one negative column and a teacher label column."""
        super().check_columns(columns)
        if not negative_columns(columns) or not {"label", "labels"} & set(columns):
            raise ValueError(
                "`MarginMSELoss` expects tuples with negative_1..n columns and teacher labels "
                f"(`labels` or `label`), but the dataset has columns {columns!r}. Add teacher "
                "margins or scores, or use `MultipleNegativesRankingLoss` without them."
            )

    def forward(self, inputs: dict[str, list], labels: torch.Tensor) -> torch.Tensor:
        """Return the mean squared error over all (query, negative) margins.

        Args:
            inputs: Columns `query`, `positive` and `negative_1..n`.
            labels: Teacher margins (batch, n), teacher scores (batch, 1 + n), or (batch,) when
                n is 1.

        Raises:
            ValueError: If the labels fit neither shape.
        """
        negatives = negative_columns(inputs)
        batch = len(inputs["query"])
        margins = _teacher_margins(labels, batch, len(negatives))

        # One forward over all columns: positives first, then each negative column.
        passages = [p for column in ["positive", *negatives] for p in inputs[column]]
        logits = self.score(inputs["query"] * (1 + len(negatives)), passages)
        logits = logits.view(1 + len(negatives), batch).T  # (batch, 1 + num_negatives)
        with full_precision(logits.device):
            student = logits[:, :1] - logits[:, 1:]  # (batch, num_negatives)
            return nn.functional.mse_loss(student, margins.to(logits.device))


def _teacher_margins(labels: torch.Tensor | None, batch: int, negatives: int) -> torch.Tensor:
    """Teacher margins (batch, negatives) from margins or raw scores; see `MarginMSELoss`."""
    if negatives == 0:
        raise ValueError(
            "`MarginMSELoss` expects at least one negative_<i> column, but the batch has none. "
            "Add hard negatives with teacher margins, or use `MultipleNegativesRankingLoss`."
        )
    shape = None if labels is None else tuple(labels.shape)
    if shape == (batch,) and negatives == 1:
        return labels.float().view(batch, 1)
    if shape == (batch, negatives):
        return labels.float()
    if shape == (batch, 1 + negatives):
        labels = labels.float()
        return labels[:, :1] - labels[:, 1:]
    raise ValueError(
        f"`MarginMSELoss` expects teacher labels of shape {(batch, negatives)} (margins) or "
        f"{(batch, 1 + negatives)} (positive and negative scores) for {negatives} negative "
        f"column(s), but got {shape!r}. Give each row a `labels` list of margins or scores."
    )
