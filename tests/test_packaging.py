"""environment.yml (conda users) lists exactly the packages of pyproject.toml."""

from __future__ import annotations

from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted |= set(extra)

    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    listed = {line for line in pip_section if not line.startswith("-e")}
    assert listed == wanted


def test_bundled_sample_carries_its_license():
    sample = ROOT / "workbench" / "samples" / "scifact"
    assert "NON-COMMERCIAL" in (sample / "LICENSE").read_text()
    assert (sample / "corpus.jsonl").stat().st_size > 7_000_000
