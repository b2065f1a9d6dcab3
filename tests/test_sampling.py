"""Batch samplers on real SciFact rows, alone and driving the trainer."""

from __future__ import annotations

import logging
from collections import Counter

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import set_seed

from tests.conftest import training_args
from workbench import (
    BinaryCrossEntropyLoss,
    CrossEncoder,
    CrossEncoderTrainer,
    MultiDatasetBatchSampler,
    MultipleNegativesRankingLoss,
    NamedConcatDataset,
    NoDuplicatesBatchSampler,
)
from workbench.job import training_pairs
from workbench.trainer import TextCollator


@pytest.fixture(scope="module")
def pairs(scifact_job):
    """Each query's positives and 3 BM25 negatives: about 5 rows share each query."""
    return training_pairs(scifact_job, negatives=3)


@pytest.fixture(scope="module")
def tuples(pairs):
    """(query, positive) rows from the positive pairs."""
    positives = pairs.filter(lambda row: row["label"] == 1.0)
    return positives.rename_column("passage", "positive").remove_columns("label")


def _args(tmp_path, **overrides):
    return training_args(tmp_path, **overrides)


def _repeats(batch_rows: list[dict]) -> list[str]:
    """Texts that occur in more than one place of a batch."""
    texts = Counter(
        v for row in batch_rows for k, v in row.items() if k not in ("label", "dataset")
    )
    return [text for text, count in texts.items() if count > 1]


def test_no_duplicates_sampler_never_repeats_a_text_and_covers_every_row(pairs):
    # Consecutive rows share queries, so plain batches would repeat texts.
    assert _repeats([pairs[i] for i in range(16)])

    sampler = NoDuplicatesBatchSampler(pairs, batch_size=16, seed=3)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for batch in batches for i in batch) == list(range(len(pairs)))
        for batch in batches:
            assert not _repeats([pairs[i] for i in batch])


def test_no_duplicates_sampler_is_deterministic_given_a_seed(pairs):
    first = list(NoDuplicatesBatchSampler(pairs, batch_size=8, seed=3))
    assert list(NoDuplicatesBatchSampler(pairs, batch_size=8, seed=3)) == first
    assert list(NoDuplicatesBatchSampler(pairs, batch_size=8, seed=4)) != first

    next_epoch = NoDuplicatesBatchSampler(pairs, batch_size=8, seed=3)
    next_epoch.set_epoch(1)
    assert list(next_epoch) != first


def test_no_duplicates_sampler_keeps_clashing_rows_for_later_batches(caplog):
    # Four rows share query "a": they need four batches, and nothing is dropped.
    rows = datasets.Dataset.from_dict(
        {"query": ["a", "a", "a", "a", "b", "c"], "positive": ["p1", "p2", "p3", "p4", "p5", "p6"]}
    )
    sampler = NoDuplicatesBatchSampler(rows, batch_size=3, seed=0)
    with caplog.at_level(logging.INFO, logger="workbench.sampling"):
        batches = list(sampler)

    assert len(batches) == 4
    assert sorted(i for batch in batches for i in batch) == list(range(6))
    assert all(sum(rows[i]["query"] == "a" for i in batch) == 1 for batch in batches)
    assert "came out short" in caplog.text


def test_no_duplicates_sampler_warns_when_an_epoch_needs_more_batches_than_the_first(caplog):
    rows = datasets.Dataset.from_dict(
        {"query": ["a", "a", "a", "b", "c", "d"], "positive": ["p1", "p2", "p3", "p4", "p5", "p6"]}
    )
    sampler = NoDuplicatesBatchSampler(rows, batch_size=3, seed=8)
    assert len(sampler) == 3  # what the Trainer sizes every epoch by

    sampler.set_epoch(1)
    with caplog.at_level(logging.WARNING, logger="workbench.sampling"):
        batches = list(sampler)
    assert len(batches) == 4
    assert sorted(i for batch in batches for i in batch) == list(range(6))
    assert "1 more than the first" in caplog.text


def test_no_duplicates_sampler_checks_each_document_of_a_list_column():
    rows = datasets.Dataset.from_dict(
        {"query": ["q1", "q2"], "documents": [["x", "y"], ["z", "y"]], "labels": [[1, 0], [1, 0]]}
    )
    batches = list(NoDuplicatesBatchSampler(rows, batch_size=2, seed=0))
    assert sorted(map(len, batches)) == [1, 1]


def test_no_duplicates_sampler_drop_last_drops_only_short_batches():
    rows = datasets.Dataset.from_dict({"query": ["a", "a", "b"], "positive": ["x", "y", "z"]})
    batches = list(NoDuplicatesBatchSampler(rows, batch_size=2, drop_last=True, seed=0))
    assert batches and all(len(batch) == 2 for batch in batches)


def test_no_duplicates_sampler_rejects_a_missing_column(pairs):
    with pytest.raises(ValueError, match=r"expects columns \['positive'\] in the dataset"):
        NoDuplicatesBatchSampler(pairs, batch_size=4, columns=["query", "positive"])


@pytest.fixture(scope="module")
def three_sets(pairs):
    """Real pair slices of 40, 20 and 12 rows: 10, 5 and 3 batches of 4."""
    return NamedConcatDataset(
        {
            "large": pairs.select(range(40)),
            "medium": pairs.select(range(40, 60)),
            "small": pairs.select(range(60, 72)),
        }
    )


def _sources(dataset: NamedConcatDataset, batches: list[list[int]]) -> list[str]:
    """The one dataset of each batch (fails on a batch that mixes datasets)."""
    sources = []
    for batch in batches:
        names = {dataset.locate(i)[0] for i in batch}
        assert len(names) == 1, f"batch {batch} mixes datasets {names}"
        sources.append(names.pop())
    return sources


def test_multi_dataset_sampler_proportional_gives_batches_by_dataset_size(three_sets):
    sampler = MultiDatasetBatchSampler(three_sets, batch_size=4, seed=0)
    batches = list(sampler)
    sources = _sources(three_sets, batches)

    assert Counter(sources) == {"large": 10, "medium": 5, "small": 3}
    assert len(sampler) == 18
    assert sorted(i for batch in batches for i in batch) == list(range(len(three_sets)))
    # Interleaved at random, not one dataset after the other.
    assert sources != sorted(sources, key=list(three_sets.datasets).index)

    sampler.set_epoch(1)
    assert _sources(three_sets, list(sampler)) != sources


def test_multi_dataset_sampler_round_robin_cycles_until_the_smallest_runs_out(three_sets, caplog):
    sampler = MultiDatasetBatchSampler(three_sets, batch_size=4, strategy="round_robin", seed=0)
    with caplog.at_level(logging.INFO, logger="workbench.sampling"):
        sources = _sources(three_sets, list(sampler))

    assert sources == ["large", "medium", "small"] * 3
    assert len(sampler) == 9
    assert "sit this epoch out" in caplog.text


def test_multi_dataset_sampler_batches_carry_their_dataset_name(three_sets):
    sampler = MultiDatasetBatchSampler(three_sets, batch_size=4, seed=0)
    loader = DataLoader(three_sets, batch_sampler=sampler, collate_fn=TextCollator())
    for batch, indices in zip(loader, sampler, strict=True):
        name, local = three_sets.locate(indices[0])
        assert batch["dataset"] == name
        assert batch["texts"]["query"][0] == three_sets.datasets[name][local]["query"]


def test_multi_dataset_sampler_rejects_an_unknown_strategy(three_sets):
    with pytest.raises(ValueError, match=r"expects strategy in .*but got 'random'"):
        MultiDatasetBatchSampler(three_sets, batch_size=4, strategy="random")


def test_named_concat_dataset_rejects_a_dataset_column(pairs):
    tagged = pairs.add_column("dataset", ["x"] * len(pairs))
    with pytest.raises(ValueError, match=r"has a 'dataset' column, but that name is reserved"):
        NamedConcatDataset({"pairs": tagged})


def test_trainer_trains_two_datasets_each_with_its_own_loss(pairs, tuples, tmp_path):
    set_seed(0)
    model = CrossEncoder("minilm-l6-tiny", max_length=64)
    before = model.model.classifier.weight.clone()
    losses = {"pairs": BinaryCrossEntropyLoss(model), "tuples": MultipleNegativesRankingLoss(model)}
    trainer = CrossEncoderTrainer(
        model,
        _args(tmp_path),
        train_dataset={"pairs": pairs, "tuples": tuples},
        eval_dataset={"pairs": pairs.select(range(8)), "tuples": tuples.select(range(8))},
        loss=losses,
        multi_dataset_sampler="round_robin",
    )
    trainer.train()

    assert not torch.equal(before, model.model.classifier.weight)
    steps = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in steps] == [1, 2] and all(np.isfinite([e["loss"] for e in steps]))
    # Round robin: step 1 is a pairs batch (BCE), step 2 a tuples batch (MNRL).
    assert "loss_pairs" in steps[0] and "loss_tuples" in steps[1]

    metrics = trainer.evaluate()
    assert np.isfinite([metrics["eval_pairs_loss"], metrics["eval_tuples_loss"]]).all()


def _loader_rows(trainer: CrossEncoderTrainer) -> list[dict]:
    """Each training batch's texts, all columns together, and its dataset name."""
    return [
        {
            "texts": [t for column in b["texts"].values() for t in column],
            "dataset": b.get("dataset"),
        }
        for b in trainer.get_train_dataloader()
    ]


def test_trainer_no_duplicates_loader_never_repeats_a_text(pairs, tiny_model, tmp_path):
    args = _args(tmp_path, per_device_train_batch_size=8)
    trainer = CrossEncoderTrainer(
        tiny_model, args, train_dataset=pairs, batch_sampler="no_duplicates"
    )
    batches = _loader_rows(trainer)
    assert sum(len(b["texts"]) for b in batches) == 2 * len(pairs)
    assert all(len(set(b["texts"])) == len(b["texts"]) for b in batches)


def test_trainer_no_duplicates_applies_inside_each_dataset(pairs, tuples, tiny_model, tmp_path):
    trainer = CrossEncoderTrainer(
        tiny_model,
        _args(tmp_path, per_device_train_batch_size=8),
        train_dataset={"pairs": pairs, "tuples": tuples},
        loss={
            "pairs": BinaryCrossEntropyLoss(tiny_model),
            "tuples": MultipleNegativesRankingLoss(tiny_model),
        },
        batch_sampler="no_duplicates",
    )
    batches = _loader_rows(trainer)
    assert {b["dataset"] for b in batches} == {"pairs", "tuples"}
    assert sum(len(b["texts"]) for b in batches) == 2 * (len(pairs) + len(tuples))
    assert all(len(set(b["texts"])) == len(b["texts"]) for b in batches)


def test_trainer_rejects_loss_keys_that_differ_from_the_dataset_keys(pairs, tiny_model, tmp_path):
    with pytest.raises(ValueError, match=r"`loss` and train_dataset expect matching keys"):
        CrossEncoderTrainer(
            tiny_model,
            _args(tmp_path),
            train_dataset={"pairs": pairs, "more": pairs},
            loss={"pairs": BinaryCrossEntropyLoss(tiny_model)},
        )


def test_trainer_rejects_a_dict_of_losses_for_a_single_dataset(pairs, tiny_model, tmp_path):
    with pytest.raises(ValueError, match=r"expects train_dataset as a dict with the same keys"):
        CrossEncoderTrainer(
            tiny_model,
            _args(tmp_path),
            train_dataset=pairs,
            loss={"pairs": BinaryCrossEntropyLoss(tiny_model)},
        )


def test_trainer_checks_each_dataset_against_its_loss(pairs, tuples, tiny_model, tmp_path):
    losses = {
        "pairs": BinaryCrossEntropyLoss(tiny_model),
        "tuples": BinaryCrossEntropyLoss(tiny_model),
    }
    with pytest.raises(ValueError, match=r"`BinaryCrossEntropyLoss` expects pairs"):
        CrossEncoderTrainer(
            tiny_model,
            _args(tmp_path),
            train_dataset={"pairs": pairs, "tuples": tuples},
            loss=losses,
        )


def test_trainer_rejects_an_unknown_batch_sampler(pairs, tiny_model, tmp_path):
    with pytest.raises(ValueError, match=r"expects batch_sampler in .*but got 'unique'"):
        CrossEncoderTrainer(
            tiny_model, _args(tmp_path), train_dataset=pairs, batch_sampler="unique"
        )
