"""Training guardrails on real training runs: score collapse and the baseline-first rule."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import set_seed

from tests.conftest import tiny_job_config, training_args
from workbench import BinaryCrossEntropyLoss, CrossEncoder, CrossEncoderTrainer
from workbench.evaluation.reranking import RerankingEvaluator, build_samples
from workbench.guardrails import BaselineFirstCallback, CollapseCallback
from workbench.job import JobConfig, baseline_first_note, prepare_data, training_pairs


@pytest.fixture(scope="module")
def job_data():
    return prepare_data(JobConfig(dev_queries=12, max_train_queries=32, max_test_queries=1))


@pytest.fixture(scope="module")
def dev(job_data):
    runs = {q: job_data.runs[q] for q in job_data.dev}
    samples = build_samples(
        job_data.dev, job_data.train_qrels, job_data.beir.corpus, runs, top_k=10
    )
    return RerankingEvaluator(samples, name="dev")


def _train(tmp_path, job_data, dev, learning_rate: float, resume=None, **options):
    """4 steps of BCE on SciFact pairs from the tiny model, dev evaluations at steps 0, 2, 4;
    `options` override the training arguments, `resume` is a checkpoint to go on from."""
    set_seed(0)
    model = CrossEncoder("minilm-l6-tiny", max_length=96)
    start = {k: v.clone() for k, v in model.model.state_dict().items()}
    values = dict(
        per_device_train_batch_size=8,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        eval_on_start=True,
        metric_for_best_model="dev_ndcg@10",
    )
    args = training_args(tmp_path, **(values | options))
    trainer = CrossEncoderTrainer(
        model,
        args,
        train_dataset=training_pairs(job_data, negatives=3),
        evaluator=dev,
        loss=BinaryCrossEntropyLoss(model, pos_weight=3.0),
        metrics_path=tmp_path / "metrics.jsonl",
        callbacks=[BaselineFirstCallback()],
    )
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    evals = [e for e in trainer.state.log_history if "eval_dev_ndcg@10" in e]
    return trainer, model, start, evals


def test_huge_learning_rate_collapses_and_the_start_model_is_kept(tmp_path, job_data, dev, caplog):
    with caplog.at_level(logging.WARNING, logger="workbench.guardrails"):
        trainer, model, start, evals = _train(tmp_path, job_data, dev, learning_rate=1.0)

    # Every score of a query is the same number after a step at lr 1.
    assert [e["step"] for e in evals] == [0, 2, 4]
    assert [e["eval_dev_collapsed"] for e in evals] == [0.0, 1.0, 1.0]
    assert evals[-1]["eval_dev_score_std"] < 1e-6
    assert "scores on dev collapsed" in caplog.text
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["eval_dev_collapsed"] for x in lines if "eval_dev_collapsed" in x] == [0, 1, 1]

    # Training never beat step 0, so the final model is the starting model, and the report says so.
    assert max(e["eval_dev_ndcg@10"] for e in evals[1:]) < evals[0]["eval_dev_ndcg@10"]
    assert trainer.kept_start_model
    after = model.model.state_dict()
    assert all(torch.equal(start[k], after[k].cpu()) for k in start)
    assert "did not beat the starting model on dev dev_ndcg@10" in baseline_first_note(trainer)


def test_healthy_training_does_not_collapse_and_ends_on_the_best_evaluation(
    tmp_path, job_data, dev
):
    trainer, model, start, evals = _train(tmp_path, job_data, dev, learning_rate=1e-3)

    assert [e["eval_dev_collapsed"] for e in evals] == [0.0, 0.0, 0.0]
    guard = next(c for c in trainer.callback_handler.callbacks if isinstance(c, CollapseCallback))
    assert guard.collapsed == []

    best = max(evals, key=lambda e: e["eval_dev_ndcg@10"])
    assert best["step"] > 0
    assert not trainer.kept_start_model
    assert baseline_first_note(trainer) == ""
    assert dev(model)["dev_ndcg@10"] == pytest.approx(best["eval_dev_ndcg@10"])


def test_baseline_first_needs_a_metric(tmp_path, job_data):
    model = CrossEncoder("minilm-l6-tiny", max_length=32)
    trainer = CrossEncoderTrainer(
        model,
        training_args(tmp_path, max_steps=1),
        train_dataset=training_pairs(job_data, negatives=1).select(range(4)),
        callbacks=[BaselineFirstCallback()],
    )
    with pytest.raises(ValueError, match="needs a metric"):
        trainer.train()


def test_guardrails_of_a_resumed_run_keep_the_step_0_reference(tmp_path, job_data, dev, caplog):
    # lr 1 collapses the scores by step 2, so the starting model is best; a kill after the
    # checkpoint at step 2 is the same as a first run of 2 steps.
    options = dict(save_strategy="steps", save_steps=2, load_best_model_at_end=True)
    first, _, _, evals = _train(tmp_path, job_data, dev, 1.0, max_steps=2, **options)
    assert first.kept_start_model

    # Resumed to step 4: step 0 is not evaluated again.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="workbench.guardrails"):
        resumed, _, _, _ = _train(
            tmp_path,
            job_data,
            dev,
            1.0,
            resume=tmp_path / "checkpoints" / "checkpoint-2",
            eval_on_start=False,
            **options,
        )
    assert resumed.state.global_step == 4
    guards = [_callback(t, BaselineFirstCallback) for t in (first, resumed)]
    assert guards[1].start_score == guards[0].start_score == evals[0]["eval_dev_ndcg@10"]
    assert (guards[1].best_step, guards[1].best_score) == (0, guards[0].best_score)
    assert _callback(resumed, CollapseCallback).start == _callback(first, CollapseCallback).start
    assert "eval_on_start is off" not in caplog.text
    # Its weights are gone: the resumed run says it ends on the best checkpoint instead.
    assert "this run resumed from a checkpoint and no longer holds its weights" in caplog.text
    assert not resumed.kept_start_model


def _callback(trainer, kind):
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, kind))


def test_diverging_learning_rate_stops_the_job_and_keeps_the_last_good_checkpoint(tmp_path):
    from workbench.guardrails import TrainingDiverged
    from workbench.job import run_job
    from workbench.runs import last_checkpoint, run_state

    config = tiny_job_config(
        max_train_queries=30,
        dev_queries=6,
        max_test_queries=3,
        freeze_layers=0,
        batch_size=8,
        learning_rate=1e5,
        max_steps=12,
    )
    with pytest.raises(TrainingDiverged, match=r"became nan at step \d+.*Lower the learning rate"):
        run_job(config, tmp_path)

    state = run_state(tmp_path)
    assert state.state == "failed" and "Last good checkpoint: checkpoint-" in state.error
    assert not (tmp_path / "final").exists()
    events = [e for e in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in e]
    stopped_at = int(state.error.split("at step ")[1].split(" ")[0])
    assert stopped_at < 12 and len(events) == stopped_at
    kept = last_checkpoint(tmp_path / "checkpoints")
    assert int(kept.name.split("-")[1]) < stopped_at
    weights = CrossEncoder(str(kept)).model.state_dict().values()
    assert all(torch.isfinite(w).all() for w in weights)


def test_out_of_memory_in_training_ends_with_batch_size_advice():
    from workbench.job import _train_with_advice

    class OutOfMemoryTrainer:
        """Stands in for a trainer on a device that runs out of memory (none here)."""

        def train(self, resume_from_checkpoint=None):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    config = JobConfig(batch_size=32, max_length=512)
    with pytest.raises(MemoryError, match=r"batch size 32 .*lower batch_size \(e.g. 16\)"):
        _train_with_advice(OutOfMemoryTrainer(), None, config)
