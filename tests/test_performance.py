"""Speed-ups that must not change results: token-length sorting at inference, padding to a
multiple of 8, length-grouped batches, and the loss running through the Trainer's wrapper."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from transformers import set_seed

from tests.conftest import training_args
from workbench import (
    BinaryCrossEntropyLoss,
    CrossEncoder,
    CrossEncoderTrainer,
    MultiDatasetBatchSampler,
    NamedConcatDataset,
    NoDuplicatesBatchSampler,
)
from workbench.job import training_pairs
from workbench.sampling import LengthGroupedBatchSampler, token_lengths
from workbench.trainer import TextCollator

MAX_LENGTH = 512


@pytest.fixture(scope="module")
def model():
    set_seed(0)
    return CrossEncoder("minilm-l6-tiny", max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def pairs(scifact_job):
    """Real SciFact rows: short claims with abstracts, some cut at MAX_LENGTH, some not."""
    return training_pairs(scifact_job, negatives=3)


@pytest.fixture(scope="module")
def mixed_pairs(scifact_job) -> list[tuple[str, str]]:
    """40 (claim, text) pairs of very different token lengths: titles and abstracts."""
    corpus = scifact_job.beir.corpus
    claims = list(scifact_job.train.values())[:20]
    docs = [corpus[d] for d, _ in scifact_job.runs[next(iter(scifact_job.train))][:20]]
    titles = [doc.split(".")[0][:60] for doc in docs]
    return [(c, t) for c, t in zip(claims, titles, strict=True)] + list(
        zip(claims, docs, strict=True)
    )


@pytest.fixture(scope="module")
def lengths(pairs, model):
    return token_lengths(pairs, model.tokenizer, max_length=MAX_LENGTH)


def _padding(batches: list[list[int]], lengths: np.ndarray) -> int:
    """Pad tokens a loader would add: each batch is padded to its longest row."""
    return int(sum(lengths[b].max() * len(b) - lengths[b].sum() for b in batches))


def _every_row_once(batches: list[list[int]], rows: int) -> bool:
    seen = sorted(i for batch in batches for i in batch)
    return seen == list(range(rows))


# Inference


def test_predict_scores_equal_pair_by_pair_scores(model, mixed_pairs):
    sorted_batches = model.predict(mixed_pairs, batch_size=8)
    one_by_one = np.array([model.predict([pair])[0] for pair in mixed_pairs])
    np.testing.assert_allclose(sorted_batches, one_by_one, atol=1e-5)

    reversed_scores = model.predict(mixed_pairs[::-1], batch_size=8)[::-1]
    np.testing.assert_allclose(reversed_scores, sorted_batches, atol=1e-5)


def test_predict_batches_hold_pairs_of_similar_token_length(model, mixed_pairs, monkeypatch):
    batches = []
    original = model._batch_logits
    monkeypatch.setattr(
        model, "_batch_logits", lambda batch: batches.append(batch) or original(batch)
    )
    model.predict(mixed_pairs, batch_size=8)

    maxima = [model.token_lengths(batch).max() for batch in batches]
    assert maxima == sorted(maxima, reverse=True)
    expected = np.sort(model.token_lengths(mixed_pairs))[::-1]
    assert list(np.concatenate([model.token_lengths(b) for b in batches])) == list(expected)


def test_token_lengths_count_the_tokens_the_model_sees(model, mixed_pairs):
    mask = model.encode_pairs(mixed_pairs)["attention_mask"]
    assert list(model.token_lengths(mixed_pairs)) == mask.sum(dim=1).tolist()
    assert model.token_lengths(mixed_pairs).max() == MAX_LENGTH


def test_padding_to_a_multiple_of_8_keeps_scores(model, mixed_pairs):
    plain = model.encode_pairs(mixed_pairs[:5])
    padded = model.encode_pairs(mixed_pairs[:5], pad_to_multiple_of=8)
    assert padded["input_ids"].shape[1] % 8 == 0
    assert padded["input_ids"].shape[1] > plain["input_ids"].shape[1]
    with torch.inference_mode():
        a = model.model(**plain).logits
        b = model.model(**padded).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_tokenize_pads_to_the_longest_pair_on_cpu(model, mixed_pairs):
    features = model.tokenize(mixed_pairs[:5])
    assert features["input_ids"].shape[1] == model.token_lengths(mixed_pairs[:5]).max()


# Length-grouped batches


def test_token_lengths_of_pairs_lists_and_a_length_column(pairs, model, lengths):
    texts = list(zip(pairs["query"], pairs["passage"], strict=True))
    assert list(lengths) == list(model.token_lengths(texts))

    lists = datasets.Dataset.from_dict(
        {
            "query": pairs["query"][:2],
            "documents": [pairs["passage"][:3], pairs["passage"][3:4]],
            "labels": [[1, 0, 0], [0]],
        }
    )
    row_lengths = token_lengths(lists, model.tokenizer, max_length=MAX_LENGTH)
    per_pair = model.token_lengths([(pairs["query"][0], p) for p in pairs["passage"][:3]])
    assert row_lengths[0] == per_pair.max()

    given = pairs.add_column("length", list(range(len(pairs))))
    assert list(token_lengths(given, model.tokenizer)) == list(range(len(pairs)))


def test_length_grouped_sampler_yields_every_row_once_with_less_padding(lengths):
    sampler = LengthGroupedBatchSampler(lengths, batch_size=8, seed=1)
    plans = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert _every_row_once(batches, len(lengths))
        assert len(sampler) == len(batches)
        # The longest row of the full batches comes first: the worst memory shows at once.
        full = [b for b in batches if len(b) == 8]
        assert lengths[batches[0]].max() == max(lengths[b].max() for b in full)
        plans.append(batches)
    assert plans[0] != plans[1]

    shuffled = np.random.default_rng(1).permutation(len(lengths))
    random_batches = [shuffled[i : i + 8] for i in range(0, len(lengths), 8)]
    assert _padding(plans[0], lengths) < 0.5 * _padding(random_batches, lengths)


@pytest.mark.parametrize("seed", range(6))
def test_length_grouped_sampler_puts_the_short_batch_last(lengths, seed):
    # DDP's batch sharding drops a whole round when a short batch comes anywhere else.
    assert len(lengths) % 8, "the fixture needs a short batch"
    batches = list(LengthGroupedBatchSampler(lengths, batch_size=8, seed=seed))
    assert len(batches[-1]) == len(lengths) % 8
    assert all(len(b) == 8 for b in batches[:-1])


def test_trainer_evaluates_an_eval_set_while_grouping_by_length(pairs, model, tmp_path):
    # The Trainer's own eval-side length grouping needs tokenized rows; these are text.
    args = training_args(tmp_path, train_sampling_strategy="group_by_length")
    trainer = CrossEncoderTrainer(model, args, train_dataset=pairs, eval_dataset=pairs)
    assert np.isfinite(trainer.evaluate()["eval_loss"])


def test_length_grouped_sampler_drop_last_drops_only_the_short_batch(lengths):
    batches = list(LengthGroupedBatchSampler(lengths, batch_size=8, drop_last=True, seed=1))
    assert all(len(b) == 8 for b in batches)
    assert len(batches) == len(lengths) // 8


def test_no_duplicates_sampler_with_lengths_keeps_its_rules(pairs, lengths):
    plain = list(NoDuplicatesBatchSampler(pairs, batch_size=8, seed=2))
    grouped = list(NoDuplicatesBatchSampler(pairs, batch_size=8, seed=2, lengths=lengths))
    assert _every_row_once(grouped, len(pairs))
    for batch in grouped:
        texts = [pairs[i]["query"] for i in batch] + [pairs[i]["passage"] for i in batch]
        assert len(set(texts)) == len(texts)
    assert _padding(grouped, lengths) < _padding(plain, lengths)


def test_multi_dataset_sampler_with_lengths_covers_every_row(pairs, lengths, model):
    half = len(pairs) // 2
    both = NamedConcatDataset(
        {"a": pairs.select(range(half)), "b": pairs.select(range(half, len(pairs)))}
    )
    assert list(token_lengths(both, model.tokenizer, max_length=MAX_LENGTH)) == list(lengths)
    sampler = MultiDatasetBatchSampler(both, batch_size=8, seed=0, lengths=lengths)
    batches = list(sampler)
    assert _every_row_once(batches, len(pairs))
    assert all(len({both.locate(i)[0] for i in batch}) == 1 for batch in batches)


def test_samplers_refuse_lengths_of_another_size(pairs, lengths):
    with pytest.raises(ValueError, match=r"one length per row"):
        NoDuplicatesBatchSampler(pairs, batch_size=8, lengths=lengths[:-1])


def test_trainer_group_by_length_batches_cover_the_data_with_less_padding(
    pairs, lengths, model, tmp_path
):
    args = training_args(
        tmp_path, per_device_train_batch_size=8, train_sampling_strategy="group_by_length"
    )
    trainer = CrossEncoderTrainer(model, args, train_dataset=pairs)
    row = {pair: i for i, pair in enumerate(zip(pairs["query"], pairs["passage"], strict=True))}
    batches = [
        [row[pair] for pair in zip(b["texts"]["query"], b["texts"]["passage"], strict=True)]
        for b in trainer.get_train_dataloader()
    ]
    assert _every_row_once(batches, len(pairs))

    shuffled = np.random.default_rng(0).permutation(len(pairs))
    random_batches = [shuffled[i : i + 8] for i in range(0, len(pairs), 8)]
    assert _padding(batches, lengths) < 0.5 * _padding(random_batches, lengths)


def test_trainer_group_by_length_trains(pairs, tmp_path):
    set_seed(0)
    model = CrossEncoder("minilm-l6-tiny", max_length=32)
    before = model.model.classifier.weight.detach().clone()
    args = training_args(tmp_path, train_sampling_strategy="group_by_length")
    trainer = CrossEncoderTrainer(model, args, train_dataset=pairs, batch_sampler="no_duplicates")
    trainer.train()
    assert not torch.equal(before, model.model.classifier.weight)
    assert any("loss" in entry for entry in trainer.state.log_history)


# Distributed training


class _Wrapper(torch.nn.Module):
    """Stands in for DDP: forwards to the model and counts calls."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, **features):
        self.calls += 1
        return self.module(**features)


def test_loss_runs_the_model_through_the_trainers_wrapper(pairs, model, tmp_path):
    # DDP syncs gradients only for forward passes through its wrapper, never the bare model.
    trainer = CrossEncoderTrainer(model, training_args(tmp_path), train_dataset=pairs)
    wrapper = _Wrapper(model.model)
    batch = TextCollator()([pairs[i] for i in range(4)])
    loss = trainer.compute_loss(wrapper, batch)
    assert wrapper.calls == 1
    assert model.training_module is None

    bare = BinaryCrossEntropyLoss(model)(batch["texts"], batch["labels"])
    torch.testing.assert_close(loss, bare)
