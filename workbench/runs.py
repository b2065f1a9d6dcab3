"""The run folder: config, metrics, final model, results and report, written atomically."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


class RunFolder:
    """Files of one training run.

    Layout: `config.json`, `metrics.jsonl` (one line per log or eval event), `checkpoints/`,
    `final/` (the model), `results.json` (system -> metrics) and `report.md`.

    Args:
        root: The folder; created if missing.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        probe = self.root / ".write-test"
        try:
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise PermissionError(f"Run folder {str(self.root)!r} is not writable: {err}") from err

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
        """Write `data` as JSON to `name` in the run folder, atomically."""
        return write_atomic(self.root / name, json.dumps(data, indent=2, sort_keys=False) + "\n")

    def write_text(self, name: str, text: str) -> Path:
        """Write text to `name` in the run folder, atomically."""
        return write_atomic(self.root / name, text)

    def read_metrics(self) -> list[dict]:
        """Read `metrics.jsonl`, ignoring a torn last line left by a killed process."""
        return read_jsonl(self.metrics_path)


def write_atomic(path: Path, text: str) -> Path:
    """Write to a temporary file in the same folder, then rename over `path`."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_jsonl(path: Path) -> list[dict]:
    """Read JSON lines; a malformed *last* line (a torn write) is skipped with a warning."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                logger.warning("Ignoring a torn last line in %s", path)
                continue
            raise
    return records
