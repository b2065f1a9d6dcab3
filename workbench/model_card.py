"""The model card of a run's fine-tuned model: a README.md with `model-index` metadata, the data,
loss and hyperparameters, test results against the baseline, the training log and usage.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

from workbench.runs import read_jsonl

# Papers of the losses, for the card's citation section.
LOSS_CITATIONS = {
    "BinaryCrossEntropyLoss": "Nogueira and Cho, Passage Re-ranking with BERT, 2019.",
    "LambdaLoss": "Wang et al., The LambdaLoss Framework for Ranking Metric Optimization, 2018.",
    "ListNetLoss": "Cao et al., Learning to Rank: From Pairwise Approach to Listwise, 2007.",
    "ListMLELoss": "Xia et al., Listwise Approach to Learning to Rank, 2008.",
    "PListMLELoss": "Lan et al., Position-Aware ListMLE, 2014.",
    "RankNetLoss": "Burges et al., Learning to Rank using Gradient Descent, 2005.",
    "MarginMSELoss": "Hofstaetter et al., Improving Efficient Neural Ranking Models with "
    "Cross-Architecture Knowledge Distillation, 2020.",
    "MultipleNegativesRankingLoss": "Henderson et al., Efficient Natural Language Response "
    "Suggestion for Smart Reply, 2017.",
}
_VERSIONS = ("torch", "transformers", "datasets", "reranker-workbench")
_SYSTEM_NAMES = {"bm25": "first stage (BM25)", "baseline": "baseline", "finetuned": "fine-tuned"}


def model_card(run_folder: str | Path, *, repo_id: str | None = None) -> str:
    """Render the card of a finished run from its files.

    Args:
        run_folder: The run folder (with `config.json`, `results.json`, `metrics.jsonl`).
        repo_id: The hub repository the card is for (used in the usage snippets).

    Returns:
        The README.md text.

    Raises:
        FileNotFoundError: If the run has no `results.json` (it has not finished).
    """
    folder = Path(run_folder)
    if not (folder / "results.json").exists():
        raise FileNotFoundError(f"{folder.name} has not finished: it has no results.json yet.")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    name = repo_id or str(folder / "final")
    sections = [
        _front_matter(config, results, name),
        f"# Reranker fine-tuned from `{config['base_model']}`\n",
        "A cross-encoder that reads a query and a passage together and outputs one relevance "
        "score, fine-tuned with Reranker Workbench.\n",
        _data_section(config),
        _training_section(config),
        _results_section(config, results, folder),
        _log_section(read_jsonl(folder / "metrics.jsonl")),
        _usage_section(name),
        _versions_section(),
        _citation_section(config["loss"]),
    ]
    return "\n".join(sections)


def _front_matter(config: dict, results: dict, name: str) -> str:
    data = config.get("train_file") or config.get("data", "")
    metrics = "\n".join(
        f"      - type: {metric}\n        value: {value:.4f}"
        for metric, value in results.get("finetuned", {}).items()
    )
    return (
        "---\n"
        "library_name: sentence-transformers\n"
        "pipeline_tag: text-ranking\n"
        f"base_model: {config['base_model']}\n"
        "tags: [cross-encoder, reranker, reranker-workbench]\n"
        "model-index:\n"
        f"- name: {Path(name).name}\n"
        "  results:\n"
        "  - task: {type: text-ranking}\n"
        f"    dataset: {{name: {Path(str(data)).name}, type: {config.get('test_split', 'test')}}}\n"
        "    metrics:\n"
        f"{metrics}\n"
        "---\n"
    )


def _data_section(config: dict) -> str:
    if config.get("train_file"):
        source = f"your rows from `{Path(config['train_file']).name}`"
        held = (
            f"eval rows from `{Path(config['eval_file']).name}`"
            if config.get("eval_file")
            else (f"{config['dev_queries']} queries held out as eval")
        )
    else:
        source = f"the BEIR folder `{config['data']}` ({config['train_split']} split)"
        held = f"{config['dev_queries']} train queries held out as dev; test split for the report"
    return (
        "## Data\n\n"
        f"- training: {source}; negatives: {config['negatives']} per query from BM25 "
        "unless the rows bring their own\n"
        f"- evaluation: {held}; the first stage's top {config['rerank_top_k']} reranked\n"
    )


def _training_section(config: dict) -> str:
    keys = (
        "loss", "epochs", "max_steps", "learning_rate", "batch_size", "warmup_ratio",
        "weight_decay", "max_length", "freeze_layers", "attention_dropout", "group_by_length",
        "precision", "resolved_precision", "world_size", "seed",
    )  # fmt: skip
    rows = "\n".join(f"| `{k}` | {config.get(k)} |" for k in keys if k in config)
    return f"## Training\n\n| setting | value |\n|---|---|\n{rows}\n"


def _results_section(config: dict, results: dict, folder: Path) -> str:
    lines = ["## Results (test)", "", "| system | nDCG@10 | MRR@10 | MAP |", "|---|---|---|---|"]
    for system, metrics in results.items():
        label = _SYSTEM_NAMES.get(system, system)
        if system == "baseline":
            label += f" (`{config['baseline_model']}`)"
        cells = " | ".join(
            f"{metrics.get(m, float('nan')):.4f}" for m in ("ndcg@10", "mrr@10", "map")
        )
        lines.append(f"| {label} | {cells} |")
    comparison = folder / "comparison.json"
    if comparison.exists():
        c = json.loads(comparison.read_text(encoding="utf-8"))
        lines += [
            "",
            f"Fine-tuned vs baseline per query ({c['metric']}): mean {c['mean_delta']:+.4f}, "
            f"95% bootstrap CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}], randomization test "
            f"p = {c['randomization_p']:.3f}; {c['improved']} improved, {c['regressed']} "
            f"regressed, {c['tied']} tied.",
        ]
    return "\n".join(lines) + "\n"


def _log_section(events: list[dict]) -> str:
    evals = [e for e in events if any(k.endswith("_ndcg@10") and "_base_" not in k for k in e)]
    if not evals:
        return "## Training log\n\nNo evaluation was logged.\n"
    key = next(k for k in evals[0] if k.endswith("_ndcg@10") and "_base_" not in k)
    losses = {e["step"]: e["loss"] for e in events if "loss" in e}
    lines = [
        "## Training log",
        "",
        "| step | epoch | training loss | dev nDCG@10 |",
        "|---|---|---|---|",
    ]
    for event in evals:
        loss = losses.get(event["step"])
        loss_text = f"{loss:.4f}" if loss is not None else "-"
        lines.append(
            f"| {event['step']} | {event.get('epoch', 0):.2f} | {loss_text} | {event[key]:.4f} |"
        )
    return "\n".join(lines) + "\n"


def _usage_section(name: str) -> str:
    return (
        "## Usage\n\n"
        "```python\n"
        "from sentence_transformers import CrossEncoder\n\n"
        f'model = CrossEncoder("{name}")\n'
        'scores = model.predict([("a query", "a passage"), ("a query", "another passage")])\n'
        "```\n\n"
        "```python\n"
        "import torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")\n'
        f'model = AutoModelForSequenceClassification.from_pretrained("{name}")\n'
        'batch = tokenizer(["a query"], ["a passage"], return_tensors="pt", truncation=True)\n'
        "with torch.no_grad():\n"
        "    logits = model(**batch).logits  # higher is more relevant\n"
        "```\n"
    )


def _versions_section() -> str:
    versions = []
    for package in _VERSIONS:
        try:
            versions.append(f"- {package}: {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    versions.append(f"- Python: {platform.python_version()}")
    return "## Framework versions\n\n" + "\n".join(versions) + "\n"


def _citation_section(loss: str) -> str:
    citation = LOSS_CITATIONS.get(loss)
    if citation is None:
        return ""
    return f"## Citation\n\n`{loss}`: {citation}\n"
