"""The Gradio app: builds, ranks through its handler, and refuses bad input with gr.Error."""

from __future__ import annotations

import gradio as gr
import pytest

import app


def test_demo_builds_with_named_api():
    demo = app.build_demo()
    assert isinstance(demo, gr.Blocks)
    assert any(d.api_name == "rank" for d in demo.fns.values())


def test_rank_handler_orders_passages_by_relevance():
    table = app.rank_passages("ms-marco-minilm-l12", app.EXAMPLE_QUERY, app.EXAMPLE_PASSAGES, 0)
    assert list(table.columns) == ["rank", "score", "input line", "passage"]
    assert table["score"].is_monotonic_decreasing
    # The Eiffel Tower line is the least relevant to a vitamin D claim.
    assert table["input line"].iloc[-1] == 4


@pytest.mark.parametrize(
    ("model", "query", "passages", "message"),
    [
        ("", "q", "p", "Pick an embedded model"),
        ("minilm-l6-tiny", "  ", "p", "Type a query"),
        ("minilm-l6-tiny", "q", "\n \n", "at least one passage"),
        ("/nonexistent/folder/model", "q", "p", "Could not load model"),
    ],
)
def test_rank_handler_refuses_bad_input(model, query, passages, message):
    with pytest.raises(gr.Error, match=message):
        app.rank_passages(model, query, passages, 0)
