"""What a run folder shows people: progress with ETA, training curves, the run list, and the
test rankings of two systems side by side. Reads files only; the dashboard polls these.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.evaluation.compare import RunComparison, compare_runs
from workbench.evaluation.metrics import mrr_at_k, ndcg_at_k
from workbench.runs import read_jsonl, run_state

# Systems a run's rankings_test.jsonl scores every candidate with.
SYSTEMS = {"first_stage": "first stage (BM25)", "baseline": "baseline", "finetuned": "fine-tuned"}
_SMOOTHING = 0.8


@dataclass(frozen=True)
class Progress:
    """Where a run is.

    Attributes:
        state: The run state (`queued`, `running`, `finished`, `failed`, `stopped`, `new`).
        stage: The job stage while running (`retrieval`, `baseline`, `training`, ...).
        step: The last logged optimizer step.
        max_steps: Steps the training will take (0 before training starts).
        eta_s: Seconds left in training, from the pace so far; None when unknown.
        error: Why it failed, for people.
    """

    state: str
    stage: str | None
    step: int
    max_steps: int
    eta_s: float | None
    error: str | None

    @property
    def fraction(self) -> float:
        return self.step / self.max_steps if self.max_steps else 0.0

    def describe(self) -> str:
        """One line for people: state, stage, step and ETA."""
        parts = [self.state + (f" ({self.stage})" if self.stage else "")]
        if self.max_steps:
            parts.append(f"step {self.step} / {self.max_steps} ({self.fraction:.0%})")
        if self.eta_s is not None and self.state == "running":
            parts.append(f"about {_duration(self.eta_s)} left in training")
        if self.error:
            parts.append(self.error)
        return " · ".join(parts)


def run_progress(folder: str | Path) -> Progress:
    """The state, stage, step and ETA of a run, from `status.json` and `metrics.jsonl`."""
    folder = Path(folder)
    state = run_state(folder)
    status = _read_json(folder / "status.json")
    events = read_jsonl(folder / "metrics.jsonl")
    steps = [e for e in events if "loss" in e]
    step = steps[-1]["step"] if steps else 0
    max_steps = max((e.get("max_steps", 0) for e in events), default=0)
    eta = None
    if len(steps) >= 2 and max_steps:
        first, last = steps[0], steps[-1]
        pace = (last["time"] - first["time"]) / max(last["step"] - first["step"], 1)
        eta = pace * (max_steps - step)
    stage = status.get("stage") if state.state == "running" else None
    return Progress(state.state, stage, step, max_steps, eta, state.error)


def training_figures(events: list[dict]) -> tuple[go.Figure, go.Figure]:
    """Loss curves (training raw and smoothed, eval loss) and ranking metrics per evaluation.

    The metrics figure has dashed reference lines for the first stage and for the starting
    model (the evaluation at step 0).
    """
    return _loss_figure(events), _metrics_figure(events)


def _loss_figure(events: list[dict]) -> go.Figure:
    figure = go.Figure()
    train = [e for e in events if "loss" in e]
    if train:
        steps = [e["step"] for e in train]
        losses = np.array([e["loss"] for e in train], dtype=float)
        figure.add_scatter(x=steps, y=losses, name="training loss", opacity=0.35)
        figure.add_scatter(x=steps, y=_ema(losses), name="training loss (smoothed)")
    evals = [e for e in events if "eval_loss" in e]
    if evals:
        figure.add_scatter(
            x=[e["step"] for e in evals], y=[e["eval_loss"] for e in evals], name="eval loss"
        )
    return _layout(figure, "Loss", "loss")


def _metrics_figure(events: list[dict]) -> go.Figure:
    figure = go.Figure()
    evals = [e for e in events if any(k.endswith("_ndcg@10") for k in e)]
    for metric in ("ndcg@10", "mrr@10"):
        key = next((k for e in evals for k in e if _is_metric(k, metric)), None)
        if key is None:
            continue
        points = [(e["step"], e[key]) for e in evals if key in e]
        figure.add_scatter(
            x=[s for s, _ in points], y=[v for _, v in points], name=metric, mode="lines+markers"
        )
        base = next((e[k] for e in evals for k in e if k.endswith(f"_base_{metric}")), None)
        start = next((v for s, v in points if s == 0), None)
        for value, label in ((base, "first stage"), (start, "starting model")):
            if value is not None:
                figure.add_hline(
                    y=value,
                    line_dash="dash" if label == "first stage" else "dot",
                    annotation_text=f"{label} {metric} {value:.3f}",
                    opacity=0.6,
                )
    return _layout(figure, "Dev ranking metrics", "value")


def _is_metric(key: str, metric: str) -> bool:
    return key.startswith("eval_") and key.endswith(f"_{metric}") and "_base_" not in key


def _ema(values: np.ndarray) -> np.ndarray:
    smoothed = np.empty_like(values)
    running = values[0]
    for index, value in enumerate(values):
        running = _SMOOTHING * running + (1 - _SMOOTHING) * value
        # Bias correction: early points are not dragged toward the first value.
        smoothed[index] = running if index else value
    return smoothed


def _layout(figure: go.Figure, title: str, y_title: str) -> go.Figure:
    figure.update_layout(
        title=title,
        xaxis_title="step",
        yaxis_title=y_title,
        height=320,
        margin={"l": 40, "r": 20, "t": 40, "b": 40},
        legend={"orientation": "h", "y": -0.25},
    )
    return figure


def log_tail(folder: str | Path, lines: int = 25) -> str:
    """The last lines of the run's training log (empty before it starts)."""
    path = Path(folder) / "train.log"
    if not path.exists():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - 64 * 1024))
        text = handle.read().decode("utf-8", errors="replace")
    # Progress bars rewrite one line with carriage returns: keep the last state of each.
    # (split on newlines only: splitlines() would also split at each carriage return)
    rows = [row.rsplit("\r", 1)[-1] for row in text.rstrip("\n").split("\n")]
    return "\n".join(rows[-lines:])


def list_runs(root: str | Path) -> pd.DataFrame:
    """One row per run folder under `root`, newest first."""
    rows = []
    root = Path(root)
    for folder in sorted(root.iterdir() if root.exists() else [], reverse=True):
        config = _read_json(folder / "launch.json") or _read_json(folder / "config.json")
        if not folder.is_dir() or not config:
            continue
        results = _read_json(folder / "results.json")
        progress = run_progress(folder)
        rows.append(
            {
                "run": folder.name,
                "state": progress.state,
                "step": f"{progress.step}/{progress.max_steps}" if progress.max_steps else "",
                "base model": config.get("base_model", ""),
                "loss": config.get("loss", ""),
                "data": config.get("train_file") or config.get("data", ""),
                "fine-tuned nDCG@10": results.get("finetuned", {}).get("ndcg@10"),
                "baseline nDCG@10": results.get("baseline", {}).get("ndcg@10"),
                "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime(folder.stat().st_mtime)),
            }
        )
    columns = ["run", "state", "step", "base model", "loss", "data"]
    columns += ["fine-tuned nDCG@10", "baseline nDCG@10", "modified"]
    return pd.DataFrame(rows, columns=columns)


# Comparing rankings


def load_rankings(folder: str | Path) -> list[dict]:
    """A finished run's test rankings: per query, every candidate with each system's score.

    Raises:
        FileNotFoundError: If the run has no `rankings_test.jsonl` (not finished).
    """
    path = Path(folder) / "rankings_test.jsonl"
    if not path.exists():
        raise FileNotFoundError(
            f"{Path(folder).name} has no test rankings yet: only finished runs can be compared."
        )
    return read_jsonl(path)


def query_metrics(rankings: list[dict], system: str, *, k: int = 10) -> pd.DataFrame:
    """Per-query nDCG@k and MRR@k of one system's scores, with trec_eval's tie order."""
    rows = []
    for record in rankings:
        # Judgments of documents the first stage missed count in the ideal ranking too.
        qrels = record.get("qrels") or {d["id"]: d["grade"] for d in record["docs"]}
        order = _order(record["docs"], system)
        rows.append(
            {
                "query_id": record["query_id"],
                "query": record["query"],
                f"ndcg@{k}": ndcg_at_k(order, qrels, k),
                f"mrr@{k}": mrr_at_k(order, qrels, k),
            }
        )
    return pd.DataFrame(rows)


def compare_systems(
    rankings_a: list[dict], system_a: str, rankings_b: list[dict], system_b: str
) -> tuple[RunComparison, pd.DataFrame]:
    """Paired comparison of two systems over the queries both rankings hold.

    Returns:
        The comparison (b - a) and a per-query table with both nDCG@10 values and the delta.

    Raises:
        ValueError: If the two rankings share no query.
    """
    a = query_metrics(rankings_a, system_a).set_index("query_id")
    b = query_metrics(rankings_b, system_b).set_index("query_id")
    shared = a.index.intersection(b.index)
    if shared.empty:
        raise ValueError("The two runs share no test query: compare runs on the same test data.")
    a, b = a.loc[shared].reset_index(), b.loc[shared].reset_index()
    comparison = compare_runs(a, b, metric="ndcg@10")
    table = pd.DataFrame(
        {
            "query_id": a["query_id"],
            "query": a["query"],
            "A nDCG@10": a["ndcg@10"].round(4),
            "B nDCG@10": b["ndcg@10"].round(4),
            "delta": (b["ndcg@10"] - a["ndcg@10"]).round(4),
        }
    )
    return comparison, table


def side_by_side(
    record_a: dict, system_a: str, record_b: dict, system_b: str, *, top: int = 10
) -> pd.DataFrame:
    """Both rankings of one query in two column groups, with each document's rank movement
    (positive: B ranks it higher) and its judged grade."""
    order_a = _order(record_a["docs"], system_a)
    order_b = _order(record_b["docs"], system_b)
    rank_a = {doc: i + 1 for i, doc in enumerate(order_a)}
    texts = {d["id"]: d["text"] for d in record_a["docs"] + record_b["docs"]}
    grades = {d["id"]: d["grade"] for d in record_a["docs"] + record_b["docs"]}
    scores_a = {d["id"]: d[system_a] for d in record_a["docs"]}
    scores_b = {d["id"]: d[system_b] for d in record_b["docs"]}
    rows = []
    for position in range(min(top, max(len(order_a), len(order_b)))):
        doc_a = order_a[position] if position < len(order_a) else None
        doc_b = order_b[position] if position < len(order_b) else None
        moved = rank_a[doc_b] - (position + 1) if doc_b in rank_a else None
        rows.append(
            {
                "rank": position + 1,
                "A score": round(scores_a[doc_a], 4) if doc_a else None,
                "A relevant": grades.get(doc_a, 0) if doc_a else None,
                "A passage": _clip(texts.get(doc_a, "")),
                "B score": round(scores_b[doc_b], 4) if doc_b else None,
                "B relevant": grades.get(doc_b, 0) if doc_b else None,
                "B moved": _movement(moved),
                "B passage": _clip(texts.get(doc_b, "")),
            }
        )
    return pd.DataFrame(rows)


def _order(docs: list[dict], system: str) -> list[str]:
    # Score descending, ties by document id descending (trec_eval's order).
    ranked = sorted(docs, key=lambda d: (d[system], d["id"]), reverse=True)
    return [d["id"] for d in ranked]


def _movement(moved: int | None) -> str:
    if moved is None:
        return "new"
    return f"▲{moved}" if moved > 0 else (f"▼{-moved}" if moved < 0 else "=")


def _clip(text: str, width: int = 220) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s"
