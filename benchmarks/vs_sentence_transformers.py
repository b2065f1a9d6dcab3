"""The workbench against sentence-transformers' CrossEncoder stack on the same model, data,
hyperparameters and machine, in one run: training, reranking and growth with data size.

Run by hand: `python benchmarks/vs_sentence_transformers.py [--quick] [--parts train,rerank]`.
Every measurement runs in its own process (peak RSS is its own). DL19 is read from the shared
data folder. By default the bf16 training runs a whole epoch, fp32 runs 40 steps, nDCG@10 is on
the first 100 SciFact test claims and scoring takes the first 3,000 pairs of each set
(`--rerank-pairs 0`: all 9,000 SciFact and 4,300 DL19 pairs); `--quick`
trains 40 steps, tests on 30 claims, scores 1,000 pairs per set and grows to 4k pairs (say so
when reporting). Prints Markdown tables with ratios to sentence-transformers; writes JSON to
--output.

- train: the main job's recipe (ms-marco-MiniLM-L-12-v2, bottom 8 layers frozen, BCE with
  pos_weight 3, lr 3e-5, batch 16, 256 tokens, one epoch of SciFact train pairs with 3 BM25
  negatives) for ours at its defaults, ours with the checkpoint's attention dropout, and
  `CrossEncoderTrainer`, then nDCG@10 of the result on SciFact test (BM25 top-30); and the
  all-MiniLM-L6-v2 recipe (every layer trained) for throughput;
- rerank: SciFact test BM25 top-30 and TREC DL 2019 top-100 with the L-12 reranker; scores of
  both libraries compared in fp32; our bf16 and ONNX int8 paths with their ranking agreement;
- growth: all-MiniLM-L6-v2 cut to 2 layers, 64 tokens, both libraries: one epoch on 1k, 5k and
  20k WikiQA rows (read through `datasets`, memory-mapped), and scoring 1, 10 and 100 candidates
  for each of 100 questions; time should grow linearly and peak RSS stay flat.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL = "ms-marco-minilm-l12"
FROZEN = 8


# Data


def train_pairs():
    from workbench.job import JobConfig, prepare_data, training_pairs

    data = prepare_data(JobConfig(max_test_queries=1))
    return training_pairs(data, 3).shuffle(seed=12)


def scifact_candidates(limit: int | None):
    """SciFact test claims' BM25 top-30 as an evaluator (and its pairs)."""
    from workbench.data import load_beir, scifact_path
    from workbench.evaluation.reranking import RerankingEvaluator, build_samples
    from workbench.retrieval import BM25Retriever

    test = load_beir(scifact_path(), "test")
    queries = {q: test.queries[q] for q in sorted(test.queries)[:limit]}
    hits = BM25Retriever(test.corpus).search(list(queries.values()), top_k=30)
    runs = dict(zip(queries, hits, strict=True))
    return RerankingEvaluator(build_samples(queries, test.qrels, test.corpus, runs, top_k=30))


def dl19_pairs() -> list[tuple[str, str]]:
    from workbench.evaluation import BeirSet

    folder = SHARED / "trec-dl-2019-passage"
    dl19 = BeirSet.from_folder(folder, relevance_level=2, run_file=folder / "bm25_top100.tsv")
    return [
        (dl19.data.queries[q], dl19.data.corpus[d])
        for q, run in dl19.run.items()
        for d, _ in run[:100]
    ]


def evaluator_pairs(evaluator) -> list[tuple[str, str]]:
    return [(s.query, text) for s in evaluator.samples for _, text, _ in s.candidates]


# Measurements (one per process)


def measure_train(system: str, precision: str, model: str, steps: int | None, test: int) -> dict:
    """Train one epoch (or `steps`), then nDCG@10 on `test` SciFact test claims (0: none).

    Every trained model is scored by the same path (ours, bf16 where native) so the figure
    compares the weights; the fp32 score equality of the two libraries is the rerank part's.
    """
    pairs = train_pairs()
    frozen = FROZEN if model == MODEL else 0
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        train = _train_st if system == "sentence-transformers" else _train_workbench
        runtime, done = train(pairs, precision, steps, folder, model, frozen, system)
        wall = time.perf_counter() - start
        row = {
            "part": "train",
            "system": system,
            "model": model,
            "precision": precision,
            "pairs": done * 16,
            "pairs_per_s": round(done * 16 / runtime, 2),
            "train_s": round(runtime, 1),
            "wall_s": round(wall, 1),
            "peak_rss_mb": _peak_rss_mb(),
            "mean_tokens": _mean_tokens(list(zip(pairs["query"], pairs["passage"], strict=True))),
            "trained_layers": None if frozen == 0 else _layers(model) - frozen,
        }
        if test:
            from workbench import CrossEncoder

            evaluator = scifact_candidates(test)
            evaluator.precision = "auto"
            trained = CrossEncoder(str(Path(folder) / "model"), max_length=256)
            row["ndcg@10"] = round(evaluator.compute(evaluator.score(trained))["ndcg@10"], 4)
            row["test_queries"] = len(evaluator.samples)
    return row


def _args(precision: str, steps: int | None, folder: str, cls):
    import torch

    return cls(
        output_dir=folder,
        num_train_epochs=1,
        max_steps=steps or -1,
        per_device_train_batch_size=16,
        learning_rate=3e-5,
        warmup_steps=0.1,  # a float is a share of the steps in transformers 5
        weight_decay=0.01,
        bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        logging_steps=10,
        seed=12,
        report_to="none",
        disable_tqdm=True,
    )


def _train_workbench(pairs, precision, steps, folder, model_name, frozen, system):
    """Ours at the main job's defaults; `workbench-dropout` keeps the checkpoint's attention
    dropout (the exact hyperparameters sentence-transformers trains with)."""
    from transformers import TrainingArguments

    from workbench import BinaryCrossEntropyLoss, CrossEncoder, CrossEncoderTrainer
    from workbench.layers import freeze_bottom_layers, set_attention_dropout

    model = CrossEncoder(model_name, max_length=256)
    freeze_bottom_layers(model, frozen)
    if system == "workbench":
        set_attention_dropout(model, 0.0)
    args = _args(precision, steps, folder, TrainingArguments)
    loss = BinaryCrossEntropyLoss(model, pos_weight=3.0)
    trainer = CrossEncoderTrainer(model, args, train_dataset=pairs, loss=loss)
    output = trainer.train()
    model.save_pretrained(Path(folder) / "model")
    return output.metrics["train_runtime"], trainer.state.global_step


def _train_st(pairs, precision, steps, folder, model_name, frozen, system):
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder as StCrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer as StTrainer
    from sentence_transformers.cross_encoder import (
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss as StBCE

    from workbench import embedded

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = StCrossEncoder(
        embedded.resolve(model_name)[0], num_labels=1, max_length=256, device=device
    )
    base = model.model.base_model
    if frozen:
        for module in [base.embeddings, *base.encoder.layer[:frozen]]:
            module.requires_grad_(False)
    args = _args(precision, steps, folder, CrossEncoderTrainingArguments)
    loss = StBCE(model, pos_weight=torch.tensor(3.0))
    trainer = StTrainer(model=model, args=args, train_dataset=pairs, loss=loss)
    output = trainer.train()
    model.save_pretrained(str(Path(folder) / "model"))
    return output.metrics["train_runtime"], trainer.state.global_step


def measure_rerank(system: str, precision: str, dataset: str, limit: int | None) -> dict:
    import torch

    pairs = (evaluator_pairs(scifact_candidates(None)) if dataset == "scifact" else dl19_pairs())[
        :limit
    ]
    options = {"batch_size": 32, "show_progress_bar": False}
    if system == "workbench":
        from workbench import CrossEncoder

        model = CrossEncoder(MODEL, max_length=256)
        options["precision"] = precision
    elif system == "workbench-onnx-int8":
        from workbench import CrossEncoder
        from workbench.onnx import OnnxCrossEncoder, export_onnx

        folder = Path(tempfile.mkdtemp())
        export_onnx(CrossEncoder(MODEL, max_length=256), folder)
        model = OnnxCrossEncoder(folder, quantized=True)
    else:
        from sentence_transformers.cross_encoder import CrossEncoder as StCrossEncoder

        from workbench import embedded

        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = StCrossEncoder(embedded.resolve(MODEL)[0], max_length=256, device=device)

    def score(texts):
        return model.predict(texts, **options)

    tokens = _mean_tokens(pairs)
    score(pairs[:8])
    start = time.perf_counter()
    scores = np.asarray(score(pairs), dtype=np.float64)
    seconds = time.perf_counter() - start
    out = Path(tempfile.gettempdir()) / f"rerank-{system}-{precision}-{dataset}.npy"
    np.save(out, scores)
    return {
        "part": "rerank",
        "system": system,
        "precision": precision,
        "set": dataset,
        "pairs": len(pairs),
        "seconds": round(seconds, 1),
        "pairs_per_s": round(len(pairs) / seconds, 2),
        "peak_rss_mb": _peak_rss_mb(),
        "mean_tokens": tokens,
        "scores": str(out),
    }


def measure_growth(system: str, size: int, candidates: int) -> dict:
    """Train one epoch of `size` WikiQA rows (`candidates` 0), or score `candidates` WikiQA
    sentences for each of `size` questions, with the 2-layer all-MiniLM-L6-v2 at 64 tokens."""
    import datasets

    rows = datasets.load_dataset(
        "json", data_files=str(SHARED / "wikiqa" / "train.jsonl"), split="train"
    ).select_columns(["query", "passage", "label"])
    model = _growth_model(system)
    if candidates == 0:
        rows = rows.select(range(min(size, len(rows))))
        count = len(rows)
        with tempfile.TemporaryDirectory() as folder:
            train = _grow_st if system == "sentence-transformers" else _grow_workbench
            start = time.perf_counter()
            train(model, rows, folder)
            seconds = time.perf_counter() - start
    else:
        queries = list(dict.fromkeys(rows["query"]))[:size]
        passages = rows.shuffle(seed=0)["passage"][:candidates]
        pairs = [(q, p) for q in queries for p in passages]
        count = len(pairs)
        start = time.perf_counter()
        model.predict(pairs, batch_size=32, show_progress_bar=False)
        seconds = time.perf_counter() - start
    return {
        "part": "growth",
        "system": system,
        "rows": count,
        "candidates": candidates,
        "seconds": round(seconds, 1),
        "pairs_per_s": round(count / seconds, 1),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _growth_model(system: str):
    from workbench import CrossEncoder, embedded

    if system != "sentence-transformers":
        return CrossEncoder("minilm-l6-tiny", max_length=64)
    from sentence_transformers.cross_encoder import CrossEncoder as StCrossEncoder

    path, overrides = embedded.resolve("minilm-l6-tiny")  # the same 2 layers as ours
    return StCrossEncoder(path, num_labels=1, max_length=64, config_kwargs=overrides)


def _growth_args(folder: str, cls):
    import torch

    return cls(
        output_dir=folder,
        per_device_train_batch_size=32,
        num_train_epochs=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=12,
        use_cpu=not torch.cuda.is_available(),
    )


def _grow_workbench(model, rows, folder: str) -> None:
    from transformers import TrainingArguments

    from workbench import CrossEncoderTrainer

    args = _growth_args(folder, TrainingArguments)
    CrossEncoderTrainer(model, args, train_dataset=rows).train()


def _grow_st(model, rows, folder: str) -> None:
    from sentence_transformers.cross_encoder import CrossEncoderTrainer as StTrainer
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss as StBCE

    args = _growth_args(folder, CrossEncoderTrainingArguments)
    StTrainer(model=model, args=args, train_dataset=rows, loss=StBCE(model)).train()


def measure_bound() -> dict:
    """The machine's matmul rate at the models' feed-forward shape (16 x 256 tokens, 384 ->
    1536), fp32 and bf16: the ceiling that pairs/s are reported against."""
    import torch

    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(4096, 384, dtype=dtype), torch.randn(384, 1536, dtype=dtype)
        for _ in range(3):
            a @ b
        start, reps = time.perf_counter(), 30
        for _ in range(reps):
            a @ b
        rates[f"{name}_tflops"] = round(
            2 * 4096 * 384 * 1536 * reps / (time.perf_counter() - start) / 1e12, 3
        )
    return {"part": "bound", "threads": torch.get_num_threads(), **rates}


def flops_per_pair(model: str, tokens: float, trained_layers: int | None = None) -> float:
    """Forward FLOPs of one pair (matmuls only), plus the backward of the trained layers when
    `trained_layers` is given (0 = scoring; None with training = every layer trained)."""
    from transformers import AutoConfig

    from workbench import embedded

    config = AutoConfig.from_pretrained(embedded.resolve(model)[0])
    h, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = tokens * (8 * h * h + 4 * h * inner + 4 * tokens * h)
    backward = 2 * per_layer * (layers if trained_layers is None else trained_layers)
    return per_layer * layers + backward


def _mean_tokens(pairs: list[tuple[str, str]]) -> float:
    from workbench import CrossEncoder

    lengths = CrossEncoder("minilm-l6-tiny", max_length=256).token_lengths(pairs)
    return round(float(np.mean(lengths)), 1)


def _layers(model: str) -> int:
    from transformers import AutoConfig

    from workbench import embedded

    return AutoConfig.from_pretrained(embedded.resolve(model)[0]).num_hidden_layers


def _peak_rss_mb() -> int:
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale)


# Driver


def cases(parts: list[str], quick: bool, test: int, rerank_pairs: int) -> list[list[str]]:
    limit = "1000" if quick else str(rerank_pairs)
    found = [["bound"]] if "bound" in parts else []
    if "train" in parts:
        systems = ("workbench", "workbench-dropout", "sentence-transformers")
        # bf16: the main job's recipe for a whole epoch, then test nDCG@10. fp32 (4x slower
        # here) and the all-MiniLM-L6-v2 recipe (throughput only): 40 steps.
        epoch = "40" if quick else "0"
        found += [["train", s, "bf16", MODEL, epoch, str(test)] for s in systems]
        found += [["train", s, "fp32", MODEL, "40", str(test)] for s in systems[::2]]
        found += [["train", s, "bf16", "minilm-l6", "40", "0"] for s in systems[::2]]
    if "rerank" in parts:
        for dataset in ("scifact", "dl19"):
            for system, precision in (
                ("workbench", "fp32"),
                ("sentence-transformers", "fp32"),
                ("workbench", "bf16"),
                ("workbench-onnx-int8", "fp32"),
            ):
                found.append(["rerank", system, precision, dataset, limit])
    if "growth" in parts:
        sizes = (1000, 2000, 4000) if quick else (1000, 5000, 20000)
        questions = "30" if quick else "100"
        for system in ("workbench", "sentence-transformers"):
            found += [["growth", system, str(size), "0"] for size in sizes]
            found += [["growth", system, questions, str(c)] for c in (1, 10, 100)]
    return found


def run_one(case: list[str]) -> dict:
    part, *rest = case
    if part == "train":
        system, precision, model, steps, test = rest
        return measure_train(system, precision, model, int(steps) or None, int(test))
    if part == "bound":
        return measure_bound()
    if part == "rerank":
        system, precision, dataset, limit = rest
        return measure_rerank(system, precision, dataset, int(limit) or None)
    return measure_growth(rest[0], int(rest[1]), int(rest[2]))


def run_cases(script: str, found: list[list[str]]) -> list[dict]:
    """Run `script --one CASE` for each case in its own process; print and return each JSON
    result. A failed case prints its error and is left out."""
    results = []
    for case in found:
        done = subprocess.run(
            [sys.executable, script, "--one", *case], capture_output=True, text=True
        )
        if done.returncode != 0:
            print(json.dumps({"case": case, "error": done.stderr[-2000:]}), flush=True)
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    return results


def agreement(results: list[dict]) -> None:
    """Add max |score difference| to sentence-transformers and top-10 agreement per set."""
    for row in results:
        if row["part"] != "rerank" or row["system"] == "sentence-transformers":
            continue
        reference = next(
            r for r in results
            if r["part"] == "rerank" and r["set"] == row["set"]
            and r["system"] == "sentence-transformers"
        )  # fmt: skip
        ours, theirs = np.load(row["scores"]), np.load(reference["scores"])
        row["max_abs_diff"] = float(np.max(np.abs(ours - theirs)))
        width = 30 if row["set"] == "scifact" else 100
        starts = range(0, len(ours) - width + 1, width)
        same = [_top10(ours, i, width) == _top10(theirs, i, width) for i in starts]
        row["same_top10_share"] = round(float(np.mean(same)), 3) if same else None


def ranking_quality(results: list[dict]) -> None:
    """Add nDCG@10 of each scoring path on the queries its pairs cover (all their candidates)."""
    evaluators = {}
    for row in results:
        if row["part"] != "rerank":
            continue
        width = 30 if row["set"] == "scifact" else 100
        count = row["pairs"] // width
        if (row["set"], count) not in evaluators:
            evaluators[row["set"], count] = _set_evaluator(row["set"], count)
        evaluator = evaluators[row["set"], count]
        sizes = [len(sample.candidates) for sample in evaluator.samples]
        if sizes != [width] * count:  # pairs and queries would not line up
            continue
        scores = np.load(row["scores"])[: count * width].reshape(count, width)
        row["ndcg@10"] = round(evaluator.compute(list(scores))["ndcg@10"], 4)


def _set_evaluator(dataset: str, count: int):
    from workbench.evaluation import BeirSet
    from workbench.evaluation.reranking import RerankingEvaluator, build_samples

    if dataset == "scifact":
        return scifact_candidates(count)
    folder = SHARED / "trec-dl-2019-passage"
    dl19 = BeirSet.from_folder(folder, relevance_level=2, run_file=folder / "bm25_top100.tsv")
    samples = build_samples(
        dl19.data.queries, dl19.data.qrels, dl19.data.corpus, dl19.run, top_k=100
    )[:count]
    return RerankingEvaluator(samples, relevance_level=2)


def _top10(scores: np.ndarray, start: int, width: int) -> set[int]:
    return set(np.argsort(-scores[start : start + width])[:10].tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default="bound,train,rerank,growth")
    parser.add_argument("--output", default="runs/vs_sentence_transformers.json")
    parser.add_argument("--test-queries", type=int, default=100, help="SciFact test claims")
    parser.add_argument(
        "--rerank-pairs", type=int, default=3000, help="pairs scored per set (0: all of them)"
    )
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--report", nargs="+", help="print the tables of earlier --output files")
    args = parser.parse_args()
    if args.report:
        results = [r for f in args.report for r in json.loads(Path(f).read_text())["results"]]
        agreement(results)
        ranking_quality(results)
        print(tables(results))
        return
    if args.quick:
        args.test_queries = min(args.test_queries, 30)
    if args.one:
        print(json.dumps(run_one(args.one)))
        return

    found = cases(args.parts.split(","), args.quick, args.test_queries, args.rerank_pairs)
    results = run_cases(__file__, found)
    agreement(results)
    if any(r["part"] == "rerank" for r in results):
        ranking_quality(results)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"quick": args.quick, "results": results}, indent=2))
    print(tables(results))


def tables(results: list[dict]) -> str:
    """The three parts as Markdown, each row with its ratio to sentence-transformers and, with
    a `bound` measurement, its share of the machine's matmul ceiling."""
    bound = next((r for r in results if r["part"] == "bound"), None)
    lines = [] if bound is None else [f"Matmul ceiling: {bound}", ""]
    train = [r for r in results if r["part"] == "train"]
    if train:
        lines += [
            "| model | precision | system | pairs | pairs/s | x ST | of bound | train s "
            "| peak RSS MB | nDCG@10 |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in train:
            ref = _reference(train, r, ("model", "precision"))
            share = _share(r, bound, r["model"], r.get("trained_layers"))
            lines.append(
                f"| {r['model']} | {r['precision']} | {r['system']} | {r['pairs']} "
                f"| {r['pairs_per_s']} | {_ratio(r, ref)} | {share} | {r['train_s']} "
                f"| {r['peak_rss_mb']} | {r.get('ndcg@10', '')} |"
            )
    rerank = [r for r in results if r["part"] == "rerank"]
    if rerank:
        lines += [
            "",
            "| set | path | pairs | pairs/s | x ST | of bound | max abs diff | same top-10 "
            "| nDCG@10 | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rerank:
            ref = _reference(rerank, r, ("set",))
            share = "" if "onnx" in r["system"] else _share(r, bound, MODEL, 0)
            lines.append(
                f"| {r['set']} | {r['system']} {r['precision']} | {r['pairs']} "
                f"| {r['pairs_per_s']} | {_ratio(r, ref)} | {share} "
                f"| {_short(r.get('max_abs_diff'))} | {r.get('same_top10_share', '')} "
                f"| {r.get('ndcg@10', '')} | {r['peak_rss_mb']} |"
            )
    growth = [r for r in results if r["part"] == "growth"]
    if growth:
        lines += [
            "",
            "| work | system | pairs | seconds | pairs/s | x ST | peak RSS MB | x ST |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in growth:
            ref = _reference(growth, r, ("rows", "candidates"))
            work = f"score, {r['candidates']} per query" if r["candidates"] else "train 1 epoch"
            memory = "" if ref is None else f"{r['peak_rss_mb'] / ref['peak_rss_mb']:.2f}"
            lines.append(
                f"| {work} | {r['system']} | {r['rows']} | {r['seconds']} | {r['pairs_per_s']} "
                f"| {_ratio(r, ref)} | {r['peak_rss_mb']} | {memory} |"
            )
    return "\n".join(lines)


def _reference(rows: list[dict], row: dict, keys: tuple[str, ...]) -> dict | None:
    return next(
        (
            r for r in rows
            if r["system"] == "sentence-transformers" and all(r[k] == row[k] for k in keys)
        ),
        None,
    )  # fmt: skip


def _share(row: dict, bound: dict | None, model: str, trained: int | None) -> str:
    """pairs/s as a share of the ceiling: the matmul rate over the FLOPs of a pair."""
    if bound is None or "mean_tokens" not in row:
        return ""
    rate = bound[f"{row['precision']}_tflops"] * 1e12
    ceiling = rate / flops_per_pair(model, row["mean_tokens"], trained)
    return f"{row['pairs_per_s'] / ceiling:.0%} of {ceiling:.0f}"


def _short(value: float | None) -> str:
    return "" if value is None else f"{value:.1e}"


def _ratio(row: dict, reference: dict | None) -> str:
    if reference is None or not reference["pairs_per_s"]:
        return ""
    return f"{row['pairs_per_s'] / reference['pairs_per_s']:.2f}"


if __name__ == "__main__":
    main()
