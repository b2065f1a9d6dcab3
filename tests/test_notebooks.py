"""The tutorials in notebooks/: committed without outputs, laid out as STYLE.md asks, and each
runs top to bottom in fast mode (WORKBENCH_FAST=1, offline) in a fresh kernel and folder."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
NAMES = [
    "01_quickstart",
    "02_losses",
    "03_hard_negatives",
    "04_evaluate_and_compare",
    "05_reproduce_the_recipe",
]


def _code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_notebooks_are_committed_without_outputs():
    assert [path.stem for path in NOTEBOOKS] == NAMES
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for cell in _code_cells(notebook):
            assert cell.outputs == [], f"{path.name}: a code cell has outputs; clear them"
            assert cell.execution_count is None, f"{path.name}: clear the execution counts"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_layout(path):
    notebook = nbformat.read(path, as_version=4)
    title = notebook.cells[0]
    assert title.cell_type == "markdown" and title.source.startswith("# ")
    # A title, then one paragraph on what the reader learns.
    assert len(title.source.split("\n\n")) == 2
    headings = [c.source for c in notebook.cells if c.source.startswith("## ")]
    numbers = [int(re.match(r"## (\d+)\. ", h).group(1)) for h in headings]
    assert numbers == list(range(1, len(numbers) + 1)), headings
    for cell in _code_cells(notebook):
        assert cell.source.count("\n") + 1 <= 15, cell.source
        assert "sys.path" not in cell.source  # the package is imported as installed


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_fast_mode(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("WORKBENCH_FAST", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(path, as_version=4)
    folder = {"metadata": {"path": str(tmp_path)}}  # the kernel's working directory
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources=folder)
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    text = "\n".join(
        output.get("text", "") for cell in _code_cells(notebook) for output in cell.outputs
    )
    assert "fast" in text.lower() or "offline" in text.lower()
    if path.stem == "05_reproduce_the_recipe":
        assert "Offline: falling back to the bundled SciFact sample" in text
