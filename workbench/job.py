"""The main job: fine-tune a reranker on a BEIR set's train queries with BM25 hard negatives,
then compare BM25, an off-the-shelf reranker and the fine-tuned model on the test queries.
With `train_file`, it trains on your own rows instead and evaluates on held-out queries.

Run it with `workbench train` (defaults: the bundled SciFact sample). A run stops cleanly on
SIGTERM / SIGINT or a `STOP` file in the run folder, and `resume=True` continues it from its
last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import TrainingArguments

from workbench import losses as loss_classes
from workbench.data import BeirData, load_beir, scifact_path
from workbench.device import default_device, resolve_precision
from workbench.distributed import is_main_process, world_size
from workbench.embedded import cache_dir
from workbench.evaluation.compare import RunComparison, compare_runs
from workbench.evaluation.reranking import RerankingEvaluator, build_samples
from workbench.guardrails import (
    BaselineFirstCallback,
    TrainingDiverged,
    divergence_advice,
)
from workbench.job_files import first_stage_runs, judged_queries, load_rows, split_by_query
from workbench.layers import freeze_bottom_layers, set_attention_dropout
from workbench.losses import recommend_losses
from workbench.model import CrossEncoder
from workbench.model_card import model_card
from workbench.retrieval import BM25Retriever
from workbench.runs import RunFolder, last_checkpoint, process_record, write_folder_atomic
from workbench.trainer import CrossEncoderTrainer, StopCallback

logger = logging.getLogger(__name__)

SYSTEMS = ("bm25", "baseline", "finetuned")
METRICS = ("ndcg@10", "mrr@10", "map")
# Written into the run folder to ask a running job to stop (the dashboard's Stop button).
STOP_FILE = "STOP"
# Candidate text kept per document in rankings_test.jsonl, enough to recognise a passage.
_RANKING_TEXT_CHARS = 400
# config.json keys the job adds that are not settings.
_DERIVED_KEYS = ("resolved_precision", "world_size")


class RunStopped(Exception):
    """The run was asked to stop (signal or stop file); its checkpoints stay for a resume."""


@dataclass
class JobConfig:
    """Settings of the main job; every field is a `workbench train` flag.

    The defaults are the recipe chosen by measurement on SciFact (see README, "Default recipe").
    """

    # Data: a BEIR folder ("scifact" = the bundled sample), or your own rows in train_file
    # (pairs, tuples or lists in role columns) with eval_file or `dev_queries` held out.
    data: str = "scifact"
    train_file: str | None = None
    eval_file: str | None = None
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
    attention_dropout: float | None = 0.0
    # Training
    loss: str = "BinaryCrossEntropyLoss"
    epochs: float = 1.0
    max_steps: int | None = None
    learning_rate: float = 3e-5
    batch_size: int = 16
    # Batches of rows of similar token length: less padding (44% of WikiQA tokens, 3% of SciFact's).
    group_by_length: bool = True
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    pos_weight: float | None = None
    precision: str = "auto"
    # Training processes, one per GPU (DDP through torchrun); `workbench train` starts them.
    num_processes: int = 1
    eval_steps: int | None = None
    eval_loss: bool = True
    seed: int = 12
    # Cost
    cache_baseline_scores: bool = True

    def __post_init__(self) -> None:
        # Checked here, not at the training stage after a long baseline.
        if self.attention_dropout is not None and not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(
                f"attention_dropout expects a value in [0, 1) or null, got "
                f"{self.attention_dropout!r}"
            )
        if self.num_processes < 1:
            raise ValueError(f"num_processes expects 1 or more, got {self.num_processes!r}")

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> JobConfig:
        """Read a JSON config file (a run's own `config.json` too); keyword overrides win."""
        values = json.loads(Path(path).read_text(encoding="utf-8"))
        values = {k: v for k, v in values.items() if k not in _DERIVED_KEYS}
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
    # Your own rows (train_file): trained on as given; dev and test are then the eval queries.
    train_rows: datasets.Dataset | None = None
    eval_rows: datasets.Dataset | None = None


def run_job(
    config: JobConfig, output_dir: str | Path, *, resume: bool = False
) -> dict[str, dict[str, float]]:
    """Run the whole job and write the run folder.

    `status.json` says `running` (with the process id and the stage), then `finished`,
    `stopped` or `failed` (with the error); whatever was logged and checkpointed before a stop
    or a failure stays on disk.

    Args:
        config: The settings.
        output_dir: The run folder.
        resume: Continue training from the run folder's last checkpoint (from scratch when it
            has none).

    Returns:
        System (`bm25`, `baseline`, `finetuned`) -> metrics (`ndcg@10`, `mrr@10`, `map`).

    Raises:
        RunStopped: If a stop was requested (SIGTERM, SIGINT or the `STOP` file).
    """
    if config.num_processes > 1 and world_size() == 1:
        raise RuntimeError(
            f"num_processes={config.num_processes} needs one process per GPU: start the job with "
            "`workbench train` (it launches torchrun) or under torchrun yourself."
        )
    run = RunFolder(output_dir)
    if is_main_process():
        (run.root / STOP_FILE).unlink(missing_ok=True)
    stop = StopCallback(run.root / STOP_FILE)
    _status(run, "running", started=time.time(), **process_record())
    try:
        with _stop_on_signals(stop):
            results = _run_stages(config, run, stop, resume)
    except RunStopped as err:
        _status(run, "stopped", stopped=time.time(), message=str(err))
        logger.info("Run stopped: %s. Resume it with `workbench train --resume`.", err)
        raise
    except BaseException as err:
        _status(run, "failed", error=f"{type(err).__name__}: {err}")
        raise
    _status(run, "finished", finished=time.time())
    return results


def _last_checkpoint(run: RunFolder) -> str | None:
    # The newest *complete* one: a kill while saving leaves a newer checkpoint without its state.
    found = last_checkpoint(run.checkpoints)
    logger.info("Resuming from %s", found or "scratch (no checkpoint yet)")
    return str(found) if found else None


def _status(run: RunFolder, state: str, **fields) -> None:
    if is_main_process():
        run.write_json("status.json", {"state": state, **fields})


@contextlib.contextmanager
def _stop_on_signals(stop: StopCallback):
    """SIGTERM / SIGINT: training stops at the end of its step with a checkpoint; any other
    stage stops at once. Signal handlers can only be set in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        stop.request()
        if not stop.training:
            raise RunStopped(f"signal {signal.Signals(signum).name} outside training")

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _run_stages(
    config: JobConfig, run: RunFolder, stop: StopCallback, resume: bool = False
) -> dict[str, dict[str, float]]:
    timings: dict[str, float] = {}
    precision = resolve_precision(config.precision, default_device())
    resolved = {"resolved_precision": precision, "world_size": world_size()}
    if is_main_process():
        run.write_json("config.json", dataclasses.asdict(config) | resolved)
    _seed(config.seed)

    with _stage(timings, "retrieval", run):
        data = prepare_data(config)
        dev_top_k = config.rerank_top_k if data.train_rows is not None else config.dev_top_k
        # Scored at the training precision: bf16 halves the scoring time where it is native.
        dev = _evaluator(data, data.dev, data.train_qrels, dev_top_k, "dev", precision)
        test = _evaluator(data, data.test, data.test_qrels, config.rerank_top_k, "test", precision)
    # Under DDP the baseline waits until after training: the other ranks would otherwise sit
    # in their first collective while rank 0 scores, and time out on a long test set.
    if world_size() == 1:
        baseline_scores, baseline, baseline_per_query = _baseline_stage(config, test, timings, run)

    with _stage(timings, "training", run):
        model = CrossEncoder(config.base_model, max_length=config.max_length)
        freeze_bottom_layers(model, config.freeze_layers)
        _attention_dropout(model, config.attention_dropout)
        pairs, eval_pairs = _training_rows(config, data)
        checkpoint = _last_checkpoint(run) if resume else None
        trainer = _trainer(config, model, pairs, dev, run, precision, eval_pairs, stop)
        # A resumed run was evaluated at its start already.
        trainer.args.eval_on_start = checkpoint is None
        _train_with_advice(trainer, checkpoint, config)
        if stop.requested:
            raise RunStopped(f"stopped at step {trainer.state.global_step}")
        # The other ranks only train: rank 0 scores, evaluates and writes the run folder.
        if not is_main_process():
            return {}
        # Into a staging folder first: a kill while saving leaves no half-written final/.
        write_folder_atomic(run.final_model, model.save_pretrained)
    if world_size() > 1:
        baseline_scores, baseline, baseline_per_query = _baseline_stage(config, test, timings, run)

    with _stage(timings, "final evaluation", run):
        first_stage_scores = _first_stage_scores(test)
        tuned_scores = test.score(model)
        results = {
            "bm25": _pick(test.compute(first_stage_scores), "test_"),
            "baseline": baseline,
            "finetuned": _pick(test.compute(tuned_scores), "test_"),
        }
        comparison = _paired_comparison(baseline_per_query, test.per_query)
    _write_per_query(run, baseline_per_query, test.per_query)
    systems = {"first_stage": first_stage_scores, "baseline": baseline_scores}
    _write_rankings(run, test, systems | {"finetuned": tuned_scores})
    run.write_json("results.json", results)
    if comparison is not None:
        run.write_json("comparison.json", comparison_summary(comparison))
    # The card reads results.json and comparison.json, so it is written right after them.
    run.write_text("final/README.md", model_card(run.root))
    report = render_report(config, data, results, pairs, trainer, timings, comparison)
    run.write_text("report.md", report)
    logger.info("Job finished in %.0f s; run folder %s", sum(timings.values()), run.root)
    return results


def _baseline_stage(config, test, timings, run):
    with _stage(timings, "baseline", run):
        scores = _baseline_scores(config, test)
        metrics = _pick(test.compute(scores), "test_")
        return scores, metrics, test.per_query.copy()


def _train_with_advice(trainer: CrossEncoderTrainer, checkpoint: str | None, config) -> None:
    """Train; a diverged loss or an out-of-memory error ends the run with what to change."""
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    except torch.cuda.OutOfMemoryError as err:  # torch.OutOfMemoryError (CUDA, MPS) from 2.5
        raise MemoryError(
            f"Out of memory at batch size {config.batch_size} and max_length "
            f"{config.max_length}: lower batch_size (e.g. {max(1, config.batch_size // 2)}) or "
            f"max_length, or freeze more layers. Checkpoints saved so far are kept. ({err})"
        ) from err
    diverged = trainer.divergence.diverged
    if diverged is not None:
        kept = last_checkpoint(Path(trainer.args.output_dir))
        raise TrainingDiverged(
            f"the training loss became {diverged['loss']} at step {diverged['step']} "
            f"(learning rate {config.learning_rate:g}). {divergence_advice(config.learning_rate)} "
            + (f"Last good checkpoint: {kept.name}." if kept else "No checkpoint was saved yet.")
        )


@contextlib.contextmanager
def _stage(timings: dict[str, float], name: str, run: RunFolder | None = None):
    logger.info("Stage %d: %s", len(timings) + 1, name)
    if run is not None:
        _status(run, "running", stage=name, stage_started=time.time(), **process_record())
    start = time.time()
    yield
    timings[name] = round(time.time() - start, 1)
    logger.info("Stage %s took %.0f s", name, timings[name])


def prepare_data(config: JobConfig) -> JobData:
    """Load the data, hold out dev queries from train, and retrieve BM25 candidates."""
    if config.train_file:
        return prepare_file_data(config)
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


def prepare_file_data(config: JobConfig) -> JobData:
    """Your own rows: train on `train_file` as given; the eval queries (`eval_file`, or
    `dev_queries` held out) are reranked from their own candidates in BM25 order, and serve as
    both the dev set of the curves and the test set of the report (there is no third split)."""
    train_rows = load_rows(config.train_file)
    if config.eval_file:
        eval_rows = load_rows(config.eval_file)
    else:
        train_rows, eval_rows = split_by_query(train_rows, config.dev_queries, seed=config.seed)
    judged = judged_queries(eval_rows)
    train_queries = {f"train-{i}": q for i, q in enumerate(sorted(set(train_rows["query"])))}
    logger.info(
        "Rows: %d train (%d queries), %d eval (%d queries, %d candidates)",
        len(train_rows),
        len(train_queries),
        len(eval_rows),
        len(judged.queries),
        len(judged.corpus),
    )
    return JobData(
        BeirData(judged.corpus, judged.queries, judged.qrels),
        train_queries,
        dict(judged.queries),
        dict(judged.queries),
        judged.qrels,
        judged.qrels,
        first_stage_runs(judged),
        train_rows,
        eval_rows,
    )


def training_pairs(
    data: JobData, negatives: int, queries: dict[str, str] | None = None
) -> datasets.Dataset:
    """Each train query's positives (label 1) and its top BM25 non-positives (label 0).

    Args:
        data: The prepared data.
        negatives: BM25 negatives per query.
        queries: Other queries with judgments in `train_qrels` (e.g. the dev queries, for an
            eval loss); defaults to the train queries.
    """
    rows = {"query": [], "passage": [], "label": []}
    for query_id, query in (queries if queries is not None else data.train).items():
        positives = [d for d, g in data.train_qrels[query_id].items() if g > 0]
        hard = [d for d, _ in data.runs[query_id] if d not in data.train_qrels[query_id]]
        labelled = [(d, 1.0) for d in positives] + [(d, 0.0) for d in hard[:negatives]]
        for doc_id, label in labelled:
            rows["query"].append(query)
            rows["passage"].append(data.beir.corpus[doc_id])
            rows["label"].append(label)
    return datasets.Dataset.from_dict(rows)


def _attention_dropout(model: CrossEncoder, probability: float | None) -> None:
    if probability is None:
        return
    try:
        set_attention_dropout(model, probability)
    except NotImplementedError as err:
        logger.warning("%s; kept the checkpoint's. Set attention_dropout to null to silence.", err)


def render_report(
    config, data, results, pairs, trainer, timings: dict[str, float], comparison=None
) -> str:
    """A short Markdown report: what ran, the table, and a plain verdict."""
    if data.train_rows is None:
        data_line = (
            f"Data: `{config.data}`: {len(data.train)} train queries ({len(pairs)} pairs, "
            f"{config.negatives} BM25 negatives per query), {len(data.dev)} dev queries held out "
            f"from train, {len(data.test)} test queries; rerank depth {config.rerank_top_k}."
        )
    else:
        held = f"`{config.eval_file}`" if config.eval_file else "queries held out from train"
        data_line = (
            f"Data: `{config.train_file}`: {len(pairs)} rows ({len(data.train)} queries); "
            f"eval: {len(data.test)} {held}, their own candidates in BM25 order (the eval "
            "queries draw the curves and the table; no separate test set)."
        )
    lines = [
        "# Reranker Workbench run",
        "",
        data_line,
        f"Model: `{config.base_model}` fine-tuned with {config.loss}, {config.epochs} epoch(s), "
        f"lr {config.learning_rate}, batch {config.batch_size}, max_length {config.max_length}, "
        f"bottom {config.freeze_layers} layers frozen, attention dropout "
        f"{'as the checkpoint' if config.attention_dropout is None else config.attention_dropout}"
        f", {world_size()} process(es); baseline `{config.baseline_model}` zero-shot.",
        f"Training steps: {trainer.state.global_step}; best checkpoint: "
        f"{trainer.state.best_model_checkpoint or 'final step'}." + baseline_first_note(trainer),
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


def baseline_first_note(trainer) -> str:
    """A sentence for the report when training never beat the starting model, else ""."""
    guard = next(
        (c for c in trainer.callback_handler.callbacks if isinstance(c, BaselineFirstCallback)),
        None,
    )
    if guard is None or not trainer.kept_start_model:
        return ""
    later = guard.best_trained_score
    return (
        f" Training did not beat the starting model on dev {guard.metric.removeprefix('eval_')} "
        f"({guard.start_score:.4f} at step 0, best later "
        f"{'none' if later is None else f'{later:.4f}'}), so the final model is the starting "
        "model."
    )


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


def _training_rows(config: JobConfig, data: JobData):
    """The rows to train on and, with `eval_loss`, rows of the same format for an eval loss."""
    if data.train_rows is not None:
        return data.train_rows, data.eval_rows if config.eval_loss else None
    pairs = training_pairs(data, config.negatives)
    if not (config.eval_loss and data.dev):
        return pairs, None
    return pairs, training_pairs(data, config.negatives, queries=data.dev)


def build_loss(config: JobConfig, model: CrossEncoder, rows: datasets.Dataset):
    """The loss named by `config.loss`, with defaults that fit the data.

    `BinaryCrossEntropyLoss` gets `pos_weight` from the config, else the BM25 negatives per
    query (BEIR data), else the negatives per positive in the rows.

    Raises:
        ValueError: If the name is not a workbench loss.
    """
    cls = getattr(loss_classes, config.loss, None)
    if not (isinstance(cls, type) and issubclass(cls, loss_classes.RerankingLoss)):
        names = [n for n in loss_classes.__all__ if n.endswith("Loss") and n != "RerankingLoss"]
        raise ValueError(f"loss expects one of {names!r}, but got {config.loss!r}.")
    settings = {}
    if cls is loss_classes.BinaryCrossEntropyLoss:
        settings["pos_weight"] = config.pos_weight or _default_pos_weight(config, rows)
    return cls(model, **settings)


def _default_pos_weight(config: JobConfig, rows: datasets.Dataset) -> float:
    if not config.train_file:
        return float(config.negatives)
    fitted = {r["loss"]: r["settings"] for r in recommend_losses(rows)}
    return fitted.get("BinaryCrossEntropyLoss", {}).get("pos_weight", 1.0)


def _trainer(
    config, model, pairs, dev, run, precision, eval_pairs=None, stop=None
) -> CrossEncoderTrainer:
    # Each process takes its own batch of a step; one process on several GPUs (DataParallel,
    # when run_job is called directly) takes one per GPU.
    data_parallel = torch.cuda.device_count() if world_size() == 1 else 1
    per_step = config.batch_size * world_size() * max(1, data_parallel)
    steps = config.max_steps or int(np.ceil(len(pairs) / per_step) * config.epochs)
    # Two evaluations inside the run; Trainer adds one at the last step.
    eval_steps = config.eval_steps or max(1, -(-steps // 3))
    # On your own rows the eval queries are also the report's: no checkpoint is picked by them.
    pick_best = not config.train_file
    args = TrainingArguments(
        output_dir=str(run.checkpoints),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
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
        load_best_model_at_end=pick_best,
        metric_for_best_model=dev.primary_metric if pick_best else None,
        greater_is_better=True if pick_best else None,
        logging_steps=max(1, min(10, eval_steps // 2)),
        seed=config.seed,
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        # Several CPU processes (tests, CPU-only machines) talk over gloo; GPUs over NCCL.
        ddp_backend="gloo" if world_size() > 1 and default_device() == "cpu" else None,
    )
    return CrossEncoderTrainer(
        model,
        args,
        train_dataset=pairs,
        eval_dataset=eval_pairs,
        loss=build_loss(config, model, pairs),
        evaluator=dev,
        metrics_path=run.metrics_path,
        # Baseline-first: end on the best dev evaluation, the starting model's included.
        callbacks=[c for c in (stop, BaselineFirstCallback() if pick_best else None) if c],
    )


def _evaluator(data, queries, qrels, top_k, name, precision="fp32") -> RerankingEvaluator:
    runs = {q: data.runs[q] for q in queries}
    samples = build_samples(queries, qrels, data.beir.corpus, runs, top_k=top_k)
    return RerankingEvaluator(samples, name=name, batch_size=32, precision=precision)


def _baseline_metrics(config: JobConfig, test: RerankingEvaluator) -> dict[str, float]:
    scores = _baseline_scores(config, test)
    metrics = _pick(test.compute(scores), "test_")
    return metrics, test.per_query.copy()


def _baseline_scores(config: JobConfig, test: RerankingEvaluator) -> list[np.ndarray]:
    """The baseline model's scores of the test candidates, cached on disk by model and data."""
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
    return scores


def _paired_comparison(baseline, finetuned) -> RunComparison | None:
    """Fine-tuned vs baseline per test query; None with fewer than 2 queries (no paired test)."""
    if len(finetuned) < 2:
        logger.info("One test query: no paired comparison of fine-tuned vs baseline")
        return None
    return compare_runs(baseline, finetuned, metric="ndcg@10")


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


def _write_rankings(run: RunFolder, test: RerankingEvaluator, systems: dict) -> None:
    """One line per test query: its candidates in first-stage order with each system's score
    and the judged grade, for side-by-side rankings without rescoring."""
    lines = []
    for index, sample in enumerate(test.samples):
        docs = []
        for position, (doc_id, text, _) in enumerate(sample.candidates):
            doc = {"id": doc_id, "text": text[:_RANKING_TEXT_CHARS]}
            doc["grade"] = sample.qrels.get(doc_id, 0)
            doc |= {name: float(scores[index][position]) for name, scores in systems.items()}
            docs.append(doc)
        record = {"query_id": sample.query_id, "query": sample.query, "docs": docs}
        record["relevant_missed"] = len(sample.missed)
        # Every judgment, missed documents included: per-query metrics equal the evaluator's.
        record["qrels"] = dict(sample.qrels)
        lines.append(json.dumps(record))
    run.write_text("rankings_test.jsonl", "\n".join(lines) + "\n")


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
