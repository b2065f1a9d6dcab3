"""Training runs in their own processes, one at a time, with a visible queue.

The dashboard submits a `JobConfig`; the queue writes it to a new run folder and starts
`python -m workbench train --config ... --output-dir ...` when the device is free. A crash in
training ends that process only. Stop writes the run's `STOP` file (the job saves a checkpoint
and exits); resume queues the same folder again with `--resume`. Everything the dashboard shows
comes from run folders, so runs survive an app restart.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from pathlib import Path

from workbench.job import STOP_FILE, JobConfig
from workbench.runs import RunFolder, run_state

logger = logging.getLogger(__name__)

LAUNCH_CONFIG = "launch.json"
LOG_FILE = "train.log"
# How often the worker thread checks the running process (seconds).
_POLL_S = 0.5


class RunQueue:
    """Start queued runs one after another, each in a child process.

    Args:
        root: The folder holding run folders.
        python: The interpreter that runs training; defaults to this one.

    Example:
        >>> queue = RunQueue("runs")
        >>> run_id = queue.submit(JobConfig(max_steps=20))
        >>> queue.position(run_id)  # 0 while running, 1.. while waiting
    """

    def __init__(self, root: str | Path, *, python: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.python = python or sys.executable
        self._lock = threading.Lock()
        self._waiting: deque[tuple[str, bool]] = deque()
        self._running: tuple[str, subprocess.Popen] | None = None
        self._wake = threading.Event()
        self._requeue_after_restart()
        threading.Thread(target=self._work, name="run-queue", daemon=True).start()

    def submit(self, config: JobConfig, *, name: str | None = None) -> str:
        """Write a new run folder for `config` and queue it; returns the run id."""
        run_id = _new_run_id(name)
        run = RunFolder(self.root / run_id)
        run.write_json(LAUNCH_CONFIG, dataclasses.asdict(config))
        self._enqueue(run_id, resume=False)
        return run_id

    def resume(self, run_id: str) -> None:
        """Queue a stopped or failed run again; it goes on from its last checkpoint.

        Raises:
            RuntimeError: If the run is running, queued, finished or has no checkpoint.
        """
        state = run_state(self.folder(run_id))
        if self.position(run_id) is not None or not state.resumable:
            reason = state.error or f"it is {self._state_name(run_id, state.state)}"
            raise RuntimeError(f"Run {run_id!r} cannot be resumed: {reason}.")
        self._enqueue(run_id, resume=True)

    def stop(self, run_id: str) -> str:
        """Stop a run: a queued one leaves the queue, a running one saves a checkpoint and
        exits at the end of its step. Returns what was done, for people."""
        with self._lock:
            for item in list(self._waiting):
                if item[0] == run_id:
                    self._waiting.remove(item)
                    self._write_state(run_id, "stopped", message="removed from the queue")
                    return f"Run {run_id} left the queue."
            running = self._running is not None and self._running[0] == run_id
        if not running:
            return f"Run {run_id} is not running."
        (self.folder(run_id) / STOP_FILE).touch()
        return f"Stopping run {run_id}: it saves a checkpoint at the end of this step."

    def delete(self, run_id: str) -> None:
        """Delete a run folder that is neither running nor queued.

        Raises:
            RuntimeError: If the run is running or queued.
        """
        if self.position(run_id) is not None:
            raise RuntimeError(f"Run {run_id!r} is running or queued: stop it first.")
        shutil.rmtree(self.folder(run_id))

    def position(self, run_id: str) -> int | None:
        """0 for the running run, 1.. for waiting runs in order, None otherwise."""
        with self._lock:
            if self._running is not None and self._running[0] == run_id:
                return 0
            ids = [item[0] for item in self._waiting]
        return ids.index(run_id) + 1 if run_id in ids else None

    def snapshot(self) -> dict:
        """The running run id (or None) and the waiting run ids, in order."""
        with self._lock:
            running = self._running[0] if self._running else None
            return {"running": running, "waiting": [item[0] for item in self._waiting]}

    def folder(self, run_id: str) -> Path:
        """The run folder of `run_id`, refusing ids that would leave the root."""
        path = (self.root / run_id).resolve()
        if path.parent != self.root.resolve() or not path.is_dir():
            raise ValueError(f"No run {run_id!r} under {self.root}")
        return path

    def wait(self, run_id: str, timeout: float | None = None) -> bool:
        """Block until `run_id` is neither running nor queued; False on timeout."""
        deadline = None if timeout is None else time.time() + timeout
        while self.position(run_id) is not None:
            if deadline is not None and time.time() > deadline:
                return False
            time.sleep(_POLL_S)
        return True

    # Internals

    def _enqueue(self, run_id: str, *, resume: bool) -> None:
        with self._lock:
            self._waiting.append((run_id, resume))
        self._write_state(run_id, "queued", resume=resume, queued=time.time())
        self._wake.set()

    def _work(self) -> None:
        while True:
            self._wake.wait(_POLL_S)
            self._wake.clear()
            with self._lock:
                if self._running is not None and self._running[1].poll() is not None:
                    self._finish(*self._running)
                    self._running = None
                if self._running is None and self._waiting:
                    run_id, resume = self._waiting.popleft()
                    self._running = (run_id, self._start(run_id, resume))

    def _start(self, run_id: str, resume: bool) -> subprocess.Popen:
        folder = self.root / run_id
        command = [self.python, "-m", "workbench", "train", "--output-dir", str(folder)]
        command += ["--config", str(folder / LAUNCH_CONFIG)] + (["--resume"] if resume else [])
        log = open(folder / LOG_FILE, "a", encoding="utf-8")  # noqa: SIM115 (child owns it)
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        logger.info("Starting run %s%s", run_id, " (resume)" if resume else "")
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        log.close()
        return process

    def _finish(self, run_id: str, process: subprocess.Popen) -> None:
        """Record a child that died before it could write its own final state."""
        state = run_state(self.root / run_id)
        logger.info("Run %s ended with exit code %s (%s)", run_id, process.returncode, state.state)
        if state.state in ("running", "queued", "new"):
            error = f"the training process exited with code {process.returncode}; see {LOG_FILE}"
            self._write_state(run_id, "failed", error=error)

    def _write_state(self, run_id: str, state: str, **fields) -> None:
        folder = RunFolder(self.root / run_id)
        folder.write_json("status.json", {"state": state, **fields})

    def _state_name(self, run_id: str, state: str) -> str:
        return "queued or running" if self.position(run_id) is not None else state

    def _requeue_after_restart(self) -> None:
        """Runs that were waiting when the app stopped wait again, oldest first."""
        queued = []
        for folder in self.root.iterdir() if self.root.exists() else []:
            if (folder / LAUNCH_CONFIG).exists() and run_state(folder).state == "queued":
                queued.append(folder)
        for folder in sorted(queued, key=lambda f: f.stat().st_mtime):
            resume = (folder / "checkpoints").exists()
            self._waiting.append((folder.name, resume))
            logger.info("Run %s was queued before a restart; queued again", folder.name)


def _new_run_id(name: str | None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in (name or "run"))[:40]
    return f"{stamp}-{slug}-{uuid.uuid4().hex[:4]}"
