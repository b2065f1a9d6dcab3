"""The repository is a Gradio Space: README front matter and the requirements a Space installs."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _front_matter() -> dict:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n"), "README.md must open with the Space's YAML front matter"
    header, sep, _ = text.removeprefix("---\n").partition("\n---\n")
    assert sep, "the front matter has no closing ---"
    return yaml.safe_load(header)


def test_readme_front_matter_makes_a_gradio_space():
    meta = _front_matter()

    assert meta["sdk"] == "gradio"
    assert meta["app_file"] == "app.py" and (ROOT / meta["app_file"]).is_file()
    # The Space runs the Gradio the app is tested with.
    assert str(meta["sdk_version"]) == metadata.version("gradio")
    assert str(meta["python_version"]).startswith("3.")
    assert len(meta["short_description"]) <= 60


def test_space_requirements_are_the_package_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    listed = [line for line in lines if line.strip() and not line.startswith("#")]

    assert sorted(listed) == sorted(project["dependencies"])
