"""Turn a reranker's raw scores into probabilities that mean what they say.

Platt scaling (a logistic curve) or isotonic regression (a monotone step curve) is fitted on
labelled dev pairs; the expected calibration error before and after, and a suggested decision
threshold, come with it. The calibration is saved next to the model as `calibration.json` and
applied by `CrossEncoder.predict(pairs, calibrated=True)`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
METHODS = ("platt", "isotonic")


@dataclass
class Calibration:
    """A fitted map from raw scores (logits) to probabilities.

    Attributes:
        method: `platt` or `isotonic`.
        parameters: Platt: `a`, `b` in sigmoid(a * score + b). Isotonic: `x` (scores) and `y`
            (probabilities), interpolated linearly between points and held flat outside them.
        threshold: Suggested decision threshold on the calibrated probability: predicting
            relevant when probability >= threshold gave the best F1 on the fitting pairs.
        f1: That best F1.
        ece_before: Expected calibration error of sigmoid(raw score).
        ece_after: Expected calibration error of the calibrated probability.
        ece_pairs: Where the two errors were measured: `held-out` or `fit` (the fitting pairs,
            optimistic for isotonic regression).
        bins: Equal-width probability bins used for the errors.
        num_pairs: Pairs the calibration was fitted on.
    """

    method: str
    parameters: dict
    threshold: float
    f1: float
    ece_before: float
    ece_after: float
    ece_pairs: str
    bins: int
    num_pairs: int

    def __call__(self, scores: Sequence[float]) -> np.ndarray:
        """Calibrated probabilities of raw scores (logits), same shape."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.method == "platt":
            return _sigmoid(self.parameters["a"] * scores + self.parameters["b"])
        return np.interp(scores, self.parameters["x"], self.parameters["y"])

    def save(self, folder: str | Path) -> Path:
        """Write `calibration.json` into `folder` (a saved model's folder)."""
        path = Path(folder) / CALIBRATION_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Calibration | None:
        """Read `calibration.json` from `folder`; None when the folder has none.

        Raises:
            ValueError: If the file is not a calibration this version can read.
        """
        path = Path(folder) / CALIBRATION_FILE
        if not path.is_file():
            return None
        values = json.loads(path.read_text(encoding="utf-8"))
        if values.get("method") not in METHODS:
            raise ValueError(
                f"{path}: expected a method in {METHODS}, but got {values.get('method')!r}. "
                "Refit with `workbench.calibration.calibrate` or delete the file."
            )
        return cls(**values)


def calibrate(
    model,
    pairs: Sequence[tuple[str, str]],
    labels: Sequence[int],
    *,
    method: str = "platt",
    held_out: tuple[Sequence[tuple[str, str]], Sequence[int]] | None = None,
    bins: int = 10,
    batch_size: int = 32,
) -> Calibration:
    """Fit a calibration on a model's raw scores of labelled pairs and attach it to the model.

    The model keeps it as `model.calibration`; `model.save_pretrained` writes it and
    `model.predict(pairs, calibrated=True)` applies it.

    Args:
        model: A `CrossEncoder` with one label.
        pairs: Labelled dev (query, passage) pairs, never the test pairs.
        labels: 1 (relevant) or 0 per pair.
        method: `platt` (2 parameters; safe on a few hundred pairs) or `isotonic` (any
            monotone curve; wants more data).
        held_out: Other labelled pairs to measure the calibration error on.
        bins: Equal-width bins for the expected calibration error.
        batch_size: Pairs per forward pass.

    Returns:
        The fitted calibration.

    Example:
        >>> calibration = calibrate(model, dev_pairs, dev_labels, method="isotonic")
        >>> model.predict(pairs, calibrated=True) >= calibration.threshold
    """
    scores = model.predict(pairs, batch_size=batch_size, activation="identity")
    held_out_scores = None
    if held_out is not None:
        held_pairs, held_labels = held_out
        held_scores = model.predict(held_pairs, batch_size=batch_size, activation="identity")
        held_out_scores = (held_scores, held_labels)
    calibration = fit_calibration(
        scores, labels, method=method, held_out=held_out_scores, bins=bins
    )
    model.calibration = calibration
    return calibration


def fit_calibration(
    scores: Sequence[float],
    labels: Sequence[int],
    *,
    method: str = "platt",
    held_out: tuple[Sequence[float], Sequence[int]] | None = None,
    bins: int = 10,
) -> Calibration:
    """Fit a calibration on precomputed raw scores (logits), see `calibrate`.

    Raises:
        ValueError: On an unknown method, mismatched lengths, labels other than 0/1, or
            labels of one class only.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, but got {method!r}.")
    scores, labels = _check_scored(scores, labels)
    parameters = fit_platt(scores, labels) if method == "platt" else fit_isotonic(scores, labels)
    calibration = Calibration(method, parameters, 0.0, 0.0, 0.0, 0.0, "fit", bins, len(labels))
    calibration.threshold, calibration.f1 = best_f1_threshold(calibration(scores), labels)

    check_scores, check_labels = scores, labels
    if held_out is not None:
        check_scores, check_labels = _check_scored(*held_out)
        calibration.ece_pairs = "held-out"
    calibration.ece_before = expected_calibration_error(
        _sigmoid(check_scores), check_labels, bins=bins
    )
    calibration.ece_after = expected_calibration_error(
        calibration(check_scores), check_labels, bins=bins
    )
    logger.info(
        "%s calibration on %d pairs: ECE %.4f -> %.4f (%d %s pairs); threshold %.4f (F1 %.4f)",
        method,
        len(labels),
        calibration.ece_before,
        calibration.ece_after,
        len(check_labels),
        calibration.ece_pairs,
        calibration.threshold,
        calibration.f1,
    )
    return calibration


def fit_platt(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Platt scaling: a, b minimising the log loss of sigmoid(a * score + b).

    Targets are Platt's smoothed labels, (positives + 1) / (positives + 2) and
    1 / (negatives + 2), which keep a separable set from pushing a to infinity (Platt,
    "Probabilistic outputs for support vector machines", 1999); Newton's method with step
    halving.
    """
    positives = labels.sum()
    negatives = len(labels) - positives
    targets = np.where(labels == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    a, b = 0.0, float(np.log((positives + 1) / (negatives + 1)))
    loss = _platt_loss(scores, targets, a, b)
    for _ in range(100):
        p = _sigmoid(a * scores + b)
        weights = p * (1 - p) + 1e-12
        gradient = np.array([np.sum((p - targets) * scores), np.sum(p - targets)])
        hessian = np.array(
            [
                [np.sum(weights * scores * scores), np.sum(weights * scores)],
                [np.sum(weights * scores), np.sum(weights)],
            ]
        )
        step = np.linalg.solve(hessian + 1e-12 * np.eye(2), gradient)

        # Halve the Newton step until the loss does not rise.
        scale = 1.0
        new_loss = _platt_loss(scores, targets, a - step[0], b - step[1])
        while new_loss > loss and scale > 1e-10:
            scale /= 2
            new_loss = _platt_loss(scores, targets, a - scale * step[0], b - scale * step[1])
        if new_loss > loss:
            break
        converged = loss - new_loss <= 1e-13 * max(1.0, loss)
        a, b, loss = a - scale * step[0], b - scale * step[1], new_loss
        if converged:
            break
    return {"a": float(a), "b": float(b)}


def fit_isotonic(scores: np.ndarray, labels: np.ndarray) -> dict[str, list[float]]:
    """Isotonic regression: the non-decreasing fit of labels on scores (pool adjacent violators).

    Equal scores are pooled first; only the points where the fitted value changes are kept, so
    prediction interpolates linearly between steps and is flat beyond the ends (as
    scikit-learn's `IsotonicRegression(out_of_bounds="clip")`).
    """
    x, inverse = np.unique(scores, return_inverse=True)
    weights = np.bincount(inverse).astype(np.float64)
    means = np.bincount(inverse, weights=labels.astype(np.float64)) / weights
    fitted = _pool_adjacent_violators(means, weights)

    # Keep the first and last point of each constant run.
    keep = np.ones(len(x), dtype=bool)
    if len(x) > 2:
        keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
    return {"x": x[keep].tolist(), "y": np.clip(fitted[keep], 0.0, 1.0).tolist()}


def expected_calibration_error(
    probabilities: Sequence[float], labels: Sequence[int], *, bins: int = 10
) -> float:
    """Expected calibration error of the positive-class probability, equal-width bins.

    Sum over bins of (pairs in bin / all pairs) * |share of positives - mean probability|.
    Bins are (i / bins, (i + 1) / bins], the first one closed at 0 (as scikit-learn's
    `calibration_curve` with `strategy="uniform"`).
    """
    probabilities, labels = _check_scored(probabilities, labels, need_both=False)
    if np.any((probabilities < 0) | (probabilities > 1)):
        raise ValueError("probabilities must lie in [0, 1]; apply a sigmoid to raw scores first.")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges[1:-1], probabilities)
    counts = np.bincount(which, minlength=bins)
    positives = np.bincount(which, weights=labels, minlength=bins)
    confidence = np.bincount(which, weights=probabilities, minlength=bins)
    filled = counts > 0
    gaps = np.abs(positives[filled] - confidence[filled])  # count * |share - mean probability|
    return float(gaps.sum() / len(labels))


def best_f1_threshold(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold t (one of the probabilities) whose rule probability >= t gives the best F1.

    Returns:
        (threshold, F1); ties between thresholds go to the highest one.
    """
    order = np.argsort(-probabilities, kind="stable")
    values, sorted_labels = probabilities[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(values)), len(values) - 1]
    tp = np.cumsum(sorted_labels)[last_of_tie].astype(np.float64)
    predicted = last_of_tie + 1
    f1 = 2 * tp / (predicted + labels.sum())
    best = int(np.argmax(f1))
    return float(values[last_of_tie][best]), float(f1[best])


def _pool_adjacent_violators(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-decreasing fit of `values`, in their given order."""
    means, totals, sizes = [], [], []
    for value, weight in zip(values, weights, strict=True):
        means.append(value)
        totals.append(weight)
        sizes.append(1)
        # Merge the last two blocks while they break the order.
        while len(means) > 1 and means[-2] >= means[-1]:
            weight = totals[-2] + totals[-1]
            means[-2] = (means[-2] * totals[-2] + means[-1] * totals[-1]) / weight
            totals[-2] = weight
            sizes[-2] += sizes[-1]
            del means[-1], totals[-1], sizes[-1]
    return np.repeat(means, sizes)


def _platt_loss(scores: np.ndarray, targets: np.ndarray, a: float, b: float) -> float:
    """Cross-entropy of sigmoid(a * s + b) against soft targets, computed without overflow."""
    z = a * scores + b
    # -log sigmoid(z) = softplus(-z); -log(1 - sigmoid(z)) = softplus(z)
    return float(np.sum(targets * np.logaddexp(0, -z) + (1 - targets) * np.logaddexp(0, z)))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0, -z))


def _check_scored(scores, labels, *, need_both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or scores.shape != labels.shape or len(scores) == 0:
        raise ValueError(
            f"Calibration expects one score per label, as 1-D arrays, but got scores of shape "
            f"{scores.shape} and labels of shape {labels.shape}. Score with a 1-label model."
        )
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError(
            f"Calibration expects labels 0 or 1, but got {sorted(set(labels.tolist()))[:5]!r}. "
            "Binarise graded labels first (e.g. label >= 1)."
        )
    if need_both and len(np.unique(labels)) < 2:
        raise ValueError(
            "Calibration needs both relevant (1) and non-relevant (0) pairs, but got one class "
            "only. Add pairs of the other class."
        )
    return scores, labels.astype(np.int64)
