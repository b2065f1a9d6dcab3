"""Which negatives train the better reranker: the same short BCE training on SciFact train with
BM25 negatives, dense (all-MiniLM-L6-v2) negatives, and dense negatives through the
false-negative screen, each evaluated on SciFact test (BM25 top-30 reranked).

Run by hand on the bundled sample: `python benchmarks/negatives_comparison.py [--quick]`.
Defaults follow the main job's recipe (ms-marco-MiniLM-L-12-v2, bottom 8 layers frozen, 3
negatives, pos_weight 3, lr 3e-5, one epoch, 256 tokens). The screen variant rescores the dense
top 10 with the same cross-encoder and drops flagged candidates (scored at or above the
positive, near-duplicates, other claims' positives), so its negatives are also re-ordered by
the cross-encoder. `--quick` trains on 150 claims and tests 60 (say so when reporting).
Prints each mining report, then a table; writes JSON to `--output`.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import datasets
from transformers import TrainingArguments

from workbench import BinaryCrossEntropyLoss, CrossEncoder, CrossEncoderTrainer
from workbench.data import load_beir, scifact_path
from workbench.device import default_device, resolve_precision
from workbench.evaluation.reranking import RerankingEvaluator, build_samples
from workbench.job import freeze_bottom_layers
from workbench.mining import FalseNegativeScreen, mine_hard_negatives
from workbench.retrieval import BM25Retriever

MODEL = "ms-marco-minilm-l12"
METRICS = ("ndcg@10", "mrr@10", "map")


def train_rows(train, limit: int | None) -> datasets.Dataset:
    """(query, positive) rows of the first `limit` train claims (sorted by id)."""
    query_ids = sorted(train.queries)[:limit]
    rows = [
        {"query": train.queries[q], "positive": train.corpus[d]}
        for q in query_ids
        for d, grade in train.qrels[q].items()
        if grade > 0
    ]
    return datasets.Dataset.from_list(rows)


def mine(rows, corpus: list[str], variant: str, args) -> tuple[datasets.Dataset, dict, str]:
    options = {"num_negatives": args.negatives, "output_format": "labeled-pairs"}
    if variant == "bm25":
        options |= {"retriever": "bm25", "false_negative_screen": "flag"}
    elif variant == "dense":
        options |= {"retriever": "minilm-l6", "false_negative_screen": "flag"}
    else:
        rescorer = CrossEncoder(MODEL, max_length=args.max_length)
        options |= {
            "retriever": "minilm-l6",
            "range_max": 10,
            "rescorer": rescorer,
            "false_negative_screen": FalseNegativeScreen(action="drop"),
        }
    result = mine_hard_negatives(rows, corpus, **options)
    return result.dataset, result.report.to_dict(), result.report.to_markdown()


def train(pairs: datasets.Dataset, args, output_dir: str) -> CrossEncoder:
    model = CrossEncoder(MODEL, max_length=args.max_length)
    freeze_bottom_layers(model, 8)
    precision = resolve_precision("auto", default_device())
    steps = -(-len(pairs) // 16)
    training_args = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=1,
        per_device_train_batch_size=16,
        learning_rate=3e-5,
        warmup_steps=int(0.1 * steps),
        weight_decay=0.01,
        bf16=precision == "bf16",
        use_cpu=default_device() == "cpu",
        save_strategy="no",
        logging_steps=10,
        seed=12,
        report_to="none",
    )
    loss = BinaryCrossEntropyLoss(model, pos_weight=float(args.negatives))
    CrossEncoderTrainer(model, training_args, train_dataset=pairs, loss=loss).train()
    return model


def test_evaluator(test, limit: int | None) -> RerankingEvaluator:
    queries = {q: test.queries[q] for q in sorted(test.queries)[:limit]}
    hits = BM25Retriever(test.corpus).search(list(queries.values()), top_k=30)
    runs = dict(zip(queries, hits, strict=True))
    samples = build_samples(queries, test.qrels, test.corpus, runs, top_k=30)
    precision = resolve_precision("auto", default_device())
    return RerankingEvaluator(samples, name="test", batch_size=32, precision=precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-queries", type=int, default=None, help="default: all 809")
    parser.add_argument("--test-queries", type=int, default=None, help="default: all 300")
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--variants", default="bm25,dense,dense+screen")
    parser.add_argument("--quick", action="store_true", help="150 train / 60 test claims")
    parser.add_argument("--output", default="runs/negatives_comparison.json")
    args = parser.parse_args()
    if args.quick:
        args.train_queries, args.test_queries = 150, 60
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    train_set = load_beir(scifact_path(), "train")
    test_set = load_beir(scifact_path(), "test")
    rows = train_rows(train_set, args.train_queries)
    corpus = list(train_set.corpus.values())
    evaluator = test_evaluator(test_set, args.test_queries)

    results = {"settings": vars(args), "first_stage": None, "systems": {}}
    start = time.time()
    results["systems"]["zero-shot"] = {
        "metrics": evaluator(CrossEncoder(MODEL, max_length=args.max_length))
    }
    results["systems"]["zero-shot"]["seconds"] = round(time.time() - start, 1)
    for variant in args.variants.split(","):
        start = time.time()
        pairs, report, markdown = mine(rows, corpus, variant, args)
        print(f"\n## Mining report: {variant}\n\n{markdown}\n", flush=True)
        mined_s = time.time() - start
        with tempfile.TemporaryDirectory() as folder:
            model = train(pairs, args, folder)
        trained_s = time.time() - start - mined_s
        metrics = evaluator(model)
        results["systems"][variant] = {
            "metrics": metrics,
            "report": report,
            "pairs": len(pairs),
            "seconds": {"mining": round(mined_s, 1), "training": round(trained_s, 1)},
        }
        print(json.dumps({variant: _row(metrics, "test_")}), flush=True)
    results["first_stage"] = _row(results["systems"]["zero-shot"]["metrics"], "test_base_")

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2, default=str))
    print("\n| negatives | training pairs | nDCG@10 | MRR@10 | MAP |\n|---|---|---|---|---|")
    print("| (BM25, no reranker) | - | " + _cells(results["first_stage"]) + " |")
    for name, system in results["systems"].items():
        pairs = system.get("pairs", "-")
        print(f"| {name} | {pairs} | " + _cells(_row(system["metrics"], "test_")) + " |")


def _row(metrics: dict, prefix: str) -> dict:
    return {m: metrics[prefix + m] for m in METRICS}


def _cells(row: dict) -> str:
    return " | ".join(f"{row[m]:.4f}" for m in METRICS)


if __name__ == "__main__":
    main()
