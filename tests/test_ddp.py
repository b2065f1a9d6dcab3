"""Real DDP: two CPU processes (gloo) under torchrun train the tiny model through the
unchanged `transformers.Trainer`; both ranks train, metrics are logged once, the model loads.
The main job does the same with `num_processes=2`, and a stop reaches both processes."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench import CrossEncoder
from workbench.runs import read_jsonl

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_cpu_ranks_train_log_once_and_save(tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(SCRIPT), str(tmp_path),
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["steps"] == 4 and r["changed"] for r in ranks)
    events = [e for e in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in e]
    assert [e["step"] for e in events] == [1, 2, 3, 4]
    # Pairs per step count both ranks' batches.
    assert all(e["pairs_per_s"] > 0 for e in events[1:])
    model = CrossEncoder(str(tmp_path / "final"))
    scores = model.predict([("vitamin d", "Vitamin D and infections."), ("a", "b")])
    assert scores.shape == (2,)


def _job_command(tmp_path, **overrides) -> list[str]:
    """`python -m workbench train` on the tiny job with 2 processes, its config in a file."""
    from conftest import tiny_job_config

    config = tiny_job_config(
        first_stage_depth=20,
        rerank_top_k=5,
        dev_top_k=5,
        precision="fp32",
        cache_baseline_scores=False,
        num_processes=2,
        **overrides,
    )
    path = tmp_path / "job.json"
    path.write_text(json.dumps(dataclasses.asdict(config)))
    run = tmp_path / "run"
    return [
        sys.executable,
        "-m",
        "workbench",
        "train",
        "--config",
        str(path),
        "--output-dir",
        str(run),
    ]


ENV = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_main_job_on_two_processes_shards_batches_and_writes_once(tmp_path):
    from conftest import tiny_job_config

    from workbench.job import prepare_data, training_pairs

    done = subprocess.run(
        _job_command(tmp_path), capture_output=True, text=True, env=ENV, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert set(json.loads((run / "results.json").read_text())) == {"bm25", "baseline", "finetuned"}
    # Rank 0 alone prints the results table.
    assert done.stdout.count("finetuned") == 1

    # Each step takes a batch per rank: an epoch is half the steps of one process.
    pairs = training_pairs(prepare_data(tiny_job_config()), 3)
    steps = [e for e in read_jsonl(run / "metrics.jsonl") if "loss" in e]
    planned = -(-len(pairs) // (4 * 2))
    # Steps run, not only planned: a short batch in the wrong place would lose a round.
    assert steps[-1]["max_steps"] == planned
    assert [e["step"] for e in steps] == list(range(1, planned + 1))
    model = CrossEncoder(str(run / "final"))
    assert model.predict([("vitamin d", "Vitamin D and infections.")]).shape == (1,)


@pytest.mark.slow
def test_stop_file_stops_both_processes_at_one_step(tmp_path):
    process = subprocess.Popen(
        _job_command(tmp_path, max_steps=400, eval_steps=400),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    run = tmp_path / "run"
    deadline = time.time() + 600
    while not any("loss" in e for e in read_jsonl(run / "metrics.jsonl")):
        assert process.poll() is None and time.time() < deadline, "training never started"
        time.sleep(0.5)
    (run / "STOP").touch()
    output, _ = process.communicate(timeout=300)

    assert process.returncode == 3, output[-3000:]
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"
    saved = sorted((run / "checkpoints").glob("checkpoint-*"))
    assert saved and int(saved[-1].name.split("-")[1]) < 400
