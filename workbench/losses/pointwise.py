"""Pointwise losses: each (query, passage) pair is scored and judged on its own."""

from __future__ import annotations

import torch
from torch import nn

from workbench.losses.base import RerankingLoss, check_single_label, full_precision


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


class CrossEntropyLoss(RerankingLoss):
    """Softmax cross-entropy over the model's classes, for graded or categorical labels.

    Input: pairs (`query`, `passage`) with an integer class `label` in [0, num_labels). Requires
    a model with `num_labels >= 2`, one output per class (for 0/1 labels and one output, use
    `BinaryCrossEntropyLoss`).

    Args:
        model: The `CrossEncoder` being trained.

    Raises:
        ValueError: If the model has a single output.
    """

    data_format = "pairs"

    def __init__(self, model) -> None:
        super().__init__(model)
        if model.num_labels < 2:
            raise ValueError(
                "`CrossEntropyLoss` expects a model with `num_labels` >= 2 (one per class), but "
                f"got {model.num_labels}. Use `BinaryCrossEntropyLoss` for a one-output model, "
                "or load the model with `CrossEncoder(..., num_labels=<classes>)`."
            )

    def forward(self, inputs: dict[str, list], labels: torch.Tensor) -> torch.Tensor:
        """Return the mean loss of a batch.

        Args:
            inputs: Columns `query` and `passage`.
            labels: Shape (batch,), whole numbers in [0, num_labels).

        Raises:
            ValueError: If a label is not a class index.
        """
        classes = _class_indices(labels, self.model.num_labels)
        logits = self.logits(inputs["query"], inputs["passage"])  # (batch, num_labels)
        with full_precision(logits.device):
            return nn.functional.cross_entropy(logits, classes.to(logits.device))


class MSELoss(RerankingLoss):
    """Mean squared error between the raw logit and a target score.

    Input: pairs (`query`, `passage`) with a float `label`, typically a teacher reranker's logit
    (distillation, as in Hofstätter et al., 2020, arXiv:2010.02666). Requires a model with
    `num_labels == 1`.

    Args:
        model: The `CrossEncoder` being trained.

    Raises:
        ValueError: If the model has more than one label.
    """

    data_format = "pairs"

    def __init__(self, model) -> None:
        super().__init__(model)
        check_single_label(self, "Use `CrossEntropyLoss` for multi-class labels.")

    def forward(self, inputs: dict[str, list], labels: torch.Tensor) -> torch.Tensor:
        """Return the mean loss of a batch.

        Args:
            inputs: Columns `query` and `passage`.
            labels: Shape (batch,), target scores.

        Raises:
            ValueError: If there is not one label per pair.
        """
        if labels is None or labels.numel() != len(inputs["query"]):
            shape = None if labels is None else tuple(labels.shape)
            raise ValueError(
                f"`MSELoss` expects one float label per pair ({len(inputs['query'])}), but got "
                f"labels of shape {shape!r}. Give the dataset a numeric `label` column."
            )
        logits = self.score(inputs["query"], inputs["passage"])  # (batch,)
        with full_precision(logits.device):
            return nn.functional.mse_loss(logits, labels.float().view(-1).to(logits.device))


def _class_indices(labels: torch.Tensor | None, num_labels: int) -> torch.Tensor:
    """Check float labels from the collator are class indices and return them as int64."""
    if labels is None or labels.dim() != 1:
        shape = None if labels is None else tuple(labels.shape)
        raise ValueError(
            "`CrossEntropyLoss` expects one class index per pair (labels of shape (batch,)), "
            f"but got labels of shape {shape!r}. Give the dataset an integer `label` column."
        )
    labels = labels.float()
    bad = (labels != labels.round()) | (labels < 0) | (labels >= num_labels)
    if bad.any():
        raise ValueError(
            f"`CrossEntropyLoss` expects labels that are class indices in [0, {num_labels}), but "
            f"got {labels[bad][0].item()!r}. Map labels to 0..{num_labels - 1}, or load the model "
            "with as many labels as classes."
        )
    return labels.long()
