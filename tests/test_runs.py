"""The run folder survives faults: atomic writes, torn JSON lines, and a process killed with
SIGKILL, whose folder still says `running`, read back as failed and resumable.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import TrainerState

from workbench import CrossEncoder
from workbench.runs import (
    RunFolder,
    drop_torn_tail,
    last_checkpoint,
    process_record,
    read_jsonl,
    run_state,
    write_atomic,
    write_folder_atomic,
)

# Three events as `MetricsFileCallback` writes them: an evaluation at the start, two log lines.
EVENTS = [
    {"step": 0, "max_steps": 8, "epoch": 0, "eval_dev_ndcg@10": 0.5967},
    {"step": 2, "max_steps": 8, "epoch": 0.25, "loss": 1.039, "learning_rate": 3e-05},
    {"step": 4, "max_steps": 8, "epoch": 0.5, "loss": 0.8688, "learning_rate": 2.455e-05},
]


def _jsonl(events: list[dict]) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


def _checkpoint(folder: Path, step: int) -> Path:
    """A checkpoint folder as the Trainer leaves it: weights, then `trainer_state.json`."""
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"classifier.weight": torch.zeros(1, 4)}, str(path / "model.safetensors"))
    TrainerState(global_step=step, max_steps=8).save_to_json(str(path / "trainer_state.json"))
    return path


def _dead_pid() -> int:
    """The id of a process that ran and was reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _status(folder: Path, **fields) -> None:
    RunFolder(folder).write_json("status.json", {"state": "running", **fields})


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# Atomic writes


def test_write_atomic_readers_never_see_a_partial_file(tmp_path):
    path = tmp_path / "results.json"
    texts = [json.dumps({"system": "a" * 1_000_000}), json.dumps({"system": "b" * 2_000_000})]
    write_atomic(path, texts[0])
    seen, done = [], threading.Event()

    def read_while_writing():
        while not done.is_set():
            text = path.read_text(encoding="utf-8")
            seen.append((len(text), text[-3:]))

    reader = threading.Thread(target=read_while_writing)
    reader.start()
    for i in range(20):
        write_atomic(path, texts[i % 2])
    done.set()
    reader.join()
    # Every read is one whole version: a plain write_text shows empty or cut files here.
    assert seen and set(seen) <= {(len(t), t[-3:]) for t in texts}
    assert _leftovers(tmp_path) == []


def test_write_atomic_failure_in_the_writer_keeps_the_old_file(tmp_path):
    path = write_atomic(tmp_path / "report.md", "# Run\nold report\n")
    # A lone surrogate cannot be encoded: the write fails after the temporary file was opened.
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, "# Run\nnew report \ud800\n")
    assert path.read_text(encoding="utf-8") == "# Run\nold report\n"
    assert _leftovers(tmp_path) == []


def test_write_atomic_file_gets_the_mode_of_a_plain_write(tmp_path):
    (tmp_path / "plain.json").write_text("{}")
    path = write_atomic(tmp_path / "results.json", "{}")
    # Not the temporary file's private 0o600: the dashboard or a second user reads results.
    assert path.stat().st_mode == (tmp_path / "plain.json").stat().st_mode


def test_write_folder_atomic_replaces_the_whole_model_folder(tmp_path, tiny_model):
    final = tmp_path / "final"
    final.mkdir()
    (final / "pytorch_model.bin").write_bytes(b"an older model")
    write_folder_atomic(final, tiny_model.save_pretrained)
    assert "pytorch_model.bin" not in os.listdir(final)
    assert (final / "model.safetensors").exists()
    assert final.stat().st_mode & 0o777 == _plain_folder_mode(tmp_path)
    assert _leftovers(tmp_path) == []
    loaded = CrossEncoder(final)
    pair = [("What is BM25?", "A ranking function.")]
    assert loaded.predict(pair) == pytest.approx(tiny_model.predict(pair), abs=1e-6)


def _plain_folder_mode(parent: Path) -> int:
    (parent / "plain").mkdir()
    return (parent / "plain").stat().st_mode & 0o777


@pytest.mark.parametrize("existed", [False, True], ids=["new", "replacing"])
def test_write_folder_atomic_failure_leaves_no_half_written_model(tmp_path, tiny_model, existed):
    final = tmp_path / "final"
    if existed:
        final.mkdir()
        (final / "config.json").write_text('{"old": true}')

    def save_then_fail(folder: Path) -> None:
        tiny_model.model.save_pretrained(folder)  # the weights are written, the tokenizer not
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_folder_atomic(final, save_then_fail)
    if existed:
        assert os.listdir(final) == ["config.json"]
        assert json.loads((final / "config.json").read_text()) == {"old": True}
    else:
        assert not final.exists()
    assert _leftovers(tmp_path) == []


# Torn JSON lines


def test_read_jsonl_skips_a_torn_last_line(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    text = _jsonl(EVENTS)
    path.write_text(text + '{"step": 6, "max_steps": 8, "lo')  # killed mid-write
    assert RunFolder(tmp_path).read_metrics() == EVENTS
    assert f"Ignoring a torn last line in {path} (line 4)" in caplog.text


def test_read_jsonl_refuses_a_torn_line_in_the_middle(tmp_path):
    # Documented: only the last line can be torn by a kill; one in the middle is damage.
    path = tmp_path / "metrics.jsonl"
    lines = _jsonl(EVENTS).splitlines()
    lines[1] = lines[1][:20]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{path}, line 2: invalid JSON"):
        read_jsonl(path)


def test_read_jsonl_of_a_missing_file_is_empty(tmp_path):
    assert read_jsonl(tmp_path / "metrics.jsonl") == []


def test_drop_torn_tail_lets_a_resumed_run_append_whole_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_jsonl(EVENTS[:2]) + '{"step": 4, "max_st')
    assert drop_torn_tail(path)
    with open(path, "a", encoding="utf-8") as handle:  # as the resumed run appends
        handle.write(json.dumps(EVENTS[2]) + "\n")
    assert read_jsonl(path) == EVENTS
    assert not drop_torn_tail(path)


def test_drop_torn_tail_keeps_a_whole_last_line_without_newline(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_jsonl(EVENTS).rstrip("\n"))
    assert drop_torn_tail(path)
    assert path.read_text() == _jsonl(EVENTS)


# Run state after a kill


def test_run_state_dead_pid_reads_failed_and_resumable(tmp_path):
    _checkpoint(tmp_path / "checkpoints", 4)
    pid = _dead_pid()
    _status(tmp_path, stage="training", pid=pid, pid_start="1", host=socket.gethostname())
    state = run_state(tmp_path)
    assert state.state == "failed" and state.resumable
    assert state.pid == pid
    assert state.last_checkpoint == tmp_path / "checkpoints" / "checkpoint-4"
    assert state.error == (
        f"The training process (pid {pid}) ended without finishing: it was killed (stopped by "
        "force, out of memory, or the machine restarted); resume from checkpoint-4."
    )


def test_run_state_dead_pid_without_checkpoint_is_not_resumable(tmp_path):
    _status(tmp_path, stage="baseline", pid=_dead_pid())
    state = run_state(tmp_path)
    assert state.state == "failed" and not state.resumable
    assert state.error.endswith("; no checkpoint to resume from.")


def test_run_state_killed_child_not_yet_reaped_reads_failed(tmp_path):
    # The dashboard's child, killed: a zombie until its parent polls it; its pid still answers.
    child = subprocess.Popen(["sleep", "30"])
    _status(tmp_path, **_record_of(child.pid))
    assert run_state(tmp_path).state == "running"
    child.kill()
    stat = Path(f"/proc/{child.pid}/stat")
    for _ in range(200):
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.01)
    assert run_state(tmp_path).state == "failed"
    child.wait()


def _record_of(pid: int) -> dict:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {"pid": pid, "pid_start": fields[19], "host": socket.gethostname()}


def test_run_state_live_process_reads_running_and_a_reused_pid_reads_failed(tmp_path):
    _status(tmp_path, **process_record())
    assert run_state(tmp_path).state == "running"
    assert not run_state(tmp_path).resumable
    # Same pid, another start time: the id was reused by a process that is not the run.
    _status(tmp_path, **(process_record() | {"pid_start": "1"}))
    assert run_state(tmp_path).state == "failed"


def test_run_state_of_a_finished_or_stopped_run_is_as_written(tmp_path):
    _checkpoint(tmp_path / "checkpoints", 8)
    RunFolder(tmp_path).write_json("status.json", {"state": "finished", "pid": _dead_pid()})
    assert (run_state(tmp_path).state, run_state(tmp_path).resumable) == ("finished", False)
    RunFolder(tmp_path).write_json("status.json", {"state": "stopped", "pid": _dead_pid()})
    assert (run_state(tmp_path).state, run_state(tmp_path).resumable) == ("stopped", True)


def test_run_state_unreadable_status_reads_failed(tmp_path):
    (tmp_path / "status.json").write_text('{"state": "runn')
    state = run_state(tmp_path)
    assert state.state == "failed"
    assert state.error.startswith("status.json cannot be read: ")


def test_run_state_of_an_empty_folder_is_new(tmp_path):
    assert run_state(tmp_path).state == "new"


def test_last_checkpoint_skips_one_cut_short_by_a_kill(tmp_path, caplog):
    checkpoints = tmp_path / "checkpoints"
    _checkpoint(checkpoints, 4)
    torn = _checkpoint(checkpoints, 6)
    text = (torn / "trainer_state.json").read_text()
    (torn / "trainer_state.json").write_text(text[: len(text) // 2])
    (checkpoints / "checkpoint-8").mkdir()  # killed before anything was written
    assert last_checkpoint(checkpoints) == checkpoints / "checkpoint-4"
    assert f"Skipping incomplete checkpoint {torn}" in caplog.text
    assert last_checkpoint(tmp_path / "absent") is None


# Folder checks before a run starts


def test_run_folder_that_cannot_be_created_is_a_clear_error(tmp_path):
    (tmp_path / "runs").write_text("a file, not a folder")
    with pytest.raises(PermissionError, match=r"Run folder '.*runs/a' is not writable .* Pick"):
        RunFolder(tmp_path / "runs" / "a")


def test_check_free_space_refuses_a_run_that_cannot_fit(tmp_path):
    with pytest.raises(OSError, match=r"free, but this run needs about .* Free some space"):
        RunFolder(tmp_path).check_free_space(10**18)
    RunFolder(tmp_path).check_free_space(1024)


def test_runs_root_follows_the_environment_and_a_spaces_storage(tmp_path, monkeypatch):
    import workbench.runs as runs

    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv(runs.RUNS_DIR_ENV, raising=False)
    assert runs.runs_root() == Path("runs")
    monkeypatch.setenv("SPACE_ID", "me/workbench")
    monkeypatch.setattr(runs, "_SPACE_STORAGE", str(tmp_path))
    assert runs.runs_root() == tmp_path / "workbench-runs"
    monkeypatch.setattr(runs, "_SPACE_STORAGE", str(tmp_path / "absent"))
    assert runs.runs_root() == Path("runs")
    monkeypatch.setenv(runs.RUNS_DIR_ENV, str(tmp_path / "mine"))
    assert runs.runs_root() == tmp_path / "mine"
