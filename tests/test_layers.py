"""Freezing the bottom layers and attention dropout: what trains, what drops out, what is saved."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from workbench import CrossEncoder, CrossEncoderTrainer
from workbench.layers import freeze_bottom_layers, set_attention_dropout


def test_freeze_bottom_layers_freezes_embeddings_and_first_layers():
    model = CrossEncoder("minilm-l6")
    freeze_bottom_layers(model, 4)
    trainable = {n for n, p in model.model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("bert.embeddings") for n in trainable)
    assert not any(f"encoder.layer.{i}." in n for n in trainable for i in range(4))
    assert any("encoder.layer.4." in n for n in trainable)
    assert {"classifier.weight", "classifier.bias"} <= trainable


@pytest.mark.parametrize("count", [0, -1])
def test_freeze_zero_layers_is_a_no_op(count):
    model = CrossEncoder("minilm-l6-tiny")
    freeze_bottom_layers(model, count)
    assert all(p.requires_grad for p in model.model.parameters())


def _layer_outputs(model, pairs) -> list[torch.Tensor]:
    """Hidden states after each layer of one forward pass in training mode."""
    model.model.train()
    features = model.tokenizer(*zip(*pairs, strict=True), padding=True, return_tensors="pt")
    out = model.model(**features, output_hidden_states=True)
    return [h.detach() for h in out.hidden_states]


def test_frozen_layers_apply_no_dropout_in_training(scifact_test):
    pairs = [(scifact_test.queries[q], text) for q, text in zip(
        sorted(scifact_test.queries)[:4], list(scifact_test.corpus.values())[:4], strict=True
    )]  # fmt: skip
    model = CrossEncoder("minilm-l6", max_length=64)
    freeze_bottom_layers(model, 4)

    # Two passes in train mode: frozen layers agree exactly, trained ones drop out differently.
    first, second = _layer_outputs(model, pairs), _layer_outputs(model, pairs)
    for index in range(5):  # embeddings and layers 0-3
        assert torch.equal(first[index], second[index])
    assert not torch.equal(first[6], second[6])
    assert model.model.bert.encoder.layer[5].training


def test_set_attention_dropout_sets_every_layer_and_the_saved_config(tmp_path):
    model = CrossEncoder("minilm-l6-tiny")
    set_attention_dropout(model, 0.0)
    layers = model.model.bert.encoder.layer
    assert all(layer.attention.self.dropout.p == 0.0 for layer in layers)
    # Hidden-state dropout is untouched.
    assert all(layer.output.dropout.p == pytest.approx(0.1) for layer in layers)

    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).attention_probs_dropout_prob == 0.0


def test_set_attention_dropout_rejects_a_probability_of_one():
    with pytest.raises(ValueError, match=r"attention_dropout expects a value in \[0, 1\)"):
        set_attention_dropout(CrossEncoder("minilm-l6-tiny"), 1.0)


def test_frozen_model_trains_its_top_layers_only(scifact_job, tmp_path):
    from conftest import training_args

    from workbench.job import training_pairs

    model = CrossEncoder("minilm-l6-tiny", max_length=48)
    freeze_bottom_layers(model, 1)
    set_attention_dropout(model, 0.0)
    before = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    args = training_args(tmp_path, max_steps=3)
    CrossEncoderTrainer(model, args, train_dataset=training_pairs(scifact_job, 3)).train()

    changed = {n for n, p in model.model.named_parameters() if not torch.equal(p, before[n])}
    assert "bert.encoder.layer.1.attention.self.query.weight" in changed
    assert not any(n.startswith(("bert.embeddings", "bert.encoder.layer.0.")) for n in changed)
