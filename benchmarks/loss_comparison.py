"""Compare losses on WikiQA: same start model, same number of scored pairs, NDCG@10 on test.

Run by hand (WikiQA is research-only and is read from the shared data folder, never shipped):
`python benchmarks/loss_comparison.py [--model minilm-l6] [--pairs 4000] [--quick]`.
Prints one JSON line per loss with test NDCG@10 / MRR@10 / MAP and wall time.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import datasets
import torch
from transformers import TrainingArguments, set_seed

import workbench
from workbench import CrossEncoder, CrossEncoderTrainer, RerankingEvaluator
from workbench.evaluation.reranking import RerankingSample

WIKIQA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikiqa"


def read_questions(path: Path) -> dict[str, dict]:
    """Question id -> {query, passages, labels}, only questions with both labels."""
    questions: dict[str, dict] = defaultdict(lambda: {"passages": [], "labels": []})
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        question = questions[row["query_id"]]
        question["query"] = row["query"]
        question["passages"].append(row["passage"])
        question["labels"].append(float(row["label"]))
    return {q: v for q, v in questions.items() if 0 < sum(v["labels"]) < len(v["labels"])}


def test_samples(questions: dict[str, dict]) -> list[RerankingSample]:
    samples = []
    for query_id, q in questions.items():
        ids = [f"{query_id}-{i}" for i in range(len(q["passages"]))]
        # No first stage: every candidate gets the same score; base_* metrics are by id order.
        candidates = [(d, p, 0.0) for d, p in zip(ids, q["passages"], strict=True)]
        qrels = {d: int(y) for d, y in zip(ids, q["labels"], strict=True)}
        samples.append(RerankingSample(query_id, q["query"], candidates, qrels))
    return samples


def pairs_dataset(questions) -> datasets.Dataset:
    rows = [
        (q["query"], p, y)
        for q in questions.values()
        for p, y in zip(q["passages"], q["labels"], strict=True)
    ]
    query, passage, label = zip(*rows, strict=True)
    return datasets.Dataset.from_dict({"query": query, "passage": passage, "label": label})


def lists_dataset(questions, size: int) -> datasets.Dataset:
    rows = {"query": [], "documents": [], "labels": []}
    for q in questions.values():
        rows["query"].append(q["query"])
        rows["documents"].append(q["passages"][:size])
        rows["labels"].append(q["labels"][:size])
    return datasets.Dataset.from_dict(rows)


def triplets(questions, rng: random.Random) -> datasets.Dataset:
    rows = {"query": [], "positive": [], "negative_1": []}
    for q in questions.values():
        positives = [p for p, y in zip(q["passages"], q["labels"], strict=True) if y > 0]
        negatives = [p for p, y in zip(q["passages"], q["labels"], strict=True) if y == 0]
        if positives and negatives:
            rows["query"].append(q["query"])
            rows["positive"].append(rng.choice(positives))
            rows["negative_1"].append(rng.choice(negatives))
    return datasets.Dataset.from_dict(rows)


def with_teacher_margins(dataset: datasets.Dataset, teacher: CrossEncoder) -> datasets.Dataset:
    queries = dataset["query"]
    pos = teacher.predict(
        list(zip(queries, dataset["positive"], strict=True)), activation="identity"
    )
    neg = teacher.predict(
        list(zip(queries, dataset["negative_1"], strict=True)), activation="identity"
    )
    return dataset.add_column("label", [float(m) for m in pos - neg])


def run(name, loss_factory, dataset, args, start_model, max_length, evaluator, steps, batch):
    set_seed(0)
    model = CrossEncoder(start_model, max_length=max_length)
    training = TrainingArguments(
        output_dir=f"/tmp/wb-losses/{name}",
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=args.learning_rate,
        warmup_steps=max(1, steps // 10),
        logging_steps=max(1, steps // 5),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=0,
    )
    start = time.time()
    if steps:
        trainer = CrossEncoderTrainer(
            model, training, train_dataset=dataset, loss=loss_factory(model)
        )
        trainer.train()
    train_s = time.time() - start
    metrics = evaluator(model)
    return {
        "loss": name,
        "steps": steps,
        "batch": batch,
        "train_s": round(train_s, 1),
        **{k: round(v, 4) for k, v in metrics.items() if not k.startswith("base_")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--teacher", default="ms-marco-minilm-l12")
    parser.add_argument("--pairs", type=int, default=4000, help="scored pairs per loss")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--list-size", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="tiny model, 64 pairs, 20 questions")
    args = parser.parse_args()
    if args.quick:
        args.model, args.teacher, args.pairs = "minilm-l6-tiny", "minilm-l6-tiny", 64

    rng = random.Random(0)
    train = read_questions(WIKIQA / "train.jsonl")
    test = read_questions(WIKIQA / "test.jsonl")
    if args.quick:
        test = dict(list(test.items())[:20])
    evaluator = RerankingEvaluator(test_samples(test), batch_size=64)
    print(json.dumps({"train_questions": len(train), "test_questions": len(test)}))

    teacher = CrossEncoder(args.teacher, max_length=args.max_length)
    tuples = triplets(train, rng)
    distill = with_teacher_margins(tuples, teacher)
    pairs = pairs_dataset(train)
    negatives_per_positive = (len(pairs) - sum(pairs["label"])) / sum(pairs["label"])

    # Same number of scored (query, passage) pairs per loss: batch * pairs-per-row * steps.
    mnrl_batch = 8
    plans = {
        "zero-shot (no training)": (None, None, 0, 1),
        "BinaryCrossEntropyLoss": (
            lambda m: workbench.BinaryCrossEntropyLoss(m, pos_weight=negatives_per_positive),
            pairs,
            32,
            1,
        ),
        "LambdaLoss": (
            workbench.LambdaLoss,
            lists_dataset(train, args.list_size),
            4,
            args.list_size,
        ),
        "ListNetLoss": (
            workbench.ListNetLoss,
            lists_dataset(train, args.list_size),
            4,
            args.list_size,
        ),
        "MultipleNegativesRankingLoss": (
            lambda m: workbench.MultipleNegativesRankingLoss(m, num_negatives=3),
            tuples,
            mnrl_batch,
            2 + 3,
        ),
        "MarginMSELoss (L-12 teacher)": (workbench.MarginMSELoss, distill, 16, 2),
    }
    for name, (factory, dataset, batch, per_row) in plans.items():
        steps = 0 if factory is None else max(1, args.pairs // (batch * per_row))
        result = run(
            name, factory, dataset, args, args.model, args.max_length, evaluator, steps, batch
        )
        print(json.dumps({"model": args.model, **result}), flush=True)


if __name__ == "__main__":
    main()
