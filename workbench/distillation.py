"""Knowledge distillation: a teacher reranker's raw scores become a student's training labels."""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
from transformers import TrainingArguments

from workbench.losses import MarginMSELoss, MSELoss
from workbench.losses.base import negative_columns
from workbench.model import CrossEncoder
from workbench.trainer import CrossEncoderTrainer

logger = logging.getLogger(__name__)

DISTILLATION_LOSSES = {"mse": "pairs", "margin_mse": "tuples"}
LABEL_COLUMNS = ("label", "labels")


def add_teacher_scores(
    dataset: datasets.Dataset,
    teacher: CrossEncoder,
    *,
    batch_size: int = 32,
    column: str | None = None,
) -> datasets.Dataset:
    """Score every row with a teacher and store its raw logits as labels.

    Rows come in one of two shapes:

    - pairs (`query`, `passage`): one score per row, in `label` (what `MSELoss` reads);
    - tuples (`query`, `positive`, `negative_1..n`): a list of 1 + n scores, the positive's then
      each negative's, in `labels` (what `MarginMSELoss` reads as teacher scores; a list cannot
      go in `label`, which the collator reads as one number per row).

    The teacher scores with `activation="identity"`: the distillation losses compare raw logits.
    Existing `label` and `labels` columns (0/1 judgments, say) are replaced, so that training
    reads the teacher's scores and not the old labels.

    Args:
        dataset: Pairs or tuples.
        teacher: A one-label `CrossEncoder`, usually larger than the student.
        batch_size: Pairs per teacher forward pass.
        column: Where the scores go; `label` for pairs and `labels` for tuples when None.

    Returns:
        A new dataset with the scores column.

    Raises:
        ValueError: If the rows are neither pairs nor tuples with negatives, or the teacher has
            more than one label.

    Example:
        >>> scored = add_teacher_scores(pairs, CrossEncoder("ms-marco-minilm-l12"))
        >>> scored["label"][:2]
    """
    shape = _row_shape(dataset.column_names)
    if teacher.num_labels != 1:
        raise ValueError(
            f"`add_teacher_scores` expects a teacher with `num_labels=1`, but got "
            f"{teacher.num_labels}. Use a one-score reranker as the teacher."
        )
    if shape == "pairs":
        scores = _pair_scores(dataset, teacher, batch_size)
    else:
        scores = _tuple_scores(dataset, teacher, batch_size)
    column = column or ("label" if shape == "pairs" else "labels")

    # Old labels would shadow the scores: the collator reads `label` before `labels`.
    stale = {column, *LABEL_COLUMNS} if column in LABEL_COLUMNS else {column}
    replaced = [c for c in dataset.column_names if c in stale]
    if replaced:
        logger.info("Replacing column(s) %s with the teacher's scores", replaced)
    scored = dataset.remove_columns(replaced).add_column(column, scores)
    logger.info("Teacher scored %d %s rows into column %r", len(dataset), shape, column)
    return scored


def distill(
    student: CrossEncoder,
    teacher: CrossEncoder,
    dataset: datasets.Dataset,
    args: TrainingArguments,
    *,
    loss: str = "mse",
    batch_size: int = 32,
    evaluator=None,
    metrics_path: str | Path | None = None,
) -> CrossEncoderTrainer:
    """Train a student to reproduce a teacher's scores, in one call.

    Adds the teacher's raw scores (`add_teacher_scores`), then trains the student with
    `MSELoss` on pairs or `MarginMSELoss` on tuples (Hofstätter et al., 2020,
    arXiv:2010.02666).

    Args:
        student: The one-label `CrossEncoder` to train.
        teacher: The one-label `CrossEncoder` whose scores become the labels.
        dataset: Pairs (`query`, `passage`) for `"mse"`; tuples (`query`, `positive`,
            `negative_1..n`) for `"margin_mse"`. Existing labels are replaced by the scores.
        args: `TrainingArguments` of the student's training.
        loss: `"mse"` (match each pair's score) or `"margin_mse"` (match the positive's margin
            over each negative).
        batch_size: Pairs per teacher forward pass.
        evaluator: Passed to `CrossEncoderTrainer`.
        metrics_path: Passed to `CrossEncoderTrainer`.

    Returns:
        The trainer after training; `trainer.state.log_history` holds the losses.

    Raises:
        ValueError: On an unknown loss, rows of the other shape, or a model with several labels.

    Example:
        >>> trainer = distill(student, teacher, tuples, args, loss="margin_mse")
    """
    if loss not in DISTILLATION_LOSSES:
        raise ValueError(
            f"`distill` expects loss in {tuple(DISTILLATION_LOSSES)}, but got {loss!r}. Use "
            "'mse' for pairs or 'margin_mse' for tuples with negatives."
        )
    shape = _row_shape(dataset.column_names)
    if shape != DISTILLATION_LOSSES[loss]:
        other = next(k for k, v in DISTILLATION_LOSSES.items() if v == shape)
        raise ValueError(
            f"`distill` with loss={loss!r} expects {DISTILLATION_LOSSES[loss]}, but the dataset "
            f"holds {shape} (columns {dataset.column_names!r}). Use loss={other!r}."
        )

    # The loss vets the student before the teacher spends time scoring.
    module = MSELoss(student) if loss == "mse" else MarginMSELoss(student)
    scored = add_teacher_scores(dataset, teacher, batch_size=batch_size)
    trainer = CrossEncoderTrainer(
        student,
        args,
        train_dataset=scored,
        loss=module,
        evaluator=evaluator,
        metrics_path=metrics_path,
    )
    trainer.train()
    return trainer


def _row_shape(columns: list[str]) -> str:
    """`"pairs"` or `"tuples"` (with negatives); `ValueError` for anything else."""
    names = set(columns)
    if {"query", "passage"} <= names:
        return "pairs"
    if {"query", "positive"} <= names and negative_columns(columns):
        return "tuples"
    raise ValueError(
        "Distillation expects pairs (columns query, passage) or tuples (columns query, "
        f"positive, negative_1..n), but the dataset has columns {columns!r}. Add hard "
        "negatives to (query, positive) rows, e.g. from BM25."
    )


def _pair_scores(dataset: datasets.Dataset, teacher: CrossEncoder, batch_size: int) -> list:
    pairs = list(zip(dataset["query"], dataset["passage"], strict=True))
    return teacher.predict(pairs, batch_size=batch_size, activation="identity").tolist()


def _tuple_scores(
    dataset: datasets.Dataset, teacher: CrossEncoder, batch_size: int
) -> list[list[float]]:
    columns = ["positive", *negative_columns(dataset.column_names)]
    queries = list(dataset["query"])

    # One predict over every column keeps the teacher's length-sorted batches full.
    pairs = [pair for c in columns for pair in zip(queries, dataset[c], strict=True)]
    scores = teacher.predict(pairs, batch_size=batch_size, activation="identity")
    return scores.reshape(len(columns), len(queries)).T.tolist()  # (rows, 1 + num_negatives)
