"""What every loss shares: the model it trains and the data format it accepts."""

from __future__ import annotations

import re

import torch
from torch import nn

NEGATIVE_COLUMN = re.compile(r"^negative_\d+$")

# Data formats by the columns they carry (besides an optional `label`).
FORMATS = {
    "pairs": "columns query, passage and a numeric label",
    "tuples": "columns query, positive, negative_1..n (no label)",
    "lists": "columns query, documents (a list) and labels (a list of the same length)",
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

    def score(self, queries: list[str], passages: list[str]) -> torch.Tensor:
        """Raw logits of (query, passage) pairs, shape (len(queries),), in fp32."""
        features = self.model.tokenize(list(zip(queries, passages, strict=True)))
        return self.model.model(**features).logits.view(-1).float()

    def config(self) -> dict:
        """Settings recorded in the run folder and model card."""
        return {}


def detect_format(columns: list[str]) -> str | None:
    """Name the data format of a column set, or None when it is none of `FORMATS`."""
    names = set(columns)
    if {"query", "passage", "label"} <= names:
        return "pairs"
    if {"query", "documents", "labels"} <= names:
        return "lists"
    if {"query", "positive"} <= names and any(NEGATIVE_COLUMN.match(c) for c in names):
        return "tuples"
    return None
