"""Distillation: teacher scores on real SciFact rows, then a few real student steps."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from transformers import set_seed

from tests.conftest import training_args
from workbench import CrossEncoder, add_teacher_scores, distill
from workbench.job import training_pairs


@pytest.fixture(scope="module")
def teacher():
    """A stand-in teacher: the tiny model with its own seeded head (the 12-layer one is slow)."""
    set_seed(1)
    return CrossEncoder("minilm-l6-tiny", max_length=64)


@pytest.fixture(scope="module")
def pairs(scifact_job):
    """24 real pairs with 0/1 labels, which the teacher's scores replace."""
    return training_pairs(scifact_job, negatives=3).select(range(24))


@pytest.fixture(scope="module")
def tuples(scifact_job):
    """(query, positive, negative_1, negative_2) rows: a judged positive and two BM25 negatives."""
    rows = {"query": [], "positive": [], "negative_1": [], "negative_2": []}
    for query_id, query in list(scifact_job.train.items())[:12]:
        judged = scifact_job.train_qrels[query_id]
        hard = [d for d, _ in scifact_job.runs[query_id] if d not in judged][:2]
        texts = [next(iter(judged)), *hard]
        rows["query"].append(query)
        for column, doc_id in zip(list(rows)[1:], texts, strict=True):
            rows[column].append(scifact_job.beir.corpus[doc_id])
    return datasets.Dataset.from_dict(rows)


def _args(tmp_path):
    return training_args(tmp_path)


def _student():
    set_seed(2)
    return CrossEncoder("minilm-l6-tiny", max_length=64)


def test_add_teacher_scores_writes_the_teachers_raw_logits(pairs, teacher):
    scored = add_teacher_scores(pairs, teacher, batch_size=8)

    expected = teacher.predict(
        list(zip(pairs["query"], pairs["passage"], strict=True)),
        batch_size=8,
        activation="identity",
    )
    assert scored["label"] == expected.tolist()
    assert scored.column_names == ["query", "passage", "label"]
    # Raw logits, not probabilities: the sigmoid of the same pairs differs.
    assert not np.allclose(scored["label"], 1 / (1 + np.exp(-expected)))


def test_add_teacher_scores_gives_tuples_positive_then_negative_scores(tuples, teacher):
    scored = add_teacher_scores(tuples, teacher, batch_size=8)

    labels = np.array(scored["labels"])  # (rows, 1 + num_negatives)
    assert labels.shape == (len(tuples), 3)
    for k, column in enumerate(["positive", "negative_1", "negative_2"]):
        pairs = list(zip(tuples["query"], tuples[column], strict=True))
        expected = teacher.predict(pairs, batch_size=8, activation="identity")
        assert labels[:, k] == pytest.approx(expected, abs=1e-5)


def test_add_teacher_scores_rejects_rows_of_another_shape(teacher):
    rows = datasets.Dataset.from_dict({"query": ["q"], "positive": ["p"]})
    with pytest.raises(ValueError, match=r"expects pairs \(columns query, passage\) or tuples"):
        add_teacher_scores(rows, teacher)


@pytest.mark.parametrize(
    ("loss", "rows", "column"), [("mse", "pairs", "label"), ("margin_mse", "tuples", "labels")]
)
def test_distill_trains_the_student_on_teacher_scores(
    loss, rows, column, teacher, request, tmp_path
):
    student = _student()
    before = student.model.classifier.weight.clone()

    trainer = distill(student, teacher, request.getfixturevalue(rows), _args(tmp_path), loss=loss)

    assert not torch.equal(before, student.model.classifier.weight)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert column in trainer.train_dataset.column_names


def test_distill_rejects_a_loss_that_does_not_fit_the_rows(pairs, teacher, tmp_path):
    with pytest.raises(
        ValueError, match=r"loss='margin_mse' expects tuples, but the dataset holds"
    ):
        distill(_student(), teacher, pairs, _args(tmp_path), loss="margin_mse")


def test_distill_rejects_an_unknown_loss(pairs, teacher, tmp_path):
    with pytest.raises(ValueError, match=r"expects loss in \('mse', 'margin_mse'\), but got 'kl'"):
        distill(_student(), teacher, pairs, _args(tmp_path), loss="kl")
