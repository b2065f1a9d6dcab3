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


def test_auto_precision_scores_as_bf16_where_native_else_fp32(tiny_model, scifact_test):
    from workbench.device import fast_bf16

    pairs = [
        (scifact_test.queries[q], "Vitamin D and infections.")
        for q in list(scifact_test.queries)[:6]
    ]
    expected = "bf16" if fast_bf16(tiny_model.device) else "fp32"
    auto = tiny_model.predict(pairs, precision="auto")
    assert np.array_equal(auto, tiny_model.predict(pairs, precision=expected))
    if expected == "bf16":  # and not fp16, which CPUs emulate
        assert not np.array_equal(auto, tiny_model.predict(pairs, precision="fp16"))


def test_unknown_precision_is_refused(tiny_model):
    with pytest.raises(ValueError, match="precision must be 'auto' or one of"):
        tiny_model.predict([("a", "b")], precision="int8")


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


# Loading bad inputs


@pytest.mark.parametrize("typed", ["{tmp}/runs/scifact/final", "./final", "runs/scifact/final"])
def test_missing_model_folder_is_a_clear_error(tmp_path, monkeypatch, typed):
    monkeypatch.chdir(tmp_path)
    typed = typed.format(tmp=tmp_path)
    with pytest.raises(
        FileNotFoundError,
        match=rf"^Model folder '{typed}' does not exist\. Pass an existing folder with "
        r"config\.json, a hub id, or an embedded model \(minilm-l6, .*minilm-l6-tiny",
    ):
        CrossEncoder(typed)


def test_hub_id_while_offline_says_so_and_names_the_embedded_models():
    from transformers.utils.hub import is_offline_mode

    assert is_offline_mode()  # tests/conftest.py sets HF_HUB_OFFLINE=1
    with pytest.raises(
        FileNotFoundError,
        match=r"^'workbench-tests/no-such-reranker' is not an embedded model or a local folder, "
        r"and the Hugging Face hub is offline \(HF_HUB_OFFLINE=1\) with no copy in the local hub "
        r"cache\. Use an embedded model \(minilm-l6, ms-marco-minilm-l12, minilm-l6-tiny",
    ):
        CrossEncoder("workbench-tests/no-such-reranker")


@pytest.fixture
def pickle_only(tmp_path, tiny_model):
    """The tiny model with its weights in `pytorch_model.bin` only (transformers 5 writes
    safetensors whatever `safe_serialization` says, so the pickle is written by torch)."""
    folder = tmp_path / "pickled"
    tiny_model.save_pretrained(folder)
    torch.save(tiny_model.model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_pickle_only_weights_are_refused_unless_allowed(pickle_only, tiny_model):
    with pytest.raises(
        ValueError,
        match=r"holds its weights only in pickle format \(pytorch_model\.bin\), and loading a "
        r"pickle can run any code it carries\. .* or pass allow_pickle=True if you trust",
    ):
        CrossEncoder(pickle_only)
    loaded = CrossEncoder(pickle_only, allow_pickle=True)
    pairs = [(BERLIN, PASSAGES[0])]
    np.testing.assert_allclose(loaded.predict(pairs), tiny_model.predict(pairs), atol=1e-6)


def test_dense_embedder_refuses_pickle_only_weights_unless_allowed(pickle_only):
    from workbench.embeddings import DenseEmbedder

    with pytest.raises(ValueError, match=r"only in pickle format \(pytorch_model\.bin\)"):
        DenseEmbedder(str(pickle_only), cache_dir=False).encode(["a query"])
    vectors = DenseEmbedder(str(pickle_only), cache_dir=False, allow_pickle=True).encode(["q"])
    assert vectors.shape[0] == 1 and np.isfinite(vectors).all()


def _with_own_code(folder, tiny_model, model_type: str, marker):
    """A saved tiny model whose config.json points at code in the folder; the code leaves
    `marker` behind when it runs."""
    import json

    tiny_model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {
        "AutoConfig": "reranker_code.RerankerConfig",
        "AutoModelForSequenceClassification": "reranker_code.RerankerModel",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "reranker_code.py").write_text(
        "from pathlib import Path\n"
        "from transformers import BertConfig, BertForSequenceClassification\n"
        f"Path({str(marker)!r}).write_text('ran')\n\n\n"
        "class RerankerConfig(BertConfig):\n"
        f"    model_type = {model_type!r}\n\n\n"
        "class RerankerModel(BertForSequenceClassification):\n"
        "    config_class = RerankerConfig\n"
    )
    return folder


def test_model_that_needs_its_own_code_is_refused_unless_trusted(tmp_path, tiny_model):
    marker = tmp_path / "code-ran"
    folder = _with_own_code(tmp_path / "custom-reranker", tiny_model, "wb-reranker", marker)
    with pytest.raises(
        ValueError,
        match=r"needs its own Python code to load \(reranker_code\.RerankerConfig, "
        r"reranker_code\.RerankerModel in config\.json auto_map\), and remote code is off: .* "
        r"then pass trust_remote_code=True to allow it\.",
    ):
        CrossEncoder(folder)
    assert not marker.exists()
    model = CrossEncoder(folder, trust_remote_code=True)
    assert marker.exists() and type(model.model).__name__ == "RerankerModel"


def test_model_code_next_to_a_built_in_type_is_not_run(tmp_path, tiny_model, caplog):
    marker = tmp_path / "code-ran"
    folder = _with_own_code(tmp_path / "bert-with-code", tiny_model, "bert", marker)
    model = CrossEncoder(folder)
    assert not marker.exists()
    assert type(model.model).__name__ == "BertForSequenceClassification"
    assert "ships its own model code (auto_map in config.json), which was not run" in caplog.text
