"""BinaryCrossEntropyLoss: the formula, agreement with sentence-transformers, gradients, errors."""

from __future__ import annotations

import pytest
import torch

from workbench import BinaryCrossEntropyLoss, CrossEncoder


@pytest.fixture(scope="module")
def pairs_and_labels(scifact_train):
    query_id, judged = next(iter(scifact_train.qrels.items()))
    positive = scifact_train.corpus[next(iter(judged))]
    negatives = [d for d in list(scifact_train.corpus)[:3] if d not in judged]
    query = scifact_train.queries[query_id]
    pairs = [(query, positive)] + [(query, scifact_train.corpus[d]) for d in negatives]
    return pairs, torch.tensor([1.0] + [0.0] * len(negatives))


@pytest.fixture(scope="module")
def batch(pairs_and_labels):
    pairs, labels = pairs_and_labels
    queries, passages = zip(*pairs, strict=True)
    return {"query": list(queries), "passage": list(passages)}, labels


def test_bce_matches_the_formula_with_pos_weight(tiny_model, batch):
    texts, labels = batch
    loss = BinaryCrossEntropyLoss(tiny_model, pos_weight=3.0)(texts, labels)
    features = tiny_model.tokenize(list(zip(texts["query"], texts["passage"], strict=True)))
    logits = tiny_model.model(**features).logits.view(-1)
    p = torch.sigmoid(logits)
    expected = -(3.0 * labels * torch.log(p) + (1 - labels) * torch.log(1 - p)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_bce_matches_sentence_transformers(tmp_path, pairs_and_labels):
    from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss as STLoss

    ours = CrossEncoder("minilm-l6-tiny", max_length=128)
    ours.save_pretrained(tmp_path)
    reference = STCrossEncoder(str(tmp_path), device="cpu")
    pairs, labels = pairs_and_labels

    st_value = STLoss(reference, pos_weight=torch.tensor(2.0))([*zip(*pairs, strict=True)], labels)
    texts = {"query": [q for q, _ in pairs], "passage": [p for _, p in pairs]}
    value = BinaryCrossEntropyLoss(ours, pos_weight=2.0)(texts, labels)
    assert value.item() == pytest.approx(st_value.item(), rel=1e-5)


def test_bce_gradient_reaches_the_encoder(tiny_model, batch):
    texts, labels = batch
    tiny_model.model.zero_grad()
    BinaryCrossEntropyLoss(tiny_model)(texts, labels).backward()
    grad = tiny_model.model.base_model.embeddings.word_embeddings.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    tiny_model.model.zero_grad()


def test_bce_rejects_multi_label_model():
    model = CrossEncoder("minilm-l6-tiny", num_labels=3)
    with pytest.raises(
        ValueError, match=r"expects a model with `num_labels=1`, but got 3\. Use `CrossEntropyLoss`"
    ):
        BinaryCrossEntropyLoss(model)


def test_bce_rejects_non_positive_pos_weight(tiny_model):
    with pytest.raises(ValueError, match="pos_weight must be positive"):
        BinaryCrossEntropyLoss(tiny_model, pos_weight=0)
