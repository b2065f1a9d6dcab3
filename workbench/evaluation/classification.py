"""Score labelled pairs with a model and report classification metrics (binary or multi-class)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


class ClassificationEvaluator:
    """Score (text, text) pairs with a model and compare the scores with gold labels.

    Binary mode (a model with `num_labels == 1`, labels 0/1) searches the decision threshold over
    the scores, predicting positive when `score >= threshold`, and reports `f1`, `precision`,
    `recall` and `f1_threshold` at the best-F1 threshold, `accuracy` and `accuracy_threshold` at
    the best-accuracy threshold, and the threshold-free `average_precision`. A threshold of `inf`
    means predicting every pair negative was best. Multi-class mode (`num_labels > 1`, labels
    `0..num_labels - 1`) takes the arg-max label and reports `accuracy` and `macro_f1`, the
    unweighted mean F1 over the classes present in the labels or predictions.

    Metric keys are prefixed by `name`, e.g. `wikiqa-test_f1`.

    Args:
        pairs: The (text, text) pairs, e.g. (question, passage).
        labels: One integer label per pair.
        name: Metric prefix, e.g. `wikiqa-test`.
        batch_size: Pairs per forward pass.
        precision: Autocast precision for scoring.

    Raises:
        ValueError: If `pairs` is empty, the lengths differ, or a label is negative.
        TypeError: If a label is not an integer.

    Example:
        >>> evaluator = ClassificationEvaluator(pairs, labels, name="wikiqa-test")
        >>> evaluator(model)["wikiqa-test_average_precision"]
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        labels: Sequence[int],
        *,
        name: str = "",
        batch_size: int = 32,
        precision: str = "fp32",
    ) -> None:
        self.pairs = list(pairs)
        self.labels = _check_labels(labels, len(self.pairs))
        self.name = name
        self.batch_size = batch_size
        self.precision = precision
        self._binary = bool(self.labels.max() <= 1)

    @property
    def primary_metric(self) -> str:
        """`average_precision` in binary mode, `macro_f1` in multi-class mode.

        The mode is guessed from the labels until the first `compute`, which fixes it from the
        score shape (a 2-label model with 0/1 labels runs in multi-class mode).
        """
        return self._key("average_precision" if self._binary else "macro_f1")

    def __call__(self, model) -> dict[str, float]:
        """Score every pair with `model` and return the metrics."""
        return self.compute(self.score(model))

    def score(self, model) -> np.ndarray:
        """Model scores with the model's own activation: (num_pairs,) or (num_pairs, num_labels)."""
        scores = model.predict(self.pairs, batch_size=self.batch_size, precision=self.precision)
        return np.asarray(scores, dtype=np.float64)

    def compute(self, scores: np.ndarray) -> dict[str, float]:
        """Metrics from precomputed scores, one row per pair.

        Args:
            scores: Shape (num_pairs,) for binary mode, (num_pairs, num_labels) for multi-class.

        Returns:
            The metrics, keys prefixed by `name`.

        Raises:
            ValueError: If the shape does not match the pairs, or a label does not fit the mode.
        """
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim == 2 and scores.shape[1] == 1:
            scores = scores[:, 0]
        if scores.ndim not in (1, 2) or len(scores) != len(self.labels):
            raise ValueError(
                f"`ClassificationEvaluator` expects scores of shape ({len(self.labels)},) or "
                f"({len(self.labels)}, num_labels), but got {scores.shape}. Pass one row per pair."
            )
        self._binary = scores.ndim == 1
        metrics = _binary_metrics(scores, self.labels) if self._binary else self._multi(scores)
        metrics = {self._key(name): value for name, value in metrics.items()}
        logger.info(
            "%s %s: %.4f (%d pairs)",
            self.name or "classification",
            self.primary_metric,
            metrics[self.primary_metric],
            len(self.labels),
        )
        return metrics

    def _multi(self, scores: np.ndarray) -> dict[str, float]:
        num_labels = scores.shape[1]
        if self.labels.max() >= num_labels:
            raise ValueError(
                f"Labels must lie in 0..{num_labels - 1} for scores with {num_labels} columns, "
                f"but got label {int(self.labels.max())!r}. Use a model with more labels."
            )
        predicted = scores.argmax(axis=1)
        return {
            "accuracy": float(np.mean(predicted == self.labels)),
            "macro_f1": _macro_f1(self.labels, predicted),
        }

    def _key(self, metric: str) -> str:
        return f"{self.name}_{metric}" if self.name else metric


def _check_labels(labels: Sequence[int], num_pairs: int) -> np.ndarray:
    array = np.asarray(labels)
    if num_pairs == 0:
        raise ValueError("`ClassificationEvaluator` expects at least one pair, but got none.")
    if len(array) != num_pairs:
        raise ValueError(
            f"`ClassificationEvaluator` expects one label per pair, but got {len(array)} labels "
            f"for {num_pairs} pairs. Pass lists of the same length."
        )
    if array.dtype == bool:
        array = array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"`ClassificationEvaluator` expects integer labels, but got dtype {array.dtype}. "
            "Use `CorrelationEvaluator` for continuous scores."
        )
    if array.min() < 0:
        raise ValueError(
            f"Labels must be 0 or more, but got {int(array.min())!r}. Map classes to 0..n-1."
        )
    return array.astype(np.int64)


def _binary_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Threshold sweep over the distinct scores, best first; ties are cut together."""
    if labels.max() > 1:
        raise ValueError(
            f"Binary scores (one per pair) need 0/1 labels, but got label {int(labels.max())!r}. "
            "Use a model with num_labels equal to the number of classes."
        )
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]

    # Counts when predicting positive every pair with score >= each distinct score.
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    thresholds = sorted_scores[last_of_tie]
    tp = np.cumsum(sorted_labels)[last_of_tie].astype(np.float64)
    fp = last_of_tie + 1 - tp
    positives = float(labels.sum())
    negatives = len(labels) - positives

    precision = tp / (tp + fp)
    recall = tp / positives if positives else np.zeros_like(tp)
    average_precision = float(np.sum(np.diff(recall, prepend=0.0) * precision))

    # Predicting every pair negative (threshold inf) is a candidate too.
    tp, fp = np.r_[0.0, tp], np.r_[0.0, fp]
    thresholds = np.r_[np.inf, thresholds]
    f1 = _safe_divide(2 * tp, 2 * tp + fp + (positives - tp))
    accuracy = (tp + negatives - fp) / len(labels)
    best_f1, best_accuracy = int(np.argmax(f1)), int(np.argmax(accuracy))
    return {
        "accuracy": float(accuracy[best_accuracy]),
        "accuracy_threshold": float(thresholds[best_accuracy]),
        "f1": float(f1[best_f1]),
        "f1_threshold": float(thresholds[best_f1]),
        "precision": float(_safe_divide(tp, tp + fp)[best_f1]),
        "recall": float(tp[best_f1] / positives) if positives else 0.0,
        "average_precision": average_precision,
    }


def _macro_f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean F1 over the classes seen in labels or predictions (scikit-learn's default set)."""
    scores = []
    for label in np.union1d(labels, predicted):
        tp = np.sum((predicted == label) & (labels == label))
        fp = np.sum((predicted == label) & (labels != label))
        fn = np.sum((predicted != label) & (labels == label))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise division that gives 0 where the denominator is 0 (scikit-learn's convention)."""
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out
