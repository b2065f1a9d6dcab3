"""Training guardrails, as Trainer callbacks: a stop on a non-finite training loss, score-collapse
detection at each evaluation, and the baseline-first rule (the final model is never worse than
the best evaluation, the starting model's included).
"""

from __future__ import annotations

import logging
import math

from transformers import TrainerCallback

from workbench.distributed import any_rank

logger = logging.getLogger(__name__)

_STD = "score_std"
_MARGIN = "score_margin"
# A start margin below this share of the start spread is noise (a fresh head), not separation.
_CLEAR_MARGIN = 0.1


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the run stopped before saving those weights."""


class DivergenceCallback(TrainerCallback):
    """Stop training at the first step whose loss is NaN or infinite, without saving it.

    The trainer reports each training step's loss through `record(loss)`; the check costs one
    device sync per step (transformers' own NaN filter already pays it). After the stop,
    `diverged` holds the step and the loss, and checkpoints written before it stay as they were.
    """

    def __init__(self) -> None:
        self.diverged: dict | None = None
        self._bad_loss: float | None = None

    def record(self, loss) -> None:
        value = float(loss.detach())
        if self.diverged is None and not math.isfinite(value):
            self._bad_loss = value

    def on_step_end(self, args, state, control, **kwargs):
        if self.diverged is not None:
            return
        # Under DDP one rank's bad loss stops them all at the same step.
        if not any_rank(self._bad_loss is not None):
            return
        loss = self._bad_loss if self._bad_loss is not None else math.nan
        self.diverged = {"step": state.global_step, "loss": loss}
        control.should_training_stop = True
        # Weights after a NaN step are NaN: no checkpoint or evaluation of them.
        control.should_save = control.should_evaluate = False
        if not state.is_world_process_zero:
            return
        logger.warning(
            "Training loss is %s at step %d with learning rate %g: training stops here. %s",
            loss,
            state.global_step,
            args.learning_rate,
            divergence_advice(args.learning_rate),
        )


def divergence_advice(learning_rate: float) -> str:
    """What to try after a diverged run, for people."""
    return (
        f"Lower the learning rate (e.g. {learning_rate / 10:g}), keep warmup on, and check the "
        "labels for the loss; the checkpoints saved before this step are kept."
    )


class CollapseCallback(TrainerCallback):
    """Flag evaluations where the model's scores collapsed, and log `<prefix>collapsed` (0 or 1).

    Reads each `eval_<set>_score_std` and `eval_<set>_score_margin` that a `RerankingEvaluator`
    reports (the mean within-query spread of raw scores, and mean relevant minus mean other
    score). After the first step a set counts as collapsed when its spread fell to `min_std`
    or below, or below `min_std_ratio` times its spread at step 0; or when its margin fell to
    0 or below after the starting model clearly separated relevant from other candidates (a
    margin above a tenth of its spread; a fresh head's margin is noise), or when step 0 was not
    evaluated. Each collapse is logged as a warning. `CrossEncoderTrainer` adds this callback
    whenever it has an evaluator.

    Args:
        min_std: Spread at or below which scores count as constant.
        min_std_ratio: Spread, relative to step 0's, below which scores count as collapsed.

    Attributes:
        collapsed: (step, metric prefix) of every collapsed evaluation so far.
    """

    def __init__(self, *, min_std: float = 1e-6, min_std_ratio: float = 0.01) -> None:
        self.min_std = min_std
        self.min_std_ratio = min_std_ratio
        self.start: dict[str, tuple[float, float]] = {}
        self.collapsed: list[tuple[int, str]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run evaluated step 0 before its checkpoint: the figures are in its log.
        for entry in state.log_history:
            if entry.get("step") != 0:
                continue
            for key in [k for k in entry if k.endswith(_STD)]:
                prefix = key[: -len(_STD)]
                margin = entry.get(prefix + _MARGIN, math.nan)
                self.start.setdefault(prefix, (entry[key], margin))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        for key in [k for k in metrics or {} if k.endswith(_STD)]:
            prefix = key[: -len(_STD)]
            std, margin = metrics[key], metrics.get(prefix + _MARGIN, math.nan)
            if state.global_step == 0:
                self.start[prefix] = (std, margin)
                metrics[prefix + "collapsed"] = 0.0
                continue
            reasons = self._reasons(prefix, std, margin)
            metrics[prefix + "collapsed"] = float(bool(reasons))
            if reasons and state.is_world_process_zero:
                self.collapsed.append((state.global_step, prefix))
                logger.warning(
                    "Step %d: the scores on %s collapsed (%s). Lower the learning rate, check "
                    "the labels, or keep an earlier checkpoint.",
                    state.global_step,
                    prefix.removeprefix("eval_").rstrip("_") or "the eval set",
                    "; ".join(reasons),
                )

    def _reasons(self, prefix: str, std: float, margin: float) -> list[str]:
        start_std, start_margin = self.start.get(prefix, (math.nan, math.nan))
        reasons = []
        floor = self.min_std
        if not math.isnan(start_std):
            floor = max(floor, self.min_std_ratio * start_std)
        if std <= floor:
            reasons.append(f"score spread {std:.3g}, at step 0 {start_std:.3g}")
        separated = math.isnan(start_margin) or start_margin > _CLEAR_MARGIN * start_std
        if margin <= 0 and separated:
            reasons.append(
                f"relevant minus other score {margin:+.3g}, at step 0 {start_margin:+.3g}"
            )
        return reasons


class BaselineFirstCallback(TrainerCallback):
    """End training with the weights of the best evaluation, the starting model's included.

    The Trainer's `load_best_model_at_end` only chooses among saved checkpoints, never the
    model it started from. This callback copies the weights (to CPU memory) at each new best
    value of the metric, step 0 included (set `eval_on_start=True`), and loads the best copy at
    the end of training; a later evaluation must beat the best strictly. When no evaluation beat
    the start, the final model is the starting model and `kept_start` is True
    (`CrossEncoderTrainer.kept_start_model` reports it).

    A run resumed from a checkpoint takes the scores of earlier evaluations from the Trainer's
    log; their weights are gone, so the Trainer's best checkpoint (`load_best_model_at_end`)
    stands for them, and a starting model that stays best cannot be restored (a warning says
    so).

    Args:
        metric: The metric to compare, with or without the `eval_` prefix; defaults to
            `args.metric_for_best_model`.
        greater_is_better: Defaults to `args.greater_is_better`, else True unless the metric
            ends with `loss`.

    Attributes:
        start_score: The metric at step 0, or None.
        best_score: The best value seen.
        best_step: The step of the best value.
        best_trained_score: The best value after step 0, or None.
        kept_start: True when training ended on the starting model's weights.

    Raises:
        ValueError: At the start of training, if no metric is given or set in the arguments.
    """

    def __init__(self, metric: str | None = None, *, greater_is_better: bool | None = None):
        self.metric = metric
        self.greater_is_better = greater_is_better
        self.start_score: float | None = None
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.best_trained_score: float | None = None
        self.kept_start = False
        self._weights = None

    def on_train_begin(self, args, state, control, **kwargs):
        metric = self.metric or args.metric_for_best_model
        if metric is None:
            raise ValueError(
                "`BaselineFirstCallback` needs a metric, but got none and "
                "args.metric_for_best_model is unset. Pass metric='eval_<name>_ndcg@10'."
            )
        self.metric = metric if metric.startswith("eval_") else f"eval_{metric}"
        if self.greater_is_better is None:
            chosen = args.greater_is_better if self.metric == _eval(args) else None
            self.greater_is_better = chosen if chosen is not None else not metric.endswith("loss")
        for entry in state.log_history if state.global_step > 0 else []:
            if self.metric in entry:
                self._record(entry["step"], entry[self.metric])
        if not args.eval_on_start and self.start_score is None:
            logger.warning(
                "eval_on_start is off, so the starting model is never evaluated and cannot be "
                "kept. Set eval_on_start=True."
            )

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if not metrics or self.metric not in metrics or model is None:
            return
        if self._record(state.global_step, metrics[self.metric]):
            self._weights = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            }

    def _record(self, step: int, value: float) -> bool:
        """Note one evaluation; True when it is the new best."""
        if step == 0 and self.start_score is None:
            self.start_score = value
        elif step > 0 and (
            self.best_trained_score is None or self._better(value, self.best_trained_score)
        ):
            self.best_trained_score = value
        if self.best_score is None or self._better(value, self.best_score):
            self.best_score, self.best_step = value, step
            return True
        return False

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._weights is None and self.best_step == 0:
            logger.warning(
                "The starting model scored best on %s (%.4f at step 0), but this run resumed "
                "from a checkpoint and no longer holds its weights; the final model is the best "
                "checkpoint. Train again without resuming to keep the starting model.",
                self.metric,
                self.start_score,
            )
        if self._weights is None or model is None:
            return
        model.load_state_dict(self._weights)
        self._weights = None
        self.kept_start = self.best_step == 0
        if self.kept_start:
            logger.warning(
                "Training never beat the starting model on %s (%.4f at step 0, best later %s); "
                "the final model is the starting model.",
                self.metric,
                self.start_score,
                "none" if self.best_trained_score is None else f"{self.best_trained_score:.4f}",
            )
        else:
            logger.info(
                "Final model: the weights of step %d (%s %.4f)",
                self.best_step,
                self.metric,
                self.best_score,
            )

    def _better(self, value: float, best: float) -> bool:
        return value > best if self.greater_is_better else value < best


def _eval(args) -> str | None:
    metric = args.metric_for_best_model
    if metric is None:
        return None
    return metric if metric.startswith("eval_") else f"eval_{metric}"
