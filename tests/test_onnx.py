"""ONNX export: fp32 graphs score as torch does, int8 within a stated tolerance, and the ONNX
reranker answers `predict` and `rank` like `CrossEncoder`. Pairs are real SciFact test claims
with their BM25 top 10.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from workbench import CrossEncoder
from workbench.evaluation import BeirSet
from workbench.onnx import INT8_FILE, OnnxCrossEncoder, export_onnx

FP32_TOLERANCE = 1e-4
# The tiny model's new head gives scores near 0.0146 +- 0.0003 (logits); int8 moved them by
# 0.0017 at most when measured.
TINY_INT8_TOLERANCE = 0.01
# The reranker's logits span about -11 to 8 on these pairs; int8 moved them by 0.40 at most
# when measured (weights quantized per tensor, activations per batch).
RERANKER_INT8_TOLERANCE = 0.75


@pytest.fixture(scope="module")
def candidates():
    """(query, [passages]) for 5 SciFact test claims: their BM25 top 10 (50 pairs)."""
    scifact = BeirSet.scifact(max_queries=5)
    return [
        (scifact.data.queries[q], [scifact.data.corpus[d] for d, _ in hits])
        for q, hits in scifact.first_stage(10).items()
    ]


def _pairs(candidates) -> list[tuple[str, str]]:
    return [(query, passage) for query, passages in candidates for passage in passages]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from transformers import set_seed

    set_seed(0)
    model = CrossEncoder("minilm-l6-tiny", max_length=128, device="cpu")
    return model, export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny")


def test_export_onnx_writes_checkpoint_and_both_graphs(tiny_export):
    _, folder = tiny_export

    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    assert (folder / "onnx" / "model.onnx").exists()
    int8 = folder / "onnx" / INT8_FILE
    assert int8.stat().st_size < (folder / "onnx" / "model.onnx").stat().st_size / 2


def test_onnx_fp32_scores_equal_torch(tiny_export, candidates):
    model, folder = tiny_export
    pairs = _pairs(candidates)

    expected = model.predict(pairs, activation="identity")
    scores = OnnxCrossEncoder(folder).predict(pairs, activation="identity")
    np.testing.assert_allclose(scores, expected, rtol=0, atol=FP32_TOLERANCE)


def test_onnx_int8_scores_within_tolerance(tiny_export, candidates):
    model, folder = tiny_export
    pairs = _pairs(candidates)

    expected = model.predict(pairs, activation="identity")
    scores = OnnxCrossEncoder(folder, quantized=True).predict(pairs, activation="identity")
    np.testing.assert_allclose(scores, expected, rtol=0, atol=TINY_INT8_TOLERANCE)


def test_onnx_keeps_saved_settings_and_rank_api(tiny_export, candidates):
    model, folder = tiny_export
    onnx_model = OnnxCrossEncoder(folder)
    query, passages = candidates[0]

    assert (onnx_model.max_length, onnx_model.activation) == (128, model.activation)
    ranked = onnx_model.rank(query, passages, top_k=3, return_passages=True)
    expected = model.rank(query, passages, top_k=3)
    assert [r["corpus_id"] for r in ranked] == [r["corpus_id"] for r in expected]
    for got, want in zip(ranked, expected, strict=True):
        assert got["score"] == pytest.approx(want["score"], abs=FP32_TOLERANCE)
        assert got["text"] == passages[got["corpus_id"]]


def test_onnx_precision_other_than_fp32_warns_once(tiny_export, caplog):
    _, folder = tiny_export
    onnx_model = OnnxCrossEncoder(folder)

    with caplog.at_level(logging.WARNING, logger="workbench.onnx"):
        onnx_model.predict([("a", "b")], precision="bf16")
        onnx_model.predict([("a", "b")], precision="bf16")
    assert sum("is ignored" in r.getMessage() for r in caplog.records) == 1


def test_onnx_missing_graph_names_the_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="Export the model first"):
        OnnxCrossEncoder(tmp_path)


@pytest.mark.slow
def test_onnx_reranker_int8_keeps_the_ranking(tmp_path, candidates):
    """The off-the-shelf 12-layer reranker at max_length 128 on 50 real SciFact pairs."""
    model = CrossEncoder("ms-marco-minilm-l12", max_length=128, device="cpu")
    folder = export_onnx(model, tmp_path / "reranker")
    pairs = _pairs(candidates)

    expected = model.predict(pairs, activation="identity")
    fp32 = OnnxCrossEncoder(folder).predict(pairs, activation="identity")
    int8 = OnnxCrossEncoder(folder, quantized=True).predict(pairs, activation="identity")
    np.testing.assert_allclose(fp32, expected, rtol=0, atol=FP32_TOLERANCE)
    np.testing.assert_allclose(int8, expected, rtol=0, atol=RERANKER_INT8_TOLERANCE)

    # Same top 3, in the same order, for every claim.
    per_query = len(candidates[0][1])
    for want, got in zip(expected.reshape(-1, per_query), int8.reshape(-1, per_query), strict=True):
        assert _top3(got) == _top3(want)


def _top3(scores: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-scores, kind="stable")[:3]]
