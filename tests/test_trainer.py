"""Trainer: real steps on real SciFact pairs with a small real model."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import set_seed

from tests.conftest import training_args
from workbench import BinaryCrossEntropyLoss, CrossEncoder, CrossEncoderTrainer
from workbench.evaluation.reranking import RerankingEvaluator, build_samples
from workbench.job import JobConfig, prepare_data, training_pairs


@pytest.fixture(scope="module")
def job_data():
    config = JobConfig(dev_queries=12, max_train_queries=16, max_test_queries=4)
    return prepare_data(config)


@pytest.fixture(scope="module")
def pairs(job_data):
    return training_pairs(job_data, negatives=3)


@pytest.fixture()
def dev(job_data):
    runs = {q: job_data.runs[q] for q in job_data.dev}
    samples = build_samples(job_data.dev, job_data.train_qrels, job_data.beir.corpus, runs, top_k=5)
    return RerankingEvaluator(samples, name="dev")


def _args(tmp_path, **overrides):
    values = dict(
        per_device_train_batch_size=8,
        max_steps=6,
        eval_strategy="steps",
        eval_steps=2,
        eval_on_start=True,
        save_steps=2,
        save_strategy="steps",
        load_best_model_at_end=True,
        metric_for_best_model="dev_ndcg@10",
    )
    return training_args(tmp_path, **(values | overrides))


def test_training_pairs_hold_positives_and_bm25_negatives(job_data, pairs):
    assert set(pairs["label"]) == {0.0, 1.0}
    per_query = len(pairs) / len(job_data.train)
    assert 3 < per_query <= 3 + max(len(q) for q in job_data.train_qrels.values())


def test_training_changes_weights_logs_and_loads_best_checkpoint(pairs, dev, tmp_path):
    set_seed(0)
    model = CrossEncoder("minilm-l6-tiny", max_length=96)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    trainer = CrossEncoderTrainer(
        model,
        _args(tmp_path),
        train_dataset=pairs,
        evaluator=dev,
        loss=BinaryCrossEntropyLoss(model, pos_weight=3.0),
        metrics_path=tmp_path / "metrics.jsonl",
    )
    trainer.train()

    after = model.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    history = trainer.state.log_history
    assert any("loss" in entry for entry in history)
    evals = [e for e in history if "eval_dev_ndcg@10" in e]
    assert [e["step"] for e in evals] == [0, 2, 4, 6]
    assert all(e["eval_dev_base_ndcg@10"] == evals[0]["eval_dev_base_ndcg@10"] for e in evals)

    # The best checkpoint by dev nDCG@10 is the one whose weights the model holds now.
    best = max(evals[1:], key=lambda e: e["eval_dev_ndcg@10"])
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best['step']}")
    saved = load_file(f"{trainer.state.best_model_checkpoint}/model.safetensors")
    for name, tensor in saved.items():
        assert torch.equal(tensor, after[name]), name

    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 0 and "eval_dev_ndcg@10" in lines[0]
    assert sum("loss" in line for line in lines) == 6


def test_checkpoint_reloads_as_cross_encoder(pairs, tmp_path):
    model = CrossEncoder("minilm-l6-tiny", max_length=80, activation="identity")
    args = _args(
        tmp_path, max_steps=2, eval_strategy="no", load_best_model_at_end=False, eval_on_start=False
    )
    CrossEncoderTrainer(model, args, train_dataset=pairs).train()
    reloaded = CrossEncoder(tmp_path / "checkpoints" / "checkpoint-2")
    assert (reloaded.max_length, reloaded.activation) == (80, "identity")
    pair = [(pairs["query"][0], pairs["passage"][0])]
    assert reloaded.predict(pair) == pytest.approx(model.predict(pair), abs=1e-5)


def test_resume_from_checkpoint_continues_step_count(pairs, tmp_path):
    args = _args(
        tmp_path, max_steps=4, eval_strategy="no", load_best_model_at_end=False, eval_on_start=False
    )
    CrossEncoderTrainer(CrossEncoder("minilm-l6-tiny"), args, train_dataset=pairs).train()

    resumed = CrossEncoderTrainer(
        CrossEncoder("minilm-l6-tiny"),
        args,
        train_dataset=pairs,
        metrics_path=tmp_path / "resumed.jsonl",
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoints" / "checkpoint-2"))
    # The resumed run trains steps 3 and 4 only; the history of steps 1-2 comes from the checkpoint.
    lines = [json.loads(x) for x in (tmp_path / "resumed.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [3, 4]
    assert [e["step"] for e in resumed.state.log_history if "loss" in e] == [1, 2, 3, 4]
    assert resumed.state.global_step == 4


def test_stop_file_ends_training_with_a_checkpoint_at_that_step(pairs, tmp_path):
    from workbench.runs import last_checkpoint
    from workbench.trainer import StopCallback

    # The dashboard's Stop button writes this file; the run stops at the end of its step.
    (tmp_path / "STOP").write_text("")
    stop = StopCallback(tmp_path / "STOP")
    args = _args(
        tmp_path,
        save_steps=100,
        eval_strategy="no",
        load_best_model_at_end=False,
        eval_on_start=False,
    )
    model = CrossEncoder("minilm-l6-tiny", max_length=64)
    trainer = CrossEncoderTrainer(model, args, train_dataset=pairs, callbacks=[stop])
    trainer.train()
    assert stop.requested and not stop.training
    assert trainer.state.global_step == 1
    assert last_checkpoint(tmp_path / "checkpoints") == tmp_path / "checkpoints" / "checkpoint-1"


def test_loss_rejects_a_dataset_of_another_format_before_training(tiny_model, tmp_path):
    import datasets

    tuples = datasets.Dataset.from_dict({"query": ["q"], "positive": ["p"], "negative_1": ["n"]})
    args = _args(tmp_path, eval_strategy="no", load_best_model_at_end=False, eval_on_start=False)
    with pytest.raises(
        ValueError, match=r"`BinaryCrossEntropyLoss` expects pairs \(columns query, passage"
    ):
        CrossEncoderTrainer(tiny_model, args, train_dataset=tuples)


def test_collator_pads_list_labels():
    from workbench.trainer import TextCollator

    batch = TextCollator()(
        [
            {"query": "a", "documents": ["x", "y"], "labels": [1, 0]},
            {"query": "b", "documents": ["z"], "labels": [1]},
        ]
    )
    assert batch["texts"]["documents"] == [["x", "y"], ["z"]]
    assert batch["labels"].tolist() == [[1.0, 0.0], [1.0, -1.0]]


def _list_rows(job_data, size=4):
    """Each query's first positive and its BM25 top documents; lists alternate 4 and 3 long."""
    rows = {"query": [], "documents": [], "labels": []}
    for i, (query_id, query) in enumerate(list(job_data.train.items())[:8]):
        judged = job_data.train_qrels[query_id]
        docs = [d for d, _ in job_data.runs[query_id][:size]]
        docs = list(dict.fromkeys(list(judged)[:1] + docs))[: size - i % 2]
        rows["query"].append(query)
        rows["documents"].append([job_data.beir.corpus[d] for d in docs])
        rows["labels"].append([float(judged.get(d, 0)) for d in docs])
    return datasets.Dataset.from_dict(rows)


@pytest.mark.parametrize("loss_name", ["LambdaLoss", "ListNetLoss", "MultipleNegativesRankingLoss"])
def test_listwise_and_in_batch_losses_train_in_the_trainer(job_data, loss_name, tmp_path):
    import workbench

    model = CrossEncoder("minilm-l6-tiny", max_length=64)
    if loss_name == "MultipleNegativesRankingLoss":
        pairs = training_pairs(job_data, negatives=2)
        rows = datasets.Dataset.from_dict(
            {
                "query": [q for q, y in zip(pairs["query"], pairs["label"], strict=True) if y],
                "positive": [p for p, y in zip(pairs["passage"], pairs["label"], strict=True) if y],
            }
        )
    else:
        rows = _list_rows(job_data)
    before = model.model.classifier.weight.clone()
    args = _args(
        tmp_path,
        max_steps=2,
        per_device_train_batch_size=4,
        eval_strategy="no",
        load_best_model_at_end=False,
        eval_on_start=False,
    )
    loss = getattr(workbench, loss_name)(model)
    trainer = CrossEncoderTrainer(model, args, train_dataset=rows, loss=loss)
    trainer.train()
    assert not torch.equal(before, model.model.classifier.weight)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(np.isfinite(losses))
