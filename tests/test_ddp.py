"""Real DDP: two CPU processes (gloo) under torchrun train the tiny model through the
unchanged `transformers.Trainer`; both ranks train, metrics are logged once, the model loads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
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
