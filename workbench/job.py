"""The main job: fine-tune a reranker on a BEIR set's train queries with BM25 hard negatives,
then compare BM25, an off-the-shelf reranker and the fine-tuned model on the test queries.

Run it with `workbench train` (defaults: the bundled SciFact sample).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import TrainingArguments

from workbench.data import BeirData, load_beir, scifact_path
from workbench.device import default_device, resolve_precision
from workbench.embedded import cache_dir
from workbench.evaluation.compare import RunComparison, compare_runs
from workbench.evaluation.reranking import RerankingEvaluator, build_samples
from workbench.losses import BinaryCrossEntropyLoss
from workbench.model import CrossEncoder
from workbench.retrieval import BM25Retriever
from workbench.runs import RunFolder
from workbench.trainer import CrossEncoderTrainer

logger = logging.getLogger(__name__)

SYSTEMS = ("bm25", "baseline", "finetuned")
METRICS = ("ndcg@10", "mrr@10", "map")


@dataclass
class JobConfig:
    """Settings of the main job; every field is a `workbench train` flag.

    The defaults are the recipe chosen by measurement on SciFact (see README, "Default recipe").
    """

    # Data
    data: str = "scifact"
    train_split: str = "train"
    test_split: str = "test"
    dev_queries: int = 60
    max_train_queries: int | None = None
    max_test_queries: int | None = None
    # Retrieval and negatives
    negatives: int = 3
    first_stage_depth: int = 100
    rerank_top_k: int = 30
    dev_top_k: int = 10
    # Models
    base_model: str = "ms-marco-minilm-l12"
    baseline_model: str = "ms-marco-minilm-l12"
    max_length: int = 256
    freeze_layers: int = 8
    # Training
    epochs: float = 1.0
    learning_rate: float = 3e-5
    batch_size: int = 16
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    pos_weight: float | None = None
    precision: str = "auto"
    eval_steps: int | None = None
    seed: int = 12
    # Cost
    cache_baseline_scores: bool = True

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> JobConfig:
        """Read a JSON config file; keyword overrides win."""
        values = json.loads(Path(path).read_text(encoding="utf-8"))
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown config keys {sorted(unknown)!r}")
        return cls(**(values | overrides))


@dataclass
class JobData:
    """Queries split three ways, with BM25 runs for each."""

    beir: BeirData
    train: dict[str, str]
    dev: dict[str, str]
    test: dict[str, str]
    train_qrels: dict[str, dict[str, int]]
    test_qrels: dict[str, dict[str, int]]
    runs: dict[str, list[tuple[str, float]]]


def run_job(config: JobConfig, output_dir: str | Path) -> dict[str, dict[str, float]]:
    """Run the whole job and write the run folder.

    `status.json` says `running`, then `finished` or `failed` (with the error); whatever was
    logged and checkpointed before a failure stays on disk.

    Returns:
        System (`bm25`, `baseline`, `finetuned`) -> metrics (`ndcg@10`, `mrr@10`, `map`).
    """
    run = RunFolder(output_dir)
    run.write_json("status.json", {"state": "running", "started": time.time()})
    try:
        results = _run_stages(config, run)
    except BaseException as err:
        run.write_json("status.json", {"state": "failed", "error": f"{type(err).__name__}: {err}"})
        raise
    run.write_json("status.json", {"state": "finished", "finished": time.time()})
    return results


def _run_stages(config: JobConfig, run: RunFolder) -> dict[str, dict[str, float]]:
    timings: dict[str, float] = {}
    precision = resolve_precision(config.precision, default_device())
    run.write_json("config.json", dataclasses.asdict(config) | {"resolved_precision": precision})
    _seed(config.seed)

    with _stage(timings, "retrieval"):
        data = prepare_data(config)
        dev = _evaluator(data, data.dev, data.train_qrels, config.dev_top_k, "dev")
        test = _evaluator(data, data.test, data.test_qrels, config.rerank_top_k, "test")
    with _stage(timings, "baseline"):
        baseline, baseline_per_query = _baseline_metrics(config, test)

    with _stage(timings, "training"):
        model = CrossEncoder(config.base_model, max_length=config.max_length)
        freeze_bottom_layers(model, config.freeze_layers)
        pairs = training_pairs(data, config.negatives)
        trainer = _trainer(config, model, pairs, dev, run, precision)
        trainer.train()
        model.save_pretrained(run.final_model)

    with _stage(timings, "final evaluation"):
        results = {
            "bm25": _pick(test.compute(_first_stage_scores(test)), "test_"),
            "baseline": baseline,
            "finetuned": _pick(test(model), "test_"),
        }
        comparison = compare_runs(baseline_per_query, test.per_query, metric="ndcg@10")
    _write_per_query(run, baseline_per_query, test.per_query)
    run.write_json("results.json", results)
    run.write_json("comparison.json", comparison_summary(comparison))
    report = render_report(config, data, results, pairs, trainer, timings, comparison)
    run.write_text("report.md", report)
    logger.info("Job finished in %.0f s; run folder %s", sum(timings.values()), run.root)
    return results


@contextlib.contextmanager
def _stage(timings: dict[str, float], name: str):
    logger.info("Stage %d: %s", len(timings) + 1, name)
    start = time.time()
    yield
    timings[name] = round(time.time() - start, 1)
    logger.info("Stage %s took %.0f s", name, timings[name])


def prepare_data(config: JobConfig) -> JobData:
    """Load the data, hold out dev queries from train, and retrieve BM25 candidates."""
    folder = scifact_path() if config.data == "scifact" else Path(config.data)
    train_set = load_beir(folder, config.train_split)
    test_set = load_beir(folder, config.test_split)

    train_ids = sorted(train_set.queries)
    random.Random(config.seed).shuffle(train_ids)
    dev_ids = train_ids[: config.dev_queries]
    train_ids = train_ids[config.dev_queries :][: config.max_train_queries]
    test_ids = sorted(test_set.queries)[: config.max_test_queries]

    split = {
        "train": {q: train_set.queries[q] for q in train_ids},
        "dev": {q: train_set.queries[q] for q in dev_ids},
        "test": {q: test_set.queries[q] for q in test_ids},
    }
    bm25 = BM25Retriever(train_set.corpus)
    queries = split["train"] | split["dev"] | split["test"]
    hits = bm25.search(list(queries.values()), top_k=config.first_stage_depth)
    runs = dict(zip(queries, hits, strict=True))
    logger.info(
        "Queries: %d train, %d dev (held out from train), %d test",
        *(len(split[s]) for s in ("train", "dev", "test")),
    )
    return JobData(
        train_set,
        split["train"],
        split["dev"],
        split["test"],
        train_set.qrels,
        test_set.qrels,
        runs,
    )


def training_pairs(data: JobData, negatives: int) -> datasets.Dataset:
    """Each train query's positives (label 1) and its top BM25 non-positives (label 0)."""
    rows = {"query": [], "passage": [], "label": []}
    for query_id, query in data.train.items():
        positives = [d for d, g in data.train_qrels[query_id].items() if g > 0]
        hard = [d for d, _ in data.runs[query_id] if d not in data.train_qrels[query_id]]
        labelled = [(d, 1.0) for d in positives] + [(d, 0.0) for d in hard[:negatives]]
        for doc_id, label in labelled:
            rows["query"].append(query)
            rows["passage"].append(data.beir.corpus[doc_id])
            rows["label"].append(label)
    return datasets.Dataset.from_dict(rows)


def freeze_bottom_layers(model: CrossEncoder, count: int) -> None:
    """Freeze the embeddings and the first `count` transformer layers (0 freezes nothing)."""
    if count <= 0:
        return
    base = model.model.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not hasattr(base, "embeddings"):
        raise NotImplementedError(
            f"freeze_layers is not supported with {type(base).__name__} yet (BERT-style only)"
        )
    for module in [base.embeddings, *layers[:count]]:
        module.requires_grad_(False)
    logger.info("Froze embeddings and %d of %d layers", min(count, len(layers)), len(layers))


def render_report(
    config, data, results, pairs, trainer, timings: dict[str, float], comparison=None
) -> str:
    """A short Markdown report: what ran, the table, and a plain verdict."""
    lines = [
        "# Reranker Workbench run",
        "",
        f"Data: `{config.data}`: {len(data.train)} train queries ({len(pairs)} pairs, "
        f"{config.negatives} BM25 negatives per query), {len(data.dev)} dev queries held out "
        f"from train, {len(data.test)} test queries; rerank depth {config.rerank_top_k}.",
        f"Model: `{config.base_model}` fine-tuned with BCE, {config.epochs} epoch(s), "
        f"lr {config.learning_rate}, batch {config.batch_size}, max_length {config.max_length}, "
        f"bottom {config.freeze_layers} layers frozen; "
        f"baseline `{config.baseline_model}` zero-shot.",
        f"Training steps: {trainer.state.global_step}; best checkpoint: "
        f"{trainer.state.best_model_checkpoint or 'final step'}.",
        f"Wall time {sum(timings.values()):.0f} s ("
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
        + ").",
        "",
        format_table(results),
        "",
        verdict(results),
    ]
    if comparison is not None:
        lines += [
            "",
            f"Fine-tuned vs baseline, per test query ({comparison.metric}): mean "
            f"{comparison.mean_delta:+.4f}, 95% bootstrap CI [{comparison.ci_low:+.4f}, "
            f"{comparison.ci_high:+.4f}]; {comparison.improved} improved, "
            f"{comparison.regressed} regressed, {comparison.tied} tied; paired randomization "
            f"test p = {comparison.randomization_p:.3f}, paired t-test p = "
            f"{comparison.t_test_p:.3f}.",
        ]
    return "\n".join(lines) + "\n"


def format_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table of systems by metrics."""
    header = "| system | " + " | ".join(METRICS) + " |"
    rule = "|---|" + "---|" * len(METRICS)
    rows = [
        f"| {name} | " + " | ".join(f"{results[name][m]:.4f}" for m in METRICS) + " |"
        for name in results
    ]
    return "\n".join([header, rule, *rows])


def verdict(results: dict[str, dict[str, float]]) -> str:
    """Say plainly whether the fine-tuned model beat BM25 and the baseline on nDCG@10."""
    tuned = results["finetuned"]["ndcg@10"]
    parts = []
    for name in ("bm25", "baseline"):
        other = results[name]["ndcg@10"]
        word = "beat" if tuned > other else "did NOT beat"
        parts.append(f"{word} {name} ({tuned:.4f} vs {other:.4f}, {tuned - other:+.4f})")
    return "The fine-tuned model " + " and ".join(parts) + " on test nDCG@10."


def _trainer(config, model, pairs, dev, run, precision) -> CrossEncoderTrainer:
    steps = int(np.ceil(len(pairs) / config.batch_size) * config.epochs)
    # Two evaluations inside the run; Trainer adds one at the last step.
    eval_steps = config.eval_steps or max(1, -(-steps // 3))
    pos_weight = config.pos_weight or float(config.negatives)
    args = TrainingArguments(
        output_dir=str(run.checkpoints),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=int(config.warmup_ratio * steps),
        weight_decay=config.weight_decay,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # transformers refuses bf16 on a machine without an accelerator unless told it is a CPU.
        use_cpu=default_device() == "cpu",
        eval_strategy="steps",
        eval_steps=eval_steps,
        eval_on_start=True,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model=dev.primary_metric,
        greater_is_better=True,
        logging_steps=max(1, min(10, eval_steps // 2)),
        seed=config.seed,
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    loss = BinaryCrossEntropyLoss(model, pos_weight=pos_weight)
    return CrossEncoderTrainer(
        model, args, train_dataset=pairs, loss=loss, evaluator=dev, metrics_path=run.metrics_path
    )


def _evaluator(data, queries, qrels, top_k, name) -> RerankingEvaluator:
    runs = {q: data.runs[q] for q in queries}
    samples = build_samples(queries, qrels, data.beir.corpus, runs, top_k=top_k)
    return RerankingEvaluator(samples, name=name, batch_size=32)


def _baseline_metrics(config: JobConfig, test: RerankingEvaluator) -> dict[str, float]:
    model = CrossEncoder(config.baseline_model, max_length=config.max_length)
    key = _score_key(model, test) if config.cache_baseline_scores else None
    path = cache_dir() / "scores" / f"{key}.npz" if key else None
    if path is not None and path.exists():
        logger.info("Baseline scores from cache %s", path)
        stored = np.load(path)
        scores = [stored[f"q{i}"] for i in range(len(stored.files))]
    else:
        scores = test.score(model)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, **{f"q{i}": s for i, s in enumerate(scores)})
    metrics = _pick(test.compute(scores), "test_")
    return metrics, test.per_query.copy()


def comparison_summary(comparison: RunComparison) -> dict:
    """The figures of a fine-tuned vs baseline comparison, for `comparison.json`."""
    return {
        "metric": comparison.metric,
        "a": "baseline",
        "b": "finetuned",
        "mean_delta": comparison.mean_delta,
        "ci95": [comparison.ci_low, comparison.ci_high],
        "randomization_p": comparison.randomization_p,
        "t_test_p": comparison.t_test_p,
        "improved": comparison.improved,
        "regressed": comparison.regressed,
        "tied": comparison.tied,
    }


def _write_per_query(run: RunFolder, baseline, finetuned) -> None:
    """One row per test query: first-stage, baseline and fine-tuned metrics side by side."""
    table = finetuned.rename(columns=lambda c: c.replace("base_", "bm25_"))
    table = table.rename(columns={m: f"finetuned_{m}" for m in METRICS})
    for metric in METRICS:
        table[f"baseline_{metric}"] = baseline[metric].to_numpy()
    table.to_csv(run.root / "per_query_test.csv", index=False)


def _score_key(model: CrossEncoder, evaluator: RerankingEvaluator) -> str:
    digest = hashlib.sha256()
    for tensor in model.model.state_dict().values():
        digest.update(tensor.detach().cpu().float().numpy().tobytes()[:4096])
    digest.update(f"{model.max_length}|{model.activation}|{evaluator.precision}".encode())
    for sample in evaluator.samples:
        digest.update(sample.query.encode())
        for doc_id, text, _ in sample.candidates:
            digest.update(doc_id.encode() + text.encode())
    return digest.hexdigest()[:24]


def _pick(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {m: metrics[prefix + m] for m in METRICS}


def _first_stage_scores(evaluator: RerankingEvaluator) -> list[np.ndarray]:
    """Each query's first-stage scores: 'reranking' by them keeps the first-stage order."""
    return [np.array([score for _, _, score in s.candidates]) for s in evaluator.samples]


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
