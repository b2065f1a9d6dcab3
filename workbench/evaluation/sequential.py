"""Run several evaluators as one and merge their metrics."""

from __future__ import annotations

import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)


class SequentialEvaluator:
    """Run evaluators one after another and merge their metric dicts.

    Each evaluator must return distinct keys; give evaluators of the same kind distinct names.

    Args:
        evaluators: Objects with `__call__(model) -> dict[str, float]` and a `primary_metric`.
        primary_metric: The merged key used for model selection; defaults to the first
            evaluator's primary metric.

    Raises:
        ValueError: If `evaluators` is empty.

    Example:
        >>> evaluator = SequentialEvaluator([dev_reranking, stsb_correlation])
        >>> evaluator(model)[evaluator.primary_metric]
    """

    def __init__(self, evaluators: Sequence, *, primary_metric: str | None = None) -> None:
        self.evaluators = list(evaluators)
        if not self.evaluators:
            raise ValueError(
                "`SequentialEvaluator` expects at least one evaluator, but got none. "
                "Pass a list of evaluators."
            )
        self._primary_metric = primary_metric

    @property
    def primary_metric(self) -> str:
        """The metric key used for model selection."""
        return self._primary_metric or self.evaluators[0].primary_metric

    def __call__(self, model) -> dict[str, float]:
        """Run every evaluator on `model` and return their metrics in one dict.

        Raises:
            ValueError: If two evaluators return the same key, or `primary_metric` is not among
                the merged keys.
        """
        metrics: dict[str, float] = {}
        for evaluator in self.evaluators:
            result = evaluator(model)
            clash = sorted(metrics.keys() & result.keys())
            if clash:
                raise ValueError(
                    f"`SequentialEvaluator` expects distinct metric keys, but {clash[:3]!r} came "
                    f"twice (from {type(evaluator).__name__}). Give each evaluator its own name."
                )
            metrics |= result

        if self.primary_metric not in metrics:
            raise ValueError(
                f"primary_metric {self.primary_metric!r} is not among the metrics "
                f"{sorted(metrics)!r}. Pass one of those keys."
            )
        return metrics
