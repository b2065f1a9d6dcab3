"""The run queue: real training processes on a tiny SciFact job, one at a time, stopped,
resumed to the same final step, and a crashing child recorded as failed."""

from __future__ import annotations

import json
import time

import pytest
from conftest import tiny_job_config

from workbench.job import JobConfig
from workbench.launcher import RunQueue
from workbench.run_view import run_progress
from workbench.runs import read_jsonl, run_state


def tiny_config(**overrides) -> JobConfig:
    return tiny_job_config(**({"max_train_queries": 12, "dev_queries": 6} | overrides))


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.mark.slow
def test_queue_stops_queues_and_resumes_to_the_final_step(tmp_path):
    queue = RunQueue(tmp_path)
    first = queue.submit(tiny_config(max_steps=40), name="first")
    second = queue.submit(tiny_config(max_steps=2), name="second")
    assert queue.position(first) in (0, 1) and queue.position(second) >= 1

    # Stop the first run once it has trained a few steps; the second waits meanwhile.
    metrics = tmp_path / first / "metrics.jsonl"
    _wait_for(lambda: any("loss" in e for e in read_jsonl(metrics)), 120, "training steps")
    assert queue.position(second) == 1
    assert "Stopping" in queue.stop(first)
    _wait_for(lambda: queue.position(first) is None, 120, "the stop")
    state = run_state(tmp_path / first)
    assert state.state == "stopped" and state.resumable

    # The second run starts only now, and finishes; then the first resumes to step 40.
    assert queue.wait(second, timeout=180)
    assert run_state(tmp_path / second).state == "finished"
    queue.resume(first)
    assert queue.wait(first, timeout=240)
    assert run_state(tmp_path / first).state == "finished"
    trainer_state = json.loads(
        (state.last_checkpoint.parent / "checkpoint-40" / "trainer_state.json").read_text()
    )
    assert trainer_state["global_step"] == 40
    assert (tmp_path / first / "final" / "model.safetensors").exists()
    progress = run_progress(tmp_path / first)
    assert (progress.step, progress.max_steps) == (40, 40)
    log = (tmp_path / first / "train.log").read_text()
    assert log.count("$ ") == 2 and "--resume" in log


@pytest.mark.slow
def test_queue_records_a_crashed_child_as_failed(tmp_path):
    queue = RunQueue(tmp_path)
    run_id = queue.submit(tiny_config(base_model=str(tmp_path / "no-such-model")))
    assert queue.wait(run_id, timeout=120)

    state = run_state(tmp_path / run_id)
    assert state.state == "failed"
    assert "no-such-model" in state.error
    assert "no-such-model" in (tmp_path / run_id / "train.log").read_text()
    with pytest.raises(RuntimeError, match="cannot be resumed"):
        queue.resume(run_id)


def test_queue_refuses_run_ids_outside_its_root(tmp_path):
    queue = RunQueue(tmp_path / "runs")
    (tmp_path / "elsewhere").mkdir()

    with pytest.raises(ValueError, match="No run"):
        queue.folder("../elsewhere")
    with pytest.raises(ValueError, match="No run"):
        queue.delete("../elsewhere")
    assert (tmp_path / "elsewhere").exists()


@pytest.mark.slow
def test_queue_after_an_app_restart_keeps_runs_and_queues_waiting_ones_again(tmp_path):
    import dataclasses

    first = RunQueue(tmp_path)
    crashing = tiny_config(base_model=str(tmp_path / "no-such-model"))
    done = first.submit(crashing, name="done")
    assert first.wait(done, timeout=120)
    # A run left waiting when the app stopped: its launch config, its state queued.
    waiting = tmp_path / "20990101-000000-waiting-0000"
    waiting.mkdir()
    (waiting / "launch.json").write_text(json.dumps(dataclasses.asdict(crashing)))
    (waiting / "status.json").write_text(json.dumps({"state": "queued"}))

    restarted = RunQueue(tmp_path)
    snapshot = restarted.snapshot()
    assert waiting.name in [snapshot["running"], *snapshot["waiting"]]
    assert restarted.wait(waiting.name, timeout=120)
    assert run_state(waiting).state == "failed"
    assert run_state(tmp_path / done).state == "failed"  # still listed, with its error
