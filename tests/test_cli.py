"""The command line: a small real run of the main job writes the whole run folder."""

from __future__ import annotations

import json

import pytest

from workbench.cli import main
from workbench.runs import read_jsonl


@pytest.mark.slow
def test_train_writes_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--output-dir",
            str(out),
            "--base-model",
            "minilm-l6-tiny",
            "--baseline-model",
            "minilm-l6-tiny",
            "--max-train-queries",
            "12",
            "--dev-queries",
            "6",
            "--max-test-queries",
            "6",
            "--max-length",
            "64",
            "--freeze-layers",
            "1",
            "--eval-steps",
            "2",
            "--precision",
            "bf16",
        ]
    )
    assert code == 0

    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"bm25", "baseline", "finetuned"}
    for metrics in results.values():
        assert set(metrics) == {"ndcg@10", "mrr@10", "map"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())

    assert (out / "final" / "model.safetensors").exists()
    comparison = json.loads((out / "comparison.json").read_text())
    assert 0.0 <= comparison["randomization_p"] <= 1.0
    assert comparison["improved"] + comparison["regressed"] + comparison["tied"] == 6
    import pandas as pd

    table = pd.read_csv(out / "per_query_test.csv")
    assert {"bm25_ndcg@10", "baseline_ndcg@10", "finetuned_ndcg@10"} <= set(table.columns)
    assert table["finetuned_ndcg@10"].mean() == pytest.approx(results["finetuned"]["ndcg@10"])
    assert table["bm25_ndcg@10"].mean() == pytest.approx(results["bm25"]["ndcg@10"])
    assert "fine-tuned model" in (out / "report.md").read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["base_model"] == "minilm-l6-tiny" and config["freeze_layers"] == 1
    assert config["resolved_precision"] == "bf16"
    events = read_jsonl(out / "metrics.jsonl")
    # The eval loss and the evaluator's metrics are two events at the same step.
    assert next(e for e in events if "eval_dev_ndcg@10" in e)["step"] == 0
    assert events[0]["step"] == 0 and "eval_loss" in events[0]
    assert any("loss" in e for e in events)
    assert "| finetuned |" in capsys.readouterr().out


def test_config_file_and_flags_combine(tmp_path):
    from workbench.job import JobConfig

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"negatives": 5, "learning_rate": 1e-5}))
    config = JobConfig.from_file(path, learning_rate=2e-5)
    assert (config.negatives, config.learning_rate) == (5, 2e-5)
    path.write_text(json.dumps({"negativs": 5}))
    with pytest.raises(ValueError, match=r"unknown config keys \['negativs'\]"):
        JobConfig.from_file(path)


def test_missing_data_folder_is_a_clean_error(tmp_path, capsys):
    code = main(["train", "--output-dir", str(tmp_path / "r"), "--data", str(tmp_path / "nope")])
    assert code == 2
    assert "error:" in capsys.readouterr().err
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["state"] == "failed" and "FileNotFoundError" in status["error"]


def test_evaluate_scores_a_model_on_a_beir_folder(tmp_path, capsys):
    from tests.conftest import shared_data

    folder = shared_data("scifact")
    code = main(
        [
            "evaluate",
            "--model",
            "minilm-l6-tiny",
            "--data",
            str(folder),
            "--split",
            "test",
            "--top-k",
            "2",
            "--max-length",
            "32",
        ]
    )
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)

    # The first-stage figure is BM25's top-2 as trec_eval scores it.
    import pytrec_eval

    from workbench import BM25Retriever, load_beir

    beir = load_beir(folder, "test")
    hits = BM25Retriever(beir.corpus).search(list(beir.queries.values()), top_k=2)
    runs = {q: dict(h) for q, h in zip(beir.queries, hits, strict=True)}
    values = pytrec_eval.RelevanceEvaluator(beir.qrels, {"ndcg_cut.10"}).evaluate(runs)
    expected = sum(v["ndcg_cut_10"] for v in values.values()) / len(values)
    assert metrics["test_base_ndcg@10"] == pytest.approx(expected, abs=1e-9)
    assert 0.0 <= metrics["test_ndcg@10"] <= 1.0
