"""Score pairs with a model and correlate the scores with gold similarity scores."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


class CorrelationEvaluator:
    """Pearson and Spearman correlation between model scores and gold scores of pairs.

    Spearman is the Pearson correlation of the ranks, with tied values given their average rank.
    A constant score list has no correlation: both metrics are then `nan`, with a warning.
    Metric keys are prefixed by `name`, e.g. `stsb-dev_spearman`.

    Args:
        pairs: The (text, text) pairs.
        scores: One gold score per pair, e.g. STS-B's 0-5 similarity.
        name: Metric prefix, e.g. `stsb-dev`.
        batch_size: Pairs per forward pass.
        precision: Autocast precision for scoring.

    Raises:
        ValueError: If there are fewer than 2 pairs, the lengths differ, or a score is not finite.

    Example:
        >>> evaluator = CorrelationEvaluator(pairs, gold, name="stsb-dev")
        >>> evaluator(model)["stsb-dev_spearman"]
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        scores: Sequence[float],
        *,
        name: str = "",
        batch_size: int = 32,
        precision: str = "fp32",
    ) -> None:
        self.pairs = list(pairs)
        self.gold = _check_scores(scores, len(self.pairs), "gold scores")
        self.name = name
        self.batch_size = batch_size
        self.precision = precision

    @property
    def primary_metric(self) -> str:
        """The metric key used for model selection: Spearman."""
        return self._key("spearman")

    def __call__(self, model) -> dict[str, float]:
        """Score every pair with `model` and return the metrics."""
        return self.compute(self.score(model))

    def score(self, model) -> np.ndarray:
        """Model scores with the model's own activation, shape (num_pairs,)."""
        scores = model.predict(self.pairs, batch_size=self.batch_size, precision=self.precision)
        return np.asarray(scores, dtype=np.float64)

    def compute(self, scores: Sequence[float]) -> dict[str, float]:
        """Metrics from precomputed scores, one per pair.

        Raises:
            ValueError: If the scores do not match the pairs one to one, or one is not finite.
        """
        predicted = _check_scores(scores, len(self.gold), "predicted scores")
        metrics = {
            self._key("pearson"): pearson(predicted, self.gold),
            self._key("spearman"): spearman(predicted, self.gold),
        }
        logger.info(
            "%s Pearson %.4f, Spearman %.4f (%d pairs)",
            self.name or "correlation",
            metrics[self._key("pearson")],
            metrics[self.primary_metric],
            len(self.gold),
        )
        return metrics

    def _key(self, metric: str) -> str:
        return f"{self.name}_{metric}" if self.name else metric


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two equal-length arrays; `nan` when either is constant."""
    x, y = x - x.mean(), y - y.mean()
    norm = np.sqrt(np.sum(x * x) * np.sum(y * y))
    if norm == 0:
        logger.warning("A score list is constant, so its correlation is undefined (nan)")
        return float("nan")
    return float(np.clip(np.sum(x * y) / norm, -1.0, 1.0))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation: Pearson of the average ranks."""
    return pearson(average_ranks(x), average_ranks(y))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share their mean rank ([10, 20, 20] -> [1, 2.5, 2.5])."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]

    # Each run of equal values spans positions start..end (0-based, inclusive).
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:] - 1, len(values) - 1]
    run_ranks = (starts + ends) / 2 + 1
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, ends - starts + 1)
    return ranks


def _check_scores(scores: Sequence[float], expected: int, what: str) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.shape != (expected,):
        raise ValueError(
            f"`CorrelationEvaluator` expects {what} of shape ({expected},), one per pair, but got "
            f"{array.shape}. Pass one score per pair from a model with num_labels=1."
        )
    if expected < 2:
        raise ValueError(
            f"`CorrelationEvaluator` expects at least 2 pairs, but got {expected}. Add pairs."
        )
    if not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ValueError(
            f"`CorrelationEvaluator` expects finite {what}, but row {bad} holds {array[bad]!r}. "
            "Drop or fix that row."
        )
    return array
