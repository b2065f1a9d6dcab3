"""The model card: the main job writes it into the final model folder."""

from __future__ import annotations

import json

import yaml

from workbench.model_card import model_card


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_job_writes_model_card_into_final_folder(tiny_run):
    card = (tiny_run / "final" / "README.md").read_text(encoding="utf-8")

    assert card == model_card(tiny_run)
    meta = _front_matter(card)
    assert meta["base_model"] == "minilm-l6-tiny"
    assert meta["pipeline_tag"] == "text-ranking"
    results = json.loads((tiny_run / "results.json").read_text())
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {k: round(v, 4) for k, v in results["finetuned"].items()}
    # The comparison is written before the card, so the card carries it.
    assert "Fine-tuned vs baseline per query" in card


def test_model_card_names_the_hub_repository(tiny_run):
    card = model_card(tiny_run, repo_id="owner/tiny-reranker")

    assert 'CrossEncoder("owner/tiny-reranker")' in card
    assert str(tiny_run) not in card
