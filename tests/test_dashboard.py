"""What the dashboard shows, checked on one real tiny run: per-query metrics equal the job's
results, the comparison equals comparison.json, curves carry the logged points, the model card
carries the run's metrics, and the handlers refuse bad input with gr.Error."""

from __future__ import annotations

import json
import os
import zipfile

import gradio as gr
import pandas as pd
import pytest

import app
from workbench.model_card import model_card
from workbench.run_view import (
    compare_systems,
    list_runs,
    load_rankings,
    log_tail,
    query_metrics,
    run_progress,
    side_by_side,
    training_figures,
)
from workbench.runs import read_jsonl


@pytest.fixture(scope="module")
def finished_run(tiny_run):
    """The shared finished tiny main job (conftest): 4 test claims, run folder `tiny`."""
    return tiny_run


@pytest.fixture
def runs_root(finished_run, monkeypatch):
    monkeypatch.setattr(app, "RUNS", finished_run.parent)
    return finished_run.parent


def _results(folder):
    return json.loads((folder / "results.json").read_text())


@pytest.mark.parametrize(
    ("system", "key"),
    [("first_stage", "bm25"), ("baseline", "baseline"), ("finetuned", "finetuned")],
)
def test_query_metrics_of_rankings_equal_the_jobs_results(finished_run, system, key):
    table = query_metrics(load_rankings(finished_run), system)

    assert len(table) == 4
    assert table["ndcg@10"].mean() == pytest.approx(_results(finished_run)[key]["ndcg@10"])
    assert table["mrr@10"].mean() == pytest.approx(_results(finished_run)[key]["mrr@10"])


def test_compare_systems_equals_the_jobs_comparison(finished_run):
    rankings = load_rankings(finished_run)
    comparison, table = compare_systems(rankings, "baseline", rankings, "finetuned")
    expected = json.loads((finished_run / "comparison.json").read_text())

    assert comparison.mean_delta == pytest.approx(expected["mean_delta"])
    assert (comparison.improved, comparison.regressed) == (
        expected["improved"],
        expected["regressed"],
    )
    assert (
        table["delta"].round(4).tolist()
        == (table["B nDCG@10"] - table["A nDCG@10"]).round(4).tolist()
    )


def test_side_by_side_movement_and_relevance_follow_both_orders(finished_run):
    record = load_rankings(finished_run)[0]
    table = side_by_side(record, "first_stage", record, "finetuned", top=30)
    grades = {d["id"]: d["grade"] for d in record["docs"]}
    order_a = [d["id"] for d in sorted(record["docs"], key=lambda d: (d["first_stage"], d["id"]),
               reverse=True)]  # fmt: skip
    order_b = [d["id"] for d in sorted(record["docs"], key=lambda d: (d["finetuned"], d["id"]),
               reverse=True)]  # fmt: skip

    assert len(table) == len(record["docs"])
    for position, doc in enumerate(order_b):
        moved = order_a.index(doc) - position
        expected = "=" if moved == 0 else (f"▲{moved}" if moved > 0 else f"▼{-moved}")
        assert table["B moved"][position] == expected
        assert table["B relevant"][position] == grades[doc]


def test_training_figures_carry_logged_points_and_reference_lines(finished_run):
    events = read_jsonl(finished_run / "metrics.jsonl")
    loss_figure, metrics_figure = training_figures(events)
    steps = [e["step"] for e in events if "loss" in e]

    assert list(loss_figure.data[0].x) == steps
    assert any(trace.name == "eval loss" for trace in loss_figure.data)
    start = next(e["eval_dev_ndcg@10"] for e in events if "eval_dev_ndcg@10" in e)
    base = next(e["eval_dev_base_ndcg@10"] for e in events if "eval_dev_base_ndcg@10" in e)
    lines = [shape.y0 for shape in metrics_figure.layout.shapes]
    assert start in lines and base in lines


def test_run_progress_of_finished_and_running_runs(finished_run, tmp_path):
    done = run_progress(finished_run)
    assert done.state == "finished" and done.step == done.max_steps > 0

    # The same run, seen while alive after its first two logged steps.
    events = read_jsonl(finished_run / "metrics.jsonl")
    train = [e for e in events if "loss" in e][:2]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in train))
    status = {"state": "running", "stage": "training", "pid": os.getpid()}
    (tmp_path / "status.json").write_text(json.dumps(status))
    running = run_progress(tmp_path)
    pace = (train[1]["time"] - train[0]["time"]) / (train[1]["step"] - train[0]["step"])
    assert running.state == "running" and running.stage == "training"
    assert running.eta_s == pytest.approx(pace * (running.max_steps - train[1]["step"]))
    assert "left in training" in running.describe()


def test_log_tail_keeps_the_last_state_of_progress_bars(tmp_path):
    (tmp_path / "train.log").write_text("start\n 10%|#\r 50%|###\r100%|#####\ndone\n")
    assert log_tail(tmp_path) == "start\n100%|#####\ndone"


def test_list_runs_shows_state_and_results(finished_run):
    table = list_runs(finished_run.parent)
    row = table[table["run"] == "tiny"].iloc[0]

    assert row["state"] == "finished"
    assert row["fine-tuned nDCG@10"] == pytest.approx(
        _results(finished_run)["finetuned"]["ndcg@10"]
    )


def test_model_card_carries_the_runs_metrics_and_usage(finished_run):
    card = model_card(finished_run, repo_id="me/my-reranker")
    results = _results(finished_run)

    assert card.startswith("---\n") and "model-index:" in card
    assert f"value: {results['finetuned']['ndcg@10']:.4f}" in card
    assert f"{results['baseline']['ndcg@10']:.4f}" in card
    assert 'CrossEncoder("me/my-reranker")' in card
    assert "Nogueira and Cho" in card  # the BCE reranking paper
    assert "| 0 |" in card  # the training log starts at the step-0 evaluation


def test_app_compare_and_query_view_show_two_ranked_columns(runs_root):
    summary, _, _, table, picker, state = app.compare_runs_handler(
        "tiny", "baseline", "tiny", "finetuned"
    )
    view = app.show_query(picker["value"], state)

    assert "4 test queries" in summary and "randomization test" in summary
    assert len(table) == 4
    assert "A passage" in view and "B passage" in view
    improved, _ = app.filter_queries(state, "improved", "largest gain first")
    assert (improved["delta"] > 0).all()


def test_app_export_zip_holds_the_model_and_its_card(runs_root):
    path = app.export_zip("tiny")
    names = zipfile.ZipFile(path).namelist()

    assert "tiny/model.safetensors" in names and "tiny/README.md" in names


@pytest.mark.parametrize(
    ("handler", "args", "message"),
    [
        (app.launch_training, (app.new_session(),) + (None,) * 14, "Load data"),
        (app.validate_training_data, (app.new_session(), "", None, "", "", 256), "Load data"),
        (app.compare_runs_handler, ("", "baseline", "", "finetuned"), "Pick a run"),
        (app.export_zip, ("",), "Pick a run"),
        (app.push_to_hub, ("tiny", "me/model", "", True), "token"),
        (app.delete_run, ("tiny", False), "yes, delete it"),
    ],
)
def test_app_handlers_refuse_bad_input(runs_root, handler, args, message):
    with pytest.raises(gr.Error, match=message):
        handler(*args)


def test_app_upload_validate_and_launch_gate(runs_root, scifact_train, tmp_path, monkeypatch):
    rows = [
        {"question": scifact_train.queries[q], "text": scifact_train.corpus[d], "label": 1}
        for q in sorted(scifact_train.queries)[:10]
        for d in scifact_train.qrels[q]
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    session = app.new_session()
    _, mapping, note, session = app.load_training_data(
        app.UPLOAD, str(tmp_path / "pairs.csv"), "", session
    )
    assert mapping == "question=query, text=passage, label=label" and "rows" in note

    with pytest.raises(gr.Error, match="Validate the data first"):
        app.launch_training(session, *(None,) * 14)
    report, losses, session = app.validate_training_data(
        session, mapping, None, "", "minilm-l6-tiny", 64
    )
    assert session["ok"] and "ready to train" in report
    assert losses["value"] == "BinaryCrossEntropyLoss"

    monkeypatch.setenv("WORKBENCH_MAX_UPLOAD_MB", "0.001")
    with pytest.raises(gr.Error, match="over the"):
        app.load_training_data(app.UPLOAD, str(tmp_path / "pairs.csv"), "", session)
