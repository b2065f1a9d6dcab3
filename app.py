"""Reranker Workbench dashboard: load and validate data, mine negatives, train with live curves,
keep runs, compare two systems query by query, and export the model.

Run with `python app.py` and open the printed URL. It binds to 127.0.0.1 unless
`WORKBENCH_HOST` says otherwise; `WORKBENCH_AUTH=user:password` turns on Gradio's login;
runs live under `WORKBENCH_RUNS_DIR` (default `runs`). The same file is a Hugging Face Space's app.
"""

from __future__ import annotations

import functools
import html
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd
import torch

from workbench import CrossEncoder, hub
from workbench.data import (
    DataValidationError,
    guess_column_roles,
    load_beir,
    read_table,
    scifact_path,
    validate_data,
)
from workbench.embedded import EMBEDDED_MODELS
from workbench.evaluation.compare import comparison_figures
from workbench.job import JobConfig
from workbench.launcher import RunQueue
from workbench.model_card import model_card
from workbench.run_view import (
    SYSTEMS,
    compare_systems,
    list_runs,
    load_rankings,
    log_tail,
    run_progress,
    side_by_side,
    training_figures,
)
from workbench.runs import read_jsonl, runs_root
from workbench.security import (
    PathNotAllowedError,
    UploadTooLargeError,
    check_upload_size,
    confine_path,
    install_log_redaction,
    upload_destination,
)

logging.basicConfig(level=logging.INFO)
install_log_redaction()

DEFAULT_MODEL = "ms-marco-minilm-l12"
SAMPLE = "SciFact sample (bundled)"
UPLOAD = "Upload a file"
HUB = "Hub dataset"
SCREEN_CHOICES = ["flag", "drop", "off"]
POLL_SECONDS = 2.0
EXAMPLE_QUERY = "Vitamin D deficiency is linked to a higher risk of respiratory infection."
EXAMPLE_PASSAGES = "\n".join(
    [
        "Vitamin D supplementation reduced acute respiratory tract infections in a meta-analysis "
        "of randomised trials, most strongly in people with low baseline levels.",
        "Regular aerobic exercise improves cardiovascular fitness in older adults.",
        "Low serum 25-hydroxyvitamin D was associated with more upper respiratory infections.",
        "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    ]
)
# Shared by every browser session, read-only after start: the run queue (one training
# process at a time on this machine) and the run folder root.
RUNS = runs_root()
_QUEUE: RunQueue | None = None


def queue() -> RunQueue:
    """The app's run queue, started on first use."""
    global _QUEUE
    if _QUEUE is None:
        _QUEUE = RunQueue(RUNS)
    return _QUEUE


def new_session() -> dict:
    """Per-browser state: the data picked, whether it validated, the run being watched."""
    return {
        "id": uuid.uuid4().hex[:12],
        "source": None,
        "train": None,
        "eval": None,
        "ok": False,
        "losses": [],
        "run": None,
    }


@functools.lru_cache(maxsize=3)
def load_model(name: str) -> CrossEncoder:
    """Load a model once; the cache is shared by all users and only read after loading."""
    return CrossEncoder(resolve_model(name))


def resolve_model(name: str) -> str:
    """An embedded name, a run (`run:<id>`), a local folder (confined on a Space) or a hub id."""
    name = (name or "").strip()
    if name.startswith("run:"):
        return str(queue().folder(name[4:]) / "final")
    if name in EMBEDDED_MODELS or not Path(name).exists():
        return name
    try:
        return str(confine_path(name))
    except PathNotAllowedError as err:
        raise gr.Error(str(err)) from err


# Rank tab


def rank_passages(model_name: str, query: str, passages_text: str, top_k: float) -> pd.DataFrame:
    """Handler: rank one passage per non-empty line for the query."""
    model_name = (model_name or "").strip()
    passages = _lines(passages_text)
    if not model_name:
        raise gr.Error("Pick an embedded model, or type a local folder or a hub id.")
    if not (query or "").strip():
        raise gr.Error("Type a query.")
    if not passages:
        raise gr.Error("Type at least one passage, one per line.")

    model = _load_or_explain(model_name)
    results = model.rank(query, passages, top_k=int(top_k or 0) or None, return_passages=True)
    return pd.DataFrame(
        {
            "rank": range(1, len(results) + 1),
            "score": [round(r["score"], 4) for r in results],
            "input line": [r["corpus_id"] + 1 for r in results],
            "passage": [r["text"] for r in results],
        }
    )


def _load_or_explain(model_name: str) -> CrossEncoder:
    try:
        return load_model(model_name)
    except (OSError, ValueError, ImportError, RuntimeError) as err:
        raise gr.Error(f"Could not load model {model_name!r}: {err}") from err


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


# Data tab


def load_training_data(source: str, upload, hub_id: str, session: dict):
    """Handler: take the sample, an upload or a hub dataset; preview it and guess column roles.

    Returns:
        Preview table, column-map text, a note, and the session.
    """
    session = dict(session) | {"ok": False, "losses": []}
    if source == SAMPLE:
        frame = _sample_rows()
        session |= {"source": "scifact", "train": None}
        note = (
            f"Bundled SciFact: {frame['query'].nunique()} train claims with their cited "
            "abstracts. Training adds 3 BM25 negatives per claim and reports on the test claims."
        )
        return frame.head(20), "", note, session
    path = _upload_path(upload, session) if source == UPLOAD else _hub_path(hub_id, session)
    try:
        table, origin = read_table(path)
    except (DataValidationError, OSError, ValueError) as err:
        raise gr.Error(str(err)) from err
    roles = guess_column_roles(list(table.columns))
    session |= {"source": "file", "train": str(path)}
    mapping = ", ".join(f"{c}={r}" for c, r in roles.items())
    note = f"{origin}: {len(table):,} rows, columns {list(table.columns)!r}."
    return table.head(20), mapping, note, session


def _sample_rows() -> pd.DataFrame:
    train = load_beir(scifact_path(), "train")
    rows = [
        {"query": train.queries[q], "positive": train.corpus[d]}
        for q in sorted(train.queries)
        for d, grade in train.qrels[q].items()
        if grade > 0
    ]
    return pd.DataFrame(rows)


def _upload_folder(session: dict) -> Path:
    folder = RUNS / "_uploads" / session["id"]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _upload_path(upload, session: dict) -> Path:
    if not upload:
        raise gr.Error("Choose a CSV, TSV, JSONL or Parquet file to upload.")
    source = Path(upload if isinstance(upload, str) else upload.name)
    try:
        check_upload_size(source)
        target = upload_destination(_upload_folder(session), source.name)
    except (UploadTooLargeError, PathNotAllowedError) as err:
        raise gr.Error(str(err)) from err
    shutil.copyfile(source, target)
    return target


def _hub_path(hub_id: str, session: dict) -> Path:
    hub_id = (hub_id or "").strip()
    if not hub_id:
        raise gr.Error("Type a hub dataset id, e.g. sentence-transformers/gooaq.")
    import datasets

    try:
        rows = datasets.load_dataset(hub_id, split="train")
    except Exception as err:  # the hub client raises many kinds; all mean "not loaded"
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "connect" in str(err).lower()
        hint = (
            " This machine is offline: upload a file or use the bundled sample." if offline else ""
        )
        raise gr.Error(f"Could not load hub dataset {hub_id!r}: {err}.{hint}") from err
    target = _upload_folder(session) / (hub_id.replace("/", "__") + ".jsonl")
    rows.to_json(str(target))
    return target


def validate_training_data(
    session: dict, column_map_text: str, eval_upload, loss: str, model: str, max_length: float
):
    """Handler: the validation report; errors block launch, warnings do not.

    Returns:
        The report (Markdown), the loss dropdown update, and the session.
    """
    session = dict(session)
    if session.get("source") is None:
        raise gr.Error("Load data first: the bundled sample, an upload or a hub dataset.")
    column_map = _parse_column_map(column_map_text)
    train = _sample_rows() if session["source"] == "scifact" else session["train"]
    if column_map and session["source"] == "file":
        train = _remapped_copy(session, train, column_map)
        session["train"] = train
    if eval_upload:
        session["eval"] = str(_upload_path(eval_upload, session))
    tokenizer = _tokenizer_or_none(model)
    report = validate_data(
        train,
        session.get("eval"),
        loss=loss or None,
        tokenizer=tokenizer,
        max_length=int(max_length or 256),
    )
    session["ok"] = report.ok
    session["losses"] = [item["loss"] for item in report.losses]
    text = report.to_markdown()
    if session["source"] == "scifact":
        text += "\nThe main job adds BM25 negatives to these (query, positive) rows.\n"
        session["losses"] = ["BinaryCrossEntropyLoss"] + session["losses"]
    if tokenizer is None:
        text += f"\nToken lengths not checked: no tokenizer could be loaded for {model!r}.\n"
    choices = list(dict.fromkeys(session["losses"])) or ["BinaryCrossEntropyLoss"]
    value = loss if loss in choices else choices[0]
    return text, gr.update(choices=choices, value=value), session


def _parse_column_map(text: str) -> dict[str, str]:
    """`question=query, sentence=passage` as {source: role}; identity pairs are dropped."""
    mapping = {}
    for item in (text or "").replace("\n", ",").split(","):
        if not item.strip():
            continue
        source, sep, role = item.partition("=")
        if not sep or not source.strip() or not role.strip():
            raise gr.Error(f"Column map entries look like source=role, got {item.strip()!r}.")
        if source.strip() != role.strip():
            mapping[source.strip()] = role.strip()
    return mapping


def _remapped_copy(session: dict, path: str, column_map: dict[str, str]) -> str:
    """The file with its columns renamed to roles, as JSON lines the job reads as is."""
    table, _ = read_table(path)
    missing = [c for c in column_map if c not in table.columns]
    if missing:
        raise gr.Error(f"Column map names columns the file lacks: {missing!r}.")
    target = _upload_folder(session) / (Path(path).name.split(".")[0] + ".mapped.jsonl")
    table.rename(columns=column_map).to_json(target, orient="records", lines=True)
    return str(target)


def _tokenizer_or_none(model: str):
    try:
        return _tokenizer(resolve_model(model or DEFAULT_MODEL))
    except (OSError, ValueError):
        return None


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
    from transformers import AutoTokenizer

    from workbench import embedded

    path = embedded.resolve(name)[0] if name in EMBEDDED_MODELS else name
    return AutoTokenizer.from_pretrained(path)


def mine_negatives(
    session: dict,
    retriever: str,
    num_negatives: float,
    range_min: float,
    range_max: float,
    relative_margin: float,
    sampling: str,
    random_share: float,
    screen: str,
):
    """Handler: mine hard negatives for the loaded data; the result becomes the training data.

    Returns:
        The mining report, a preview of the mined rows, and the session.
    """
    from workbench.job_files import write_rows
    from workbench.mining import mine_hard_negatives

    session = dict(session)
    if session.get("source") is None:
        raise gr.Error("Load data first: the bundled sample, an upload or a hub dataset.")
    if session["source"] == "scifact":
        rows, corpus = _sample_rows(), list(load_beir(scifact_path(), "train").corpus.values())
    else:
        rows, corpus = session["train"], _passages_of(session["train"])
    try:
        result = mine_hard_negatives(
            rows,
            corpus,
            retriever=retriever,
            num_negatives=int(num_negatives),
            range_min=int(range_min or 0),
            range_max=int(range_max) if range_max else None,
            relative_margin=relative_margin or None,
            sampling=sampling,
            random_share=float(random_share or 0.0),
            output_format="labeled-pairs",
            false_negative_screen=None if screen == "off" else screen,
        )
    except (DataValidationError, ValueError, OSError) as err:
        raise gr.Error(str(err)) from err
    target = _upload_folder(session) / f"mined-{retriever.replace('/', '_')}.jsonl"
    write_rows(result.dataset, target)
    session |= {"source": "file", "train": str(target), "ok": False}
    note = "\nThe mined pairs are now the training data: validate them before launch.\n"
    return result.report.to_markdown() + note, result.dataset.to_pandas().head(20), session


def _passages_of(path: str) -> list[str] | None:
    table, _ = read_table(path)
    for column in ("passage", "positive", "text", "document"):
        if column in table.columns:
            return list(dict.fromkeys(table[column].dropna().astype(str)))
    return None


# Train tab


def estimate_cost(
    session: dict,
    base_model: str,
    batch_size: float,
    max_length: float,
    epochs: float,
    max_steps: float,
) -> str:
    """Handler: steps, a measured time per step on this machine, and memory, before launch."""
    import torch

    from workbench.device import default_device
    from workbench.losses import BinaryCrossEntropyLoss

    rows = _training_row_count(session)
    batch = int(batch_size)
    steps = int(max_steps) if max_steps else -(-rows // batch) * max(int(epochs or 1), 1)
    model = CrossEncoder(resolve_model(base_model), max_length=int(max_length))
    pairs = _probe_pairs(session, batch)
    loss = BinaryCrossEntropyLoss(model)
    labels = torch.tensor([1.0] + [0.0] * (len(pairs) - 1), device=model.device)
    columns = {"query": [q for q, _ in pairs], "passage": [p for _, p in pairs]}
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        loss(columns, labels).backward()
        seconds.append(time.perf_counter() - start)
    per_step = seconds[-1]
    parameters = sum(p.numel() for p in model.model.parameters())
    # Weights, gradients and two Adam moments in fp32.
    memory_gb = parameters * 4 * 4 / 1e9
    return (
        f"**{rows:,} training rows → {steps:,} steps** of {batch} on {default_device()}.  \n"
        f"Measured here: {per_step:.2f} s per step (one forward and backward pass of "
        f"{len(pairs)} real pairs at {int(max_length)} tokens), so training takes about "
        f"**{_minutes(per_step * steps)}**, plus evaluations and scoring the test set.  \n"
        f"Model: {parameters / 1e6:.1f}M parameters; weights, gradients and optimizer state "
        f"take about {memory_gb:.2f} GB, activations more with larger batches."
    )


def _training_row_count(session: dict) -> int:
    if session.get("source") is None:
        raise gr.Error("Load and validate data first.")
    if session["source"] == "scifact":
        return len(_sample_rows()) + 3 * _sample_rows()["query"].nunique()
    return len(read_table(session["train"])[0])


def _probe_pairs(session: dict, batch: int) -> list[tuple[str, str]]:
    if session["source"] == "scifact":
        frame = _sample_rows().rename(columns={"positive": "passage"})
    else:
        frame = read_table(session["train"])[0]
    text = next(c for c in ("passage", "positive", "documents") if c in frame.columns)
    rows = frame.head(batch)
    passages = [p if isinstance(p, str) else str(p[0]) for p in rows[text]]
    return list(zip(rows["query"].astype(str), passages, strict=True))


def local_gpus() -> int:
    """CUDA devices this machine shows the app."""
    return torch.cuda.device_count()


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def launch_training(
    session: dict,
    base_model: str,
    baseline_model: str,
    loss: str,
    epochs: float,
    batch_size: float,
    learning_rate: float,
    max_length: float,
    warmup_ratio: float,
    precision: str,
    eval_steps: float,
    max_steps: float,
    freeze_layers: float,
    dev_queries: float,
    name: str,
    gpus: float | None = 1,
):
    """Handler: queue a training run in its own process; returns a note and the session.

    With several GPUs the run trains on `gpus` of them, one DDP process each."""
    session = dict(session)
    if session.get("source") is None:
        raise gr.Error("Load data on the Data tab first.")
    if not session.get("ok"):
        raise gr.Error("Validate the data first: launch needs a report without errors.")
    settings = {
        "base_model": resolve_model(base_model),
        "baseline_model": resolve_model(baseline_model or base_model),
        "loss": loss or "BinaryCrossEntropyLoss",
        "epochs": float(epochs),
        "batch_size": int(batch_size),
        "learning_rate": float(learning_rate),
        "max_length": int(max_length),
        "warmup_ratio": float(warmup_ratio),
        "precision": precision,
        "eval_steps": int(eval_steps) or None,
        "max_steps": int(max_steps) or None,
        "freeze_layers": int(freeze_layers),
        "num_processes": max(1, int(gpus or 1)),
    }
    note = ""
    if session["source"] == "file":
        settings |= {"train_file": session["train"], "eval_file": session.get("eval")}
        if not session.get("eval"):
            settings["dev_queries"], note = _held_out(session["train"], int(dev_queries))
    else:
        settings["dev_queries"] = int(dev_queries)
    try:
        config = JobConfig(**settings)
    except (TypeError, ValueError) as err:
        raise gr.Error(f"Settings not accepted: {err}") from err
    run_id = queue().submit(config, name=(name or "").strip() or None)
    session["run"] = run_id
    position = queue().position(run_id)
    where = "starting" if position == 0 else f"queued, position {position}"
    return f"Run `{run_id}`: {where}.{note}", session


def _held_out(train: str, wanted: int) -> tuple[int, str]:
    """Eval queries held out of the training file: as asked, or a fifth when it has too few."""
    queries = read_table(train)[0]["query"].nunique()
    if wanted < queries:
        return wanted, ""
    count = max(1, queries // 5)
    return count, f" The file has {queries} queries: {count} of them are held out as eval."


def poll_run(session: dict):
    """Timer handler: the watched run's progress, curves and log, and the queue."""
    run_id = (session or {}).get("run")
    snapshot = queue().snapshot()
    queue_text = _queue_text(snapshot)
    if not run_id:
        empty = training_figures([])
        return _progress_html(None), *empty, "", queue_text
    folder = RUNS / run_id
    progress = run_progress(folder)
    loss_figure, metrics_figure = training_figures(read_jsonl(folder / "metrics.jsonl"))
    return (
        _progress_html(progress, run_id),
        loss_figure,
        metrics_figure,
        log_tail(folder),
        queue_text,
    )


def _progress_html(progress, run_id: str | None = None) -> str:
    if progress is None:
        return "<p>No run selected: launch one, or open one on the Runs tab.</p>"
    percent = round(100 * progress.fraction)
    return (
        f"<div><b>{html.escape(run_id or '')}</b>: {html.escape(progress.describe())}</div>"
        f'<progress value="{percent}" max="100" style="width:100%"></progress>'
    )


def _queue_text(snapshot: dict) -> str:
    running = snapshot["running"] or "none"
    waiting = ", ".join(snapshot["waiting"]) or "none"
    return f"Training now: `{running}`. Waiting: {waiting}."


def stop_run(session: dict) -> str:
    """Handler: stop the watched run (it keeps its checkpoints)."""
    run_id = (session or {}).get("run")
    if not run_id:
        raise gr.Error("No run selected.")
    return queue().stop(run_id)


def resume_run(session: dict) -> str:
    """Handler: queue the watched run again from its last checkpoint."""
    run_id = (session or {}).get("run")
    if not run_id:
        raise gr.Error("No run selected.")
    # The job writes "stopped" a few seconds before its process exits; until then the queue
    # still counts it as running and would refuse the resume.
    if run_progress(RUNS / run_id).state in ("stopped", "failed"):
        queue().wait(run_id, timeout=30)
    try:
        queue().resume(run_id)
    except (RuntimeError, ValueError) as err:
        raise gr.Error(str(err)) from err
    return f"Run `{run_id}` queued to resume from its last checkpoint."


# Runs tab


def refresh_runs():
    """Handler: the run table and the run pickers of every tab."""
    table = list_runs(RUNS)
    choices = list(table["run"])
    # One update per picker: Gradio pops "value" from an update it applies, so a shared one
    # would set only the first picker.
    picks = [gr.update(choices=choices, value=choices[0] if choices else None) for _ in range(4)]
    return table, *picks


def open_run(run_id: str, session: dict):
    """Handler: watch this run on the Train tab."""
    if not run_id:
        raise gr.Error("Pick a run.")
    return f"Watching `{run_id}` on the Train tab.", dict(session) | {"run": run_id}


def delete_run(run_id: str, confirmed: bool) -> str:
    """Handler: delete a run folder (not while it runs or waits)."""
    if not run_id:
        raise gr.Error("Pick a run.")
    if not confirmed:
        raise gr.Error("Tick 'yes, delete it' first: a deleted run cannot come back.")
    try:
        queue().delete(run_id)
    except (RuntimeError, ValueError) as err:
        raise gr.Error(str(err)) from err
    return f"Deleted `{run_id}`."


# Compare tab


def compare_runs_handler(run_a: str, system_a: str, run_b: str, system_b: str):
    """Handler: aggregate metrics, the paired test, figures and the per-query table.

    Returns:
        Summary (Markdown), delta histogram, scatter, per-query table, query picker, and the
        comparison state (rankings of both sides) for the per-query view.
    """
    if not run_a or not run_b:
        raise gr.Error("Pick a run for each side.")
    try:
        rankings_a = load_rankings(RUNS / run_a)
        rankings_b = load_rankings(RUNS / run_b)
        comparison, table = compare_systems(rankings_a, system_a, rankings_b, system_b)
    except (FileNotFoundError, ValueError) as err:
        raise gr.Error(str(err)) from err
    figures = comparison_figures(comparison)
    label_a, label_b = f"A = {SYSTEMS[system_a]} ({run_a})", f"B = {SYSTEMS[system_b]} ({run_b})"
    summary = (
        f"**{label_a}** vs **{label_b}**, {len(table)} test queries.\n\n"
        "| | A | B |\n|---|---|---|\n"
        f"| nDCG@10 | {table['A nDCG@10'].mean():.4f} | {table['B nDCG@10'].mean():.4f} |\n\n"
        f"B - A: mean {comparison.mean_delta:+.4f}, 95% bootstrap CI "
        f"[{comparison.ci_low:+.4f}, {comparison.ci_high:+.4f}]; paired randomization test "
        f"p = {comparison.randomization_p:.3f}, t-test p = {comparison.t_test_p:.3f}; "
        f"{comparison.improved} improved, {comparison.regressed} regressed, "
        f"{comparison.tied} tied."
    )
    state = {"a": rankings_a, "b": rankings_b, "system_a": system_a, "system_b": system_b}
    ordered = table.sort_values("delta")
    picker = gr.update(choices=_query_choices(ordered), value=_query_choices(ordered)[0])
    return summary, figures["deltas"], figures["scatter"], ordered, picker, state


def filter_queries(state: dict, which: str, order: str):
    """Handler: improved / regressed / all queries, sorted by delta."""
    if not state:
        raise gr.Error("Compare two runs first.")
    _, table = compare_systems(state["a"], state["system_a"], state["b"], state["system_b"])
    if which == "improved":
        table = table[table["delta"] > 0]
    elif which == "regressed":
        table = table[table["delta"] < 0]
    table = table.sort_values("delta", ascending=order == "largest loss first")
    choices = _query_choices(table)
    return table, gr.update(choices=choices, value=choices[0] if choices else None)


def _query_choices(table: pd.DataFrame) -> list[str]:
    return [
        f"{q} ({d:+.3f}): {t[:60]}"
        for q, d, t in zip(table["query_id"], table["delta"], table["query"], strict=True)
    ]


def show_query(choice: str, state: dict) -> str:
    """Handler: both rankings of one query side by side, relevant documents highlighted."""
    if not state or not choice:
        return ""
    query_id = choice.split(" (", 1)[0]
    record_a = next(r for r in state["a"] if r["query_id"] == query_id)
    record_b = next(r for r in state["b"] if r["query_id"] == query_id)
    table = side_by_side(record_a, state["system_a"], record_b, state["system_b"])
    return f"<p><b>{html.escape(record_a['query'])}</b></p>" + _ranking_html(table)


def _ranking_html(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    rows = []
    for _, row in table.iterrows():
        cells = []
        for column, value in row.items():
            side = column.split(" ", 1)[0]
            relevant = side in ("A", "B") and (row.get(f"{side} relevant") or 0) > 0
            style = ' style="background:#d9f2d9"' if relevant else ""
            cells.append(f"<td{style}>{html.escape('' if value is None else str(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="ranking"><tr>{head}</tr>{"".join(rows)}</table>'


def rank_two_models(model_a: str, model_b: str, query: str, passages_text: str):
    """Handler: the free-text mode; both models rank the typed passages."""
    return (
        rank_passages(model_a, query, passages_text, 0),
        rank_passages(model_b, query, passages_text, 0),
    )


# Export tab


def export_zip(run_id: str) -> str:
    """Handler: the run's final model (with its model card) as a zip to download."""
    final = _final_folder(run_id)
    card = model_card(RUNS / run_id)
    staging = Path(tempfile.mkdtemp(prefix="workbench-export-"))
    shutil.copytree(final, staging / run_id)
    (staging / run_id / "README.md").write_text(card, encoding="utf-8")
    return shutil.make_archive(str(staging / run_id), "zip", staging, run_id)


def show_card(run_id: str) -> str:
    """Handler: the model card of a finished run."""
    _final_folder(run_id)
    return _front_matter_as_code(model_card(RUNS / run_id))


def _front_matter_as_code(card: str) -> str:
    """The card's YAML header as a code block: Markdown runs it together into one paragraph."""
    header, sep, body = card.removeprefix("---\n").partition("\n---\n")
    if not card.startswith("---\n") or not sep:
        return card
    return f"```yaml\n{header}\n```\n{body}"


def push_to_hub(run_id: str, repo_id: str, token: str, private: bool) -> str:
    """Handler: upload the final model and its card; the token is used once, never stored."""
    final = _final_folder(run_id)
    if not (repo_id or "").strip() or "/" not in repo_id:
        raise gr.Error("Type a repository id as owner/name.")
    if not (token or "").strip():
        raise gr.Error("Paste a hub token with write access (it is not stored).")
    (final / "README.md").write_text(model_card(RUNS / run_id, repo_id=repo_id.strip()), "utf-8")
    try:
        url = hub.push_to_hub(final, repo_id, token=token.strip(), private=bool(private))
    except (RuntimeError, ValueError) as err:  # already scrubbed of the token
        raise gr.Error(f"Push failed: {err}") from err
    return f"Pushed to {url}."


def _final_folder(run_id: str) -> Path:
    if not run_id:
        raise gr.Error("Pick a run.")
    final = RUNS / run_id / "final"
    if not (final / "config.json").exists():
        raise gr.Error(f"Run {run_id!r} has no final model yet: only finished runs export.")
    return final


# Layout


def build_demo() -> gr.Blocks:
    """Assemble the app: one tab per task, then each tab's events."""
    with gr.Blocks(title="Reranker Workbench") as demo:
        session = gr.State(new_session)
        compared = gr.State(None)
        gr.Markdown(
            "# Reranker Workbench\nFine-tune a cross-encoder reranker on your data and find "
            "out whether it beats BM25 and an off-the-shelf reranker."
        )
        data, train, runs = _data_tab(), _train_tab(), _runs_tab()
        compare, export, rank = _compare_tab(), _export_tab(), _rank_tab()

        _wire_data(data, train, session)
        _wire_train(train, session)
        _wire_runs(demo, runs, compare, export, session)
        _wire_compare(compare, compared)
        _wire_export(export)
        _wire_rank(rank)
    return demo


def _data_tab() -> SimpleNamespace:
    """The Data tab: load, preview, column roles, validation, mining."""
    model_choices = list(EMBEDDED_MODELS)
    with gr.Tab("Data"):
        with gr.Row():
            source = gr.Radio([SAMPLE, UPLOAD, HUB], value=SAMPLE, label="Data")
            upload = gr.File(
                label="Training file (CSV, TSV, JSONL, Parquet; may be .gz)", type="filepath"
            )
            hub_id = gr.Textbox(label="Hub dataset id (needs a network)")
        load_button = gr.Button("Load data", variant="primary")
        data_note = gr.Markdown()
        preview = gr.Dataframe(label="Preview (first 20 rows)", wrap=True, max_height=300)
        with gr.Row():
            column_map = gr.Textbox(
                label="Column roles (source=role, comma-separated; roles: query, passage, "
                "label, positive, negative_1.., documents, labels)"
            )
            eval_upload = gr.File(
                label="Eval file (optional; else queries are held out)", type="filepath"
            )
        with gr.Row():
            length_model = gr.Dropdown(
                model_choices,
                value=DEFAULT_MODEL,
                allow_custom_value=True,
                label="Tokenizer of",
            )
            length_limit = gr.Number(value=256, precision=0, label="max_length")
        validate_button = gr.Button("Validate")
        report = gr.Markdown()
        with gr.Accordion("Hard-negative mining", open=False):
            with gr.Row():
                retriever = gr.Dropdown(
                    ["bm25", "minilm-l6", "bge-small"],
                    value="bm25",
                    allow_custom_value=True,
                    label="Retriever",
                )
                num_negatives = gr.Number(value=3, precision=0, label="Negatives per query")
                range_min = gr.Number(value=0, precision=0, label="Skip top ranks")
                range_max = gr.Number(value=0, precision=0, label="Window end (0 = auto)")
            with gr.Row():
                margin = gr.Number(value=0, label="Relative margin (0 = off)")
                sampling = gr.Radio(["top", "random"], value="top", label="Sampling")
                random_share = gr.Slider(0, 1, value=0, step=0.1, label="Random share")
                screen = gr.Radio(SCREEN_CHOICES, value="flag", label="False-negative screen")
            mine_button = gr.Button("Mine")
            mining_report = gr.Markdown()
            mined = gr.Dataframe(label="Mined rows (first 20)", wrap=True, max_height=300)
    # Every component of the tab, by its variable name, for the event wiring.
    return SimpleNamespace(**{k: v for k, v in locals().items() if k != "model_choices"})


def _train_tab() -> SimpleNamespace:
    """The Train tab: model, loss and settings, cost estimate, launch, live progress."""
    model_choices = list(EMBEDDED_MODELS)
    with gr.Tab("Train"):
        with gr.Row():
            base_model = gr.Dropdown(
                model_choices, value=DEFAULT_MODEL, allow_custom_value=True, label="Base model"
            )
            baseline_model = gr.Dropdown(
                model_choices, value=DEFAULT_MODEL, allow_custom_value=True, label="Baseline"
            )
            loss = gr.Dropdown(
                ["BinaryCrossEntropyLoss"],
                value="BinaryCrossEntropyLoss",
                label="Loss (those that fit the data)",
            )
        with gr.Row():
            epochs = gr.Number(value=1, label="Epochs")
            batch_size = gr.Number(value=16, precision=0, label="Batch size")
            learning_rate = gr.Number(value=3e-5, label="Learning rate")
            max_length = gr.Number(value=256, precision=0, label="Max length")
        with gr.Row():
            warmup = gr.Number(value=0.1, label="Warmup ratio")
            precision = gr.Dropdown(
                ["auto", "fp32", "bf16", "fp16"], value="auto", label="Precision"
            )
            eval_steps = gr.Number(value=0, precision=0, label="Eval every N steps (0 = 3x)")
            max_steps = gr.Number(value=0, precision=0, label="Max steps (0 = epochs)")
            freeze = gr.Number(value=8, precision=0, label="Frozen bottom layers")
        with gr.Row():
            dev_queries = gr.Number(
                value=60, precision=0, label="Eval queries held out (without an eval file)"
            )
            run_name = gr.Textbox(label="Run name (optional)")
            # Shown on machines with several GPUs: all of them by default, one process each.
            gpus = gr.Number(
                value=max(1, local_gpus()),
                precision=0,
                minimum=1,
                maximum=max(1, local_gpus()),
                label=f"GPUs to train on (of {local_gpus()}, one DDP process each)",
                visible=local_gpus() > 1,
            )
        with gr.Row():
            estimate_button = gr.Button("Estimate cost")
            launch_button = gr.Button("Launch", variant="primary")
            stop_button = gr.Button("Stop", variant="stop")
            resume_button = gr.Button("Resume")
        estimate = gr.Markdown()
        launch_note = gr.Markdown()
        progress = gr.HTML(_progress_html(None))
        queue_note = gr.Markdown()
        with gr.Row():
            loss_plot = gr.Plot(label="Loss")
            metrics_plot = gr.Plot(label="Ranking metrics")
        log = gr.Textbox(label="Log (last lines)", lines=10, max_lines=10)
        timer = gr.Timer(POLL_SECONDS)
    # Every component of the tab, by its variable name, for the event wiring.
    return SimpleNamespace(**{k: v for k, v in locals().items() if k != "model_choices"})


def _runs_tab() -> SimpleNamespace:
    """The Runs tab: every run folder, open or delete one."""
    model_choices = list(EMBEDDED_MODELS)
    with gr.Tab("Runs"):
        runs_table = gr.Dataframe(label="Runs", wrap=True)
        with gr.Row():
            run_pick = gr.Dropdown([], label="Run")
            refresh_button = gr.Button("Refresh")
            open_button = gr.Button("Open on Train tab")
        with gr.Row():
            confirm = gr.Checkbox(label="yes, delete it")
            delete_button = gr.Button("Delete", variant="stop")
        runs_note = gr.Markdown()
    # Every component of the tab, by its variable name, for the event wiring.
    return SimpleNamespace(**{k: v for k, v in locals().items() if k != "model_choices"})


def _compare_tab() -> SimpleNamespace:
    """The Compare tab: two systems, the paired test, per-query rankings, free text."""
    model_choices = list(EMBEDDED_MODELS)
    with gr.Tab("Compare"):
        systems = [(label, key) for key, label in SYSTEMS.items()]
        with gr.Row():
            run_a = gr.Dropdown([], label="Run A")
            system_a = gr.Dropdown(systems, value="baseline", label="System A")
            run_b = gr.Dropdown([], label="Run B")
            system_b = gr.Dropdown(systems, value="finetuned", label="System B")
        compare_button = gr.Button("Compare", variant="primary")
        summary = gr.Markdown()
        with gr.Row():
            delta_plot = gr.Plot(label="Per-query deltas")
            scatter_plot = gr.Plot(label="A vs B per query")
        with gr.Row():
            which = gr.Radio(["all", "improved", "regressed"], value="all", label="Queries")
            order = gr.Radio(
                ["largest loss first", "largest gain first"],
                value="largest loss first",
                label="Sort",
            )
        per_query = gr.Dataframe(label="Per query", wrap=True, max_height=300)
        query_pick = gr.Dropdown([], label="Query")
        rankings = gr.HTML()
        with gr.Accordion("Free text: both models rank your passages", open=False):
            with gr.Row():
                model_a = gr.Dropdown(
                    model_choices, value=DEFAULT_MODEL, allow_custom_value=True, label="Model A"
                )
                model_b = gr.Dropdown(
                    model_choices,
                    value="minilm-l6",
                    allow_custom_value=True,
                    label="Model B (run:<id> for a run's model)",
                )
            free_query = gr.Textbox(label="Query", value=EXAMPLE_QUERY)
            free_passages = gr.Textbox(
                label="Passages, one per line", lines=6, value=EXAMPLE_PASSAGES
            )
            free_button = gr.Button("Rank with both")
            with gr.Row():
                free_a = gr.Dataframe(label="Model A", wrap=True)
                free_b = gr.Dataframe(label="Model B", wrap=True)
    # Every component of the tab, by its variable name, for the event wiring.
    return SimpleNamespace(**{k: v for k, v in locals().items() if k != "model_choices"})


def _export_tab() -> SimpleNamespace:
    """The Export tab: zip, model card, hub push."""
    model_choices = list(EMBEDDED_MODELS)
    with gr.Tab("Export"):
        export_pick = gr.Dropdown([], label="Run")
        with gr.Row():
            zip_button = gr.Button("Build zip")
            card_button = gr.Button("Show model card")
        zip_file = gr.File(label="Model zip")
        card = gr.Markdown()
        with gr.Row():
            repo = gr.Textbox(label="Hub repository (owner/name)")
            token = gr.Textbox(label="Hub token (used once, never stored)", type="password")
            private = gr.Checkbox(value=True, label="Private")
        push_button = gr.Button("Push to hub")
        push_note = gr.Markdown()
    # Every component of the tab, by its variable name, for the event wiring.
    return SimpleNamespace(**{k: v for k, v in locals().items() if k != "model_choices"})


def _rank_tab() -> SimpleNamespace:
    """The Rank tab: score typed passages with any model."""
    model_choices = list(EMBEDDED_MODELS)
    with gr.Tab("Rank"):
        rank_model = gr.Dropdown(
            model_choices,
            value=DEFAULT_MODEL,
            allow_custom_value=True,
            label="Model (embedded name, local folder, or hub id)",
        )
        rank_query = gr.Textbox(label="Query", value=EXAMPLE_QUERY)
        rank_text = gr.Textbox(label="Passages, one per line", value=EXAMPLE_PASSAGES, lines=8)
        top_k = gr.Number(label="Show top k (0 = all)", value=0, precision=0, minimum=0)
        rank_button = gr.Button("Rank", variant="primary")
        ranked = gr.Dataframe(label="Ranking", wrap=True)
    # Every component of the tab, by its variable name, for the event wiring.
    return SimpleNamespace(**{k: v for k, v in locals().items() if k != "model_choices"})


def _wire_data(data: SimpleNamespace, train: SimpleNamespace, session: gr.State) -> None:
    data.load_button.click(
        load_training_data,
        [data.source, data.upload, data.hub_id, session],
        [data.preview, data.column_map, data.data_note, session],
        api_name="load_data",
    )
    data.validate_button.click(
        validate_training_data,
        [
            session,
            data.column_map,
            data.eval_upload,
            train.loss,
            data.length_model,
            data.length_limit,
        ],
        [data.report, train.loss, session],
        api_name="validate",
    )
    data.mine_button.click(
        mine_negatives,
        [
            session,
            data.retriever,
            data.num_negatives,
            data.range_min,
            data.range_max,
            data.margin,
            data.sampling,
            data.random_share,
            data.screen,
        ],
        [data.mining_report, data.mined, session],
        api_name="mine",
    )


def _wire_train(train: SimpleNamespace, session: gr.State) -> None:
    train.estimate_button.click(
        estimate_cost,
        [
            session,
            train.base_model,
            train.batch_size,
            train.max_length,
            train.epochs,
            train.max_steps,
        ],
        train.estimate,
        api_name="estimate",
    )
    train.launch_button.click(
        launch_training,
        [
            session,
            train.base_model,
            train.baseline_model,
            train.loss,
            train.epochs,
            train.batch_size,
            train.learning_rate,
            train.max_length,
            train.warmup,
            train.precision,
            train.eval_steps,
            train.max_steps,
            train.freeze,
            train.dev_queries,
            train.run_name,
            train.gpus,
        ],
        [train.launch_note, session],
        api_name="launch",
    )
    train.stop_button.click(stop_run, session, train.launch_note, api_name="stop")
    train.resume_button.click(resume_run, session, train.launch_note, api_name="resume")
    train.timer.tick(
        poll_run,
        session,
        [train.progress, train.loss_plot, train.metrics_plot, train.log, train.queue_note],
        api_name="poll",
        show_progress="hidden",
    )


def _wire_runs(
    demo: gr.Blocks,
    runs: SimpleNamespace,
    compare: SimpleNamespace,
    export: SimpleNamespace,
    session: gr.State,
) -> None:
    pickers = [runs.runs_table, runs.run_pick, compare.run_a, compare.run_b, export.export_pick]
    runs.refresh_button.click(refresh_runs, None, pickers, api_name="runs")
    demo.load(refresh_runs, None, pickers)
    runs.open_button.click(
        open_run, [runs.run_pick, session], [runs.runs_note, session], api_name="open"
    )
    runs.delete_button.click(
        delete_run, [runs.run_pick, runs.confirm], runs.runs_note, api_name="delete"
    ).then(refresh_runs, None, pickers)


def _wire_compare(compare: SimpleNamespace, compared: gr.State) -> None:
    compare.compare_button.click(
        compare_runs_handler,
        [compare.run_a, compare.system_a, compare.run_b, compare.system_b],
        [
            compare.summary,
            compare.delta_plot,
            compare.scatter_plot,
            compare.per_query,
            compare.query_pick,
            compared,
        ],
        api_name="compare",
    )
    for control in (compare.which, compare.order):
        control.change(
            filter_queries,
            [compared, compare.which, compare.order],
            [compare.per_query, compare.query_pick],
            api_name=False,
        )
    compare.query_pick.change(
        show_query, [compare.query_pick, compared], compare.rankings, api_name="query"
    )
    compare.free_button.click(
        rank_two_models,
        [compare.model_a, compare.model_b, compare.free_query, compare.free_passages],
        [compare.free_a, compare.free_b],
        api_name="rank_both",
    )


def _wire_export(export: SimpleNamespace) -> None:
    export.zip_button.click(export_zip, export.export_pick, export.zip_file, api_name="export_zip")
    export.card_button.click(show_card, export.export_pick, export.card, api_name="model_card")
    export.push_button.click(
        push_to_hub,
        [export.export_pick, export.repo, export.token, export.private],
        export.push_note,
        api_name="push",
    )


def _wire_rank(rank: SimpleNamespace) -> None:
    rank.rank_button.click(
        rank_passages,
        [rank.rank_model, rank.rank_query, rank.rank_text, rank.top_k],
        rank.ranked,
        api_name="rank",
    )


def launch_options() -> dict:
    """Bind address, port, login and upload cap from the environment."""
    from workbench.security import max_upload_bytes

    options = {
        "server_name": os.environ.get("WORKBENCH_HOST", "127.0.0.1"),
        "server_port": int(os.environ.get("WORKBENCH_PORT", "7860")),
        "max_file_size": max_upload_bytes(),
    }
    if os.environ.get("SPACE_ID"):
        options["server_name"] = "0.0.0.0"  # a Space's proxy reaches the app from outside
    auth = os.environ.get("WORKBENCH_AUTH")
    if auth:
        user, sep, password = auth.partition(":")
        if not sep:
            raise ValueError("WORKBENCH_AUTH must look like user:password")
        options["auth"] = (user, password)
    return options


if __name__ == "__main__":
    build_demo().queue(default_concurrency_limit=4).launch(**launch_options())
