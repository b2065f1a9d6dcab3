"""The command line: a small real run of the main job writes the whole run folder; a run
killed in a real child process resumes to the step it was set to reach.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from workbench.cli import EXIT_STOPPED, main
from workbench.runs import last_checkpoint, read_jsonl, run_state

REPO = Path(__file__).resolve().parents[1]
# A job of seconds: 2-layer model with every layer frozen (only the head trains), 8 train
# queries, 4 steps; evaluation and a checkpoint every 2 steps.
TINY_JOB = [
    *("--base-model", "minilm-l6-tiny", "--baseline-model", "minilm-l6-tiny"),
    *("--max-train-queries", "8", "--dev-queries", "4", "--max-test-queries", "4"),
    *("--first-stage-depth", "20", "--rerank-top-k", "5", "--dev-top-k", "5"),
    *("--max-length", "64", "--batch-size", "4", "--freeze-layers", "2"),
    *("--max-steps", "4", "--eval-steps", "2", "--precision", "fp32"),
    "--no-cache-baseline-scores",
]


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


def test_train_error_and_status_never_show_a_hub_token(tmp_path, capsys):
    token = "hf_" + "Xq7RkP2vLm9TzW4bNc8YdJ5sHf3GaU6eKo"
    out = tmp_path / "r"
    code = main(["train", "--output-dir", str(out), "--data", str(tmp_path / token)])
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "***" in err and token not in err
    assert token not in (out / "status.json").read_text()


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


def _start_train(out: Path, log, *flags: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "workbench", "train", "--output-dir", str(out), *flags]
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def _wait_for_checkpoint(out: Path, process: subprocess.Popen, log_path: Path) -> Path:
    """The first complete checkpoint of a running job (not one still being written)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        found = last_checkpoint(out / "checkpoints")
        if found is not None:
            return found
        if process.poll() is not None:
            pytest.fail(f"train exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    process.kill()
    pytest.fail("no checkpoint within 180 s")


def test_train_killed_with_sigkill_resumes_to_the_configured_step(tmp_path):
    out, log_path = tmp_path / "run", tmp_path / "train.log"
    with open(log_path, "w") as log:
        process = _start_train(out, log, *TINY_JOB)
        _wait_for_checkpoint(out, process, log_path)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    # Nothing could write the end of the run: the folder still says running ...
    assert json.loads((out / "status.json").read_text())["state"] == "running"
    # ... and the dead pid tells it apart.
    state = run_state(out)
    assert state.state == "failed" and state.resumable
    assert f"The training process (pid {process.pid}) ended without finishing" in state.error
    assert state.error.endswith(f"resume from {state.last_checkpoint.name}.")
    resumed_from = int(state.last_checkpoint.name.removeprefix("checkpoint-"))

    # A kill can land mid-write too: half a metrics line, a newer checkpoint without its state.
    before = len(read_jsonl(out / "metrics.jsonl"))
    with open(out / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 3, "max_steps": 4, "epo')
    (out / "checkpoints" / f"checkpoint-{resumed_from + 1}").mkdir()

    with open(log_path, "a") as log:
        flags = ("--config", str(out / "config.json"), "--resume")
        assert _start_train(out, log, *flags).wait(timeout=300) == 0, log_path.read_text()
    assert run_state(out).state == "finished"
    events = read_jsonl(out / "metrics.jsonl")
    trained = [e["step"] for e in events[before:] if "loss" in e]
    assert trained and min(trained) > resumed_from  # went on from the checkpoint
    assert max(e["step"] for e in events) == 4
    final_state = json.loads(
        (last_checkpoint(out / "checkpoints") / "trainer_state.json").read_text()
    )
    assert final_state["global_step"] == final_state["max_steps"] == 4
    assert "Training steps: 4;" in (out / "report.md").read_text()
    # The guardrails kept step 0's figures from the log: no false collapse, no lost baseline.
    assert not any(e.get("eval_dev_collapsed") for e in events)
    assert "eval_on_start is off" not in log_path.read_text()

    from workbench import CrossEncoder

    model = CrossEncoder(out / "final", max_length=64)
    scores = model.predict([("Does BM25 rank passages?", "BM25 is a ranking function.")])
    assert scores.shape == (1,) and np.isfinite(scores).all()


def test_train_stopped_with_sigterm_exits_stopped_with_a_checkpoint(tmp_path):
    out, log_path = tmp_path / "run", tmp_path / "train.log"
    with open(log_path, "w") as log:
        process = _start_train(out, log, *TINY_JOB)
        _wait_for_checkpoint(out, process, log_path)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == EXIT_STOPPED, log_path.read_text()[-3000:]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "stopped"
    step = int(status["message"].removeprefix("stopped at step "))
    state = run_state(out)
    assert state.resumable and state.last_checkpoint.name == f"checkpoint-{step}"
    assert f"Stopped (stopped at step {step}); continue with --resume." in log_path.read_text()
