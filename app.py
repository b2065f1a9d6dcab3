"""Reranker Workbench app: pick a reranker, type a query and passages, see them ranked.

Run with `python app.py` and open the printed local URL.
"""

from __future__ import annotations

import functools
import logging

import gradio as gr
import pandas as pd

from workbench import CrossEncoder
from workbench.embedded import EMBEDDED_MODELS

logging.basicConfig(level=logging.INFO)

DEFAULT_MODEL = "ms-marco-minilm-l12"
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


@functools.lru_cache(maxsize=3)
def load_model(name: str) -> CrossEncoder:
    """Load a model once; the cache is shared by all users and only read after loading."""
    return CrossEncoder(name)


def rank_passages(model_name: str, query: str, passages_text: str, top_k: float) -> pd.DataFrame:
    """Handler: rank one passage per non-empty line for the query."""
    model_name = (model_name or "").strip()
    passages = [line.strip() for line in (passages_text or "").splitlines() if line.strip()]
    if not model_name:
        raise gr.Error("Pick an embedded model, or type a local folder or a hub id.")
    if not (query or "").strip():
        raise gr.Error("Type a query.")
    if not passages:
        raise gr.Error("Type at least one passage, one per line.")

    try:
        model = load_model(model_name)
    except (OSError, ValueError, ImportError) as err:
        raise gr.Error(f"Could not load model {model_name!r}: {err}") from err
    results = model.rank(query, passages, top_k=int(top_k) or None, return_passages=True)
    return pd.DataFrame(
        {
            "rank": range(1, len(results) + 1),
            "score": [round(r["score"], 4) for r in results],
            "input line": [r["corpus_id"] + 1 for r in results],
            "passage": [r["text"] for r in results],
        }
    )


def build_demo() -> gr.Blocks:
    """Assemble the app."""
    with gr.Blocks(title="Reranker Workbench") as demo:
        gr.Markdown("# Reranker Workbench\nScore passages for a query with a cross-encoder.")
        with gr.Tab("Rank"):
            model_name = gr.Dropdown(
                choices=list(EMBEDDED_MODELS),
                value=DEFAULT_MODEL,
                allow_custom_value=True,
                label="Model (embedded name, local folder, or hub id)",
            )
            query = gr.Textbox(label="Query", value=EXAMPLE_QUERY)
            passages = gr.Textbox(label="Passages, one per line", value=EXAMPLE_PASSAGES, lines=8)
            top_k = gr.Number(label="Show top k (0 = all)", value=0, precision=0, minimum=0)
            button = gr.Button("Rank", variant="primary")
            table = gr.Dataframe(label="Ranking", wrap=True)
            button.click(
                rank_passages,
                inputs=[model_name, query, passages, top_k],
                outputs=table,
                api_name="rank",
            )
    return demo


if __name__ == "__main__":
    build_demo().queue().launch()
