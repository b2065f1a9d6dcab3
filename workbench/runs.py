"""The run folder: config, metrics, final model, results and report, written atomically;
its state (running, finished, failed) read back even after the process was killed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workbench.security import redact, scrub_secrets

logger = logging.getLogger(__name__)

RUNS_DIR_ENV = "WORKBENCH_RUNS_DIR"
# A Space's persistent storage, when the Space has it.
_SPACE_STORAGE = "/data"
# Room kept free beyond a run's own estimate (logs, reports, the file system's own needs).
_DISK_MARGIN_BYTES = 64 * 1024 * 1024


def runs_root() -> Path:
    """The folder that holds run folders: `WORKBENCH_RUNS_DIR`, else on a Hugging Face Space
    with persistent storage `/data/workbench-runs` (it outlives restarts), else `runs`."""
    if os.environ.get(RUNS_DIR_ENV):
        return Path(os.environ[RUNS_DIR_ENV])
    persistent = Path(_SPACE_STORAGE)
    if os.environ.get("SPACE_ID") and persistent.is_dir() and os.access(persistent, os.W_OK):
        return persistent / "workbench-runs"
    return Path("runs")


@dataclass(frozen=True)
class RunState:
    """What a run folder says about its run.

    Attributes:
        state: `new` (no status yet), `running`, `finished`, `failed`, or another state a
            runner wrote (e.g. `stopped`).
        error: Why it failed, for people; None otherwise.
        pid: The training process, when recorded.
        last_checkpoint: The newest complete checkpoint, or None.
    """

    state: str
    error: str | None = None
    pid: int | None = None
    last_checkpoint: Path | None = None

    @property
    def resumable(self) -> bool:
        """A run that did not finish and has a checkpoint to go on from."""
        return self.state not in ("running", "finished") and self.last_checkpoint is not None


class RunFolder:
    """Files of one training run.

    Layout: `config.json`, `metrics.jsonl` (one line per log or eval event), `checkpoints/`,
    `final/` (the model), `results.json` (system -> metrics) and `report.md`.

    Args:
        root: The folder; created if missing.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        probe = self.root / ".write-test"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise PermissionError(
                f"Run folder {str(self.root)!r} is not writable ({err.strerror or err}). Pick "
                "another --output-dir, or fix the folder's permissions."
            ) from err

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final_model(self) -> Path:
        return self.root / "final"

    def write_json(self, name: str, data) -> Path:
        """Write `data` as JSON to `name` in the run folder, atomically, tokens scrubbed."""
        text = json.dumps(redact(data), indent=2, sort_keys=False) + "\n"
        return write_atomic(self.root / name, text)

    def write_text(self, name: str, text: str) -> Path:
        """Write text to `name` in the run folder, atomically, tokens scrubbed."""
        return write_atomic(self.root / name, scrub_secrets(text))

    def read_metrics(self) -> list[dict]:
        """Read `metrics.jsonl`, ignoring a torn last line left by a killed process."""
        return read_jsonl(self.metrics_path)

    def check_free_space(self, needed_bytes: int) -> None:
        """Refuse to start when the disk under the run folder cannot hold `needed_bytes` more.

        Raises:
            OSError: With `errno.ENOSPC` and how much is missing.
        """
        free = shutil.disk_usage(self.root).free
        if free < needed_bytes + _DISK_MARGIN_BYTES:
            raise OSError(
                28,
                f"Run folder {str(self.root)!r} has {_size(free)} free, but this run needs about "
                f"{_size(needed_bytes + _DISK_MARGIN_BYTES)} (checkpoints and the final model). "
                "Free some space (old runs, checkpoints), or pick another --output-dir.",
            )


def process_record() -> dict:
    """This process's id, start time and host, for `status.json`: `run_state` uses them to
    tell a live run from one whose process was killed."""
    pid = os.getpid()
    return {"pid": pid, "pid_start": _process_start(pid), "host": socket.gethostname()}


def run_state(root: str | Path) -> RunState:
    """Read a run folder's state; a `running` run whose process is gone reads as `failed`.

    A process killed with SIGKILL (or by the out-of-memory killer, or a reboot) cannot write its
    own status; its folder still says `running`. The recorded process id (and its start time,
    against reuse of the id) tells a live run from a dead one on the same machine.

    Args:
        root: The run folder.

    Returns:
        The state, the error for people, the pid, and the newest complete checkpoint.
    """
    root = Path(root)
    checkpoint = last_checkpoint(root / "checkpoints")
    path = root / "status.json"
    if not path.exists():
        return RunState("new", last_checkpoint=checkpoint)
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        return RunState("failed", f"status.json cannot be read: {err}", None, checkpoint)

    state, pid = status.get("state", "unknown"), status.get("pid")
    if state == "running" and pid is not None and not _is_alive(status):
        resume = f"resume from {checkpoint.name}" if checkpoint else "no checkpoint to resume from"
        error = (
            f"The training process (pid {pid}) ended without finishing: it was killed (stopped "
            f"by force, out of memory, or the machine restarted); {resume}."
        )
        return RunState("failed", error, pid, checkpoint)
    return RunState(state, status.get("error"), pid, checkpoint)


def last_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete `checkpoint-<step>` folder, or None.

    The Trainer writes `trainer_state.json` last, so a checkpoint cut short by a kill lacks it
    (or holds a torn copy) and is skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    steps = []
    for path in folder.glob("checkpoint-*"):
        if path.name.removeprefix("checkpoint-").isdigit():
            steps.append((int(path.name.removeprefix("checkpoint-")), path))
    for _, path in sorted(steps, reverse=True):
        if _checkpoint_complete(path):
            return path
        logger.warning("Skipping incomplete checkpoint %s (cut short by a stop or crash)", path)
    return None


def write_folder_atomic(target: str | Path, write: Callable[[Path], object]) -> Path:
    """Fill a folder through `write(staging)` and only then put it in place of `target`.

    The staging folder sits next to `target` (same file system), so the swap is a rename: a
    reader sees the old folder or the complete new one, never a half-written one.

    Args:
        target: The folder to create or replace (e.g. the run's `final/` model).
        write: Called with the staging folder; writes everything into it.

    Returns:
        `target`.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not `mkdtemp`: its owner-only mode would stay on the final folder.
    staging = _temporary_name(target, "tmp")
    staging.mkdir(mode=0o777)
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    try:
        write(staging)
        if target.exists():
            target.rename(old)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not target.exists():
            old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


def write_atomic(path: Path, text: str) -> Path:
    """Write to a temporary file in the same folder, then rename over `path`.

    A reader sees the old file or the complete new one; a failed write leaves the old one. The
    file gets the mode a plain `open` gives (0o666 less the umask).
    """
    tmp = _temporary_name(Path(path), "tmp")
    # Not `mkstemp`: its owner-only 0o600 would stay on the final file.
    handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_jsonl(path: Path) -> list[dict]:
    """Read JSON lines; a malformed *last* line (a torn write) is skipped with a warning.

    Raises:
        ValueError: If a line other than the last is malformed (naming file and line).
    """
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                logger.warning("Ignoring a torn last line in %s (line %d)", path, number)
                continue
            raise ValueError(f"{path}, line {number}: invalid JSON ({err})") from err
    return records


def drop_torn_tail(path: str | Path) -> bool:
    """Cut a torn last line (no newline, not valid JSON) off a JSON-lines file.

    Call it before appending to a file a killed process wrote: the next line would otherwise
    be glued to the torn one and leave a malformed line in the middle, which `read_jsonl`
    refuses. A complete last line that only lacks its newline gets one.

    Returns:
        Whether the file was changed.
    """
    path = Path(path)
    data = path.read_bytes() if path.exists() else b""
    if not data or data.endswith(b"\n"):
        return False
    keep = data.rfind(b"\n") + 1
    try:
        json.loads(data[keep:])
    except ValueError:
        logger.warning("Dropping a torn last line of %s (left by a stopped writer)", path)
        os.truncate(path, keep)
        return True
    with open(path, "ab") as handle:
        handle.write(b"\n")
    return True


def _temporary_name(path: Path, kind: str) -> Path:
    """A fresh hidden name next to `path`, on the same file system (so a rename is atomic)."""
    return path.with_name(f".{path.name}.{kind}-{secrets.token_hex(6)}")


def _checkpoint_complete(path: Path) -> bool:
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return any(path.glob("*.safetensors")) or any(path.glob("*.bin"))


def _is_alive(status: dict) -> bool:
    """Whether the process recorded in `status` still runs (a zombie counts as dead)."""
    if status.get("host") not in (None, socket.gethostname()):
        return True  # another machine's process: nothing here can tell
    pid = int(status["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc/self/stat").exists():
        return True  # no /proc (macOS, Windows): the pid answering is all there is to know
    started, recorded = _process_start(pid), status.get("pid_start")
    return started is not None and recorded in (None, started)


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None where unknown.

    A zombie (killed, not yet reaped by its parent) reports None: it no longer runs.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _size(size: int) -> str:
    return f"{size / 1024**3:.1f} GB" if size >= 1024**3 else f"{size / 1024**2:.0f} MB"
