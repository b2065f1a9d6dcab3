"""What every loss shares: the model it trains, the data format it accepts, fp32 scoring."""

from __future__ import annotations

import contextlib
import re

import torch
from torch import nn

NEGATIVE_COLUMN = re.compile(r"^negative_\d+$")

# Data formats by the columns they carry (besides an optional `label`).
FORMATS = {
    "pairs": "columns query, passage and a numeric label",
    "tuples": "columns query, positive and optional negative_1..n",
    "lists": "columns query, documents (a list) and labels (a list of the same length)",
}

# Losses that fit each format, best default first, with why one would pick them.
_SUGGESTIONS = {
    "pairs": {
        "BinaryCrossEntropyLoss": "0/1 or soft labels in [0, 1]; set pos_weight to the number "
        "of negatives per positive",
        "CrossEntropyLoss": "integer class labels; load the model with num_labels = classes",
        "MSELoss": "float labels such as a teacher's scores (distillation)",
    },
    "tuples": {
        "MultipleNegativesRankingLoss": "positive against hard and in-batch negatives",
        "CachedMultipleNegativesRankingLoss": "the same with large batches in bounded memory",
        "MarginMSELoss": "teacher margins (or scores) in a label column (distillation)",
    },
    "lists": {
        "LambdaLoss": "graded labels; optimizes NDCG (NDCG-Loss2++ weighting)",
        "ListNetLoss": "graded labels or teacher scores; matches the top-one distributions",
        "PListMLELoss": "lists in relevance order; position-aware ListMLE",
        "ListMLELoss": "lists in relevance order; likelihood of the whole ranking",
        "RankNetLoss": "graded labels; every misordered pair weighs the same",
    },
}


class RerankingLoss(nn.Module):
    """Base of the workbench losses.

    A loss is a module whose `forward(inputs, labels)` takes the batch's text columns (column name
    -> list of values) and the labels tensor (or None), and returns a scalar tensor or a dict of
    named scalar parts (summed for the backward pass; each part is logged on its own).

    Subclasses set `data_format` to a key of `FORMATS`; `check_columns` then rejects a dataset of
    another shape before training starts.

    Args:
        model: The `CrossEncoder` being trained.
    """

    data_format = "pairs"

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def check_columns(self, columns: list[str]) -> None:
        """Raise `ValueError` naming the expected format when `columns` do not fit this loss."""
        if detect_format(columns) != self.data_format:
            raise ValueError(
                f"`{type(self).__name__}` expects {self.data_format} "
                f"({FORMATS[self.data_format]}), but the dataset has columns {columns!r}."
            )

    def logits(
        self, queries: list[str], passages: list[str], *, mini_batch_size: int | None = None
    ) -> torch.Tensor:
        """Raw logits of (query, passage) pairs in fp32.

        Args:
            queries: One query per pair.
            passages: One passage per pair.
            mini_batch_size: Pairs per forward pass; all at once when None.

        Returns:
            Shape (len(queries), num_labels).
        """
        pairs = list(zip(queries, passages, strict=True))
        size = mini_batch_size or max(len(pairs), 1)
        chunks = []
        for start in range(0, len(pairs), size):
            features = self.model.tokenize(pairs[start : start + size])
            chunks.append(self.model.logits(features).float())
        return torch.cat(chunks)

    def score(
        self, queries: list[str], passages: list[str], *, mini_batch_size: int | None = None
    ) -> torch.Tensor:
        """Raw logits of (query, passage) pairs, shape (len(queries),), in fp32."""
        return self.logits(queries, passages, mini_batch_size=mini_batch_size).view(-1)

    def config(self) -> dict:
        """Settings recorded in the run folder and model card."""
        return {}


def full_precision(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Turn autocast off on `device`, so a loss's own arithmetic runs in the dtype it is given.

    Losses feed fp32 logits into this block: sums over many pairs and exponentials lose too much
    in bf16 or fp16.
    """
    return torch.autocast(torch.device(device).type, enabled=False)


def check_single_label(loss: RerankingLoss, hint: str = "") -> None:
    """Raise `ValueError` unless the loss's model has one output label.

    Args:
        loss: The loss being built (its class names the error).
        hint: A sentence appended to the message, e.g. which loss fits multi-label models.
    """
    if loss.model.num_labels != 1:
        raise ValueError(
            f"`{type(loss).__name__}` expects a model with `num_labels=1`, but got "
            f"{loss.model.num_labels}. Load the model with `CrossEncoder(..., num_labels=1)`."
            + (f" {hint}" if hint else "")
        )


def detect_format(columns: list[str]) -> str | None:
    """Name the data format of a column set, or None when it is none of `FORMATS`.

    `query` and `positive` without negative columns count as tuples: in-batch losses take the
    other rows' positives as negatives.
    """
    names = set(columns)
    if {"query", "passage", "label"} <= names:
        return "pairs"
    if {"query", "documents", "labels"} <= names:
        return "lists"
    if {"query", "positive"} <= names:
        return "tuples"
    return None


def negative_columns(columns) -> list[str]:
    """The `negative_<i>` columns among `columns`, by number (`negative_2` before `negative_10`)."""
    found = [c for c in columns if NEGATIVE_COLUMN.match(c)]
    return sorted(found, key=lambda c: int(c.rsplit("_", 1)[1]))


def suggest_losses(columns: list[str]) -> dict[str, str]:
    """Name the losses that can train on a dataset with these columns.

    Each loss works with its default settings; `BinaryCrossEntropyLoss`'s `pos_weight` depends on
    the labels, which the caller counts.

    Args:
        columns: The dataset's column names.

    Returns:
        Loss class name -> why to pick it, best default first; empty when no format fits.

    Example:
        >>> list(suggest_losses(["query", "documents", "labels"]))[0]
        'LambdaLoss'
    """
    data_format = detect_format(columns)
    suggestions = dict(_SUGGESTIONS.get(data_format, {}))
    has_negatives = bool(negative_columns(columns))
    has_labels = bool({"label", "labels"} & set(columns))
    if data_format == "tuples" and not (has_negatives and has_labels):
        del suggestions["MarginMSELoss"]
    return suggestions


def recommend_losses(dataset) -> list[dict]:
    """The losses that fit a dataset, best first, each with default settings for that data.

    For `BinaryCrossEntropyLoss` on 0/1 labels, `pos_weight` is the number of negatives per
    positive, so both classes weigh the same.

    Args:
        dataset: A `datasets.Dataset` (or anything with `column_names` and column access).

    Returns:
        Dicts with `loss` (class name), `reason` and `settings` (keyword arguments).
    """
    columns = list(dataset.column_names)
    recommendations = []
    for name, reason in suggest_losses(columns).items():
        settings = {}
        if name == "BinaryCrossEntropyLoss":
            positives = sum(1 for y in dataset["label"] if float(y) > 0.5)
            negatives = len(dataset) - positives
            if positives and negatives:
                settings["pos_weight"] = round(negatives / positives, 3)
        recommendations.append({"loss": name, "reason": reason, "settings": settings})
    return recommendations
