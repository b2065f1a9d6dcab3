"""The main job's parts: baseline score cache, verdict."""

from __future__ import annotations

import logging

import pytest
from transformers import set_seed

from workbench.job import (
    JobConfig,
    _baseline_metrics,
    _evaluator,
    prepare_data,
    verdict,
)


def test_baseline_scores_are_cached_by_model_and_data(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    config = JobConfig(
        baseline_model="minilm-l6-tiny",
        max_length=48,
        dev_queries=0,
        max_train_queries=0,
        max_test_queries=3,
    )
    data = prepare_data(config)
    test = _evaluator(data, data.test, data.test_qrels, 5, "test")
    # The tiny model's head is random: the same seed gives the same weights, hence the same key.
    with caplog.at_level(logging.INFO, logger="workbench.job"):
        set_seed(0)
        first, _ = _baseline_metrics(config, test)
        assert "from cache" not in caplog.text
        set_seed(0)
        second, per_query = _baseline_metrics(config, test)
        assert "Baseline scores from cache" in caplog.text
    assert first == second
    assert per_query["ndcg@10"].mean() == pytest.approx(first["ndcg@10"])
    assert len(list((tmp_path / "scores").glob("*.npz"))) == 1


def test_verdict_says_plainly_when_fine_tuning_lost():
    results = {
        "bm25": {"ndcg@10": 0.66},
        "baseline": {"ndcg@10": 0.68},
        "finetuned": {"ndcg@10": 0.67},
    }
    text = verdict(results)
    assert "beat bm25 (0.6700 vs 0.6600, +0.0100)" in text
    assert "did NOT beat baseline (0.6700 vs 0.6800, -0.0100)" in text


@pytest.mark.slow
def test_job_with_one_test_query_finishes_without_a_paired_test(tmp_path):
    from conftest import tiny_job_config

    from workbench.job import run_job

    results = run_job(tiny_job_config(max_test_queries=1, max_steps=2), tmp_path)

    assert set(results) == {"bm25", "baseline", "finetuned"}
    assert not (tmp_path / "comparison.json").exists()
    assert "fine-tuned model" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "final" / "README.md").exists()


@pytest.mark.parametrize("grouped", [True, False])
def test_job_trainer_groups_batches_by_length_unless_told_not_to(tmp_path, grouped):
    from conftest import tiny_job_config

    from workbench import CrossEncoder
    from workbench.job import _trainer, training_pairs
    from workbench.runs import RunFolder
    from workbench.sampling import LengthGroupedBatchSampler, token_lengths

    config = tiny_job_config(group_by_length=grouped, max_length=512)
    data = prepare_data(config)
    pairs = training_pairs(data, 3)
    dev = _evaluator(data, data.dev, data.train_qrels, 5, "dev")
    model = CrossEncoder(config.base_model, max_length=config.max_length)
    sampler = _trainer(
        config, model, pairs, dev, RunFolder(tmp_path), "fp32"
    )._train_batch_sampler()
    if not grouped:
        assert sampler is None  # the Trainer's shuffled batches
        return
    assert isinstance(sampler, LengthGroupedBatchSampler)
    lengths = token_lengths(pairs, model.tokenizer, max_length=512)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(pairs)))
    # Padded tokens: grouped batches need fewer than the same rows in input order.
    padded = sum(lengths[b].max() * len(b) for b in batches)
    plain = sum(lengths[i : i + 4].max() * len(lengths[i : i + 4]) for i in range(0, len(pairs), 4))
    assert padded < plain


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("attention_dropout", 1.0, r"attention_dropout expects a value in \[0, 1\) or null"),
        ("num_processes", 0, "num_processes expects 1 or more"),
    ],
)
def test_job_config_refuses_bad_values_at_once(field, value, message):
    with pytest.raises(ValueError, match=message):
        JobConfig(**{field: value})
