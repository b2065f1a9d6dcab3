"""Pointwise losses: each (query, passage) pair is scored and judged on its own."""

from __future__ import annotations

import torch
from torch import nn

from workbench.losses.base import RerankingLoss


class BinaryCrossEntropyLoss(RerankingLoss):
    """Binary cross-entropy on the raw logit of each pair.

    Input: pairs (`query`, `passage`) with a `label` in [0, 1] (hard 0/1 or soft). Requires a
    model with `num_labels == 1`. With few positives per query, set `pos_weight` to the number of
    negatives per positive so both classes weigh the same.

    Args:
        model: The `CrossEncoder` being trained.
        pos_weight: Weight of the positive class (`BCEWithLogitsLoss(pos_weight=...)`).

    Raises:
        ValueError: If the model has more than one label, or `pos_weight` is not positive.
    """

    data_format = "pairs"

    def __init__(self, model, *, pos_weight: float | None = None) -> None:
        super().__init__(model)
        if model.num_labels != 1:
            raise ValueError(
                "`BinaryCrossEntropyLoss` expects a model with `num_labels=1`, but got "
                f"{model.num_labels}. Use `CrossEntropyLoss` for multi-class labels, or load the "
                "model with `CrossEncoder(..., num_labels=1)`."
            )
        if pos_weight is not None and pos_weight <= 0:
            raise ValueError(f"pos_weight must be positive, got {pos_weight!r}")
        self.pos_weight = pos_weight
        weight = None if pos_weight is None else torch.tensor(float(pos_weight))
        self.bce = nn.BCEWithLogitsLoss(pos_weight=weight)

    def forward(self, inputs: dict[str, list], labels: torch.Tensor) -> torch.Tensor:
        """Return the mean loss of a batch.

        Args:
            inputs: Columns `query` and `passage`.
            labels: Shape (batch,), values in [0, 1].
        """
        logits = self.score(inputs["query"], inputs["passage"])  # (batch,)
        self.bce.to(logits.device)
        return self.bce(logits, labels.float().view(-1).to(logits.device))

    def config(self) -> dict:
        return {"pos_weight": self.pos_weight}
