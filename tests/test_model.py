"""CrossEncoder: loading, scoring, ranking, saving, and agreement with sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench import CrossEncoder

BERLIN = "How many people live in Berlin?"
PASSAGES = [
    "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 square "
    "kilometers.",
    "New York City is famous for the Metropolitan Museum of Art.",
    "Berlin is the capital of Germany.",
]


def test_reranker_scores_published_example(reranker):
    # Raw logits of the INT8-rebuilt copy (the fp32 original gives 9.45 / -11.16).
    logits = reranker.predict([(BERLIN, PASSAGES[0]), (BERLIN, PASSAGES[1])], activation="identity")
    assert logits == pytest.approx([9.27, -11.19], abs=0.05)
    sigmoid = reranker.predict([(BERLIN, PASSAGES[0])])
    assert sigmoid[0] == pytest.approx(torch.sigmoid(torch.tensor(logits[0])).item(), abs=1e-5)


def test_predict_keeps_input_order_across_batches(reranker):
    pairs = [(BERLIN, p) for p in PASSAGES] * 3
    batched = reranker.predict(pairs, batch_size=2)
    single = np.array([reranker.predict([pair])[0] for pair in pairs])
    assert batched.shape == (9,)
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_rank_sorts_best_first_with_corpus_ids(reranker):
    ranked = reranker.rank(BERLIN, PASSAGES, top_k=2, return_passages=True)
    assert [r["corpus_id"] for r in ranked] == [0, 2]
    assert ranked[0]["score"] >= ranked[1]["score"]
    assert ranked[0]["text"] == PASSAGES[0]


def test_plain_encoder_gets_one_label_head_and_sigmoid(tiny_model):
    assert tiny_model.num_labels == 1
    assert tiny_model.activation == "sigmoid"
    scores = tiny_model.predict([(BERLIN, PASSAGES[0])])
    assert 0.0 < scores[0] < 1.0


def test_max_length_is_capped_at_position_limit():
    model = CrossEncoder("minilm-l6-tiny", max_length=4096)
    assert model.max_length == 512


def test_multi_label_model_uses_identity_and_refuses_rank():
    model = CrossEncoder("minilm-l6-tiny", num_labels=3)
    assert model.activation == "identity"
    assert model.predict([(BERLIN, PASSAGES[0])]).shape == (1, 3)
    with pytest.raises(ValueError, match="num_labels=1"):
        model.rank(BERLIN, PASSAGES)


def test_predict_rejects_malformed_pairs(tiny_model):
    with pytest.raises(TypeError, match=r"pairs\[1\] must be two strings"):
        tiny_model.predict([(BERLIN, PASSAGES[0]), (BERLIN,)])


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="activation must be one of"):
        CrossEncoder("minilm-l6-tiny", activation="softmax")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="without config.json"):
        CrossEncoder(tmp_path)


def test_saved_model_loads_unchanged_in_sentence_transformers_and_transformers(reranker, tmp_path):
    from sentence_transformers import CrossEncoder as STCrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    reranker.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    pairs = [(BERLIN, p) for p in PASSAGES]
    ours = reranker.predict(pairs)

    st_model = STCrossEncoder(str(tmp_path), device="cpu")
    assert st_model.max_length == reranker.max_length
    np.testing.assert_allclose(st_model.predict(pairs), ours, atol=1e-5)

    hf_model = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    features = tokenizer(
        *zip(*pairs, strict=True), padding=True, truncation=True, return_tensors="pt"
    )
    with torch.inference_mode():
        logits = hf_model(**features).logits[:, 0]
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), ours, atol=1e-5)

    reloaded = CrossEncoder(tmp_path)
    assert (reloaded.max_length, reloaded.activation) == (128, "sigmoid")
    np.testing.assert_allclose(reloaded.predict(pairs), ours, atol=1e-6)


def test_saved_identity_activation_round_trips(tmp_path):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    model = CrossEncoder("minilm-l6-tiny", activation="identity", max_length=64)
    model.save_pretrained(tmp_path)
    pairs = [(BERLIN, PASSAGES[0])]
    st_scores = STCrossEncoder(str(tmp_path), device="cpu").predict(pairs)
    np.testing.assert_allclose(st_scores, model.predict(pairs), atol=1e-5)
    assert CrossEncoder(tmp_path).activation == "identity"


def test_reranker_head_can_be_replaced_with_more_labels():
    model = CrossEncoder("ms-marco-minilm-l12", num_labels=3, max_length=32)
    assert model.num_labels == 3
    assert model.predict([(BERLIN, PASSAGES[0])]).shape == (1, 3)


def test_plain_encoder_with_two_labels_keeps_two():
    assert CrossEncoder("minilm-l6-tiny", num_labels=2).num_labels == 2
