"""The `workbench` command: `train` runs the main job, `evaluate` scores a model, `validate`
checks a data file, `mine` finds hard negatives.

Run `workbench --help` (or `python -m workbench --help`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import typing
from pathlib import Path

from workbench.distributed import is_main_process, torchrun_command, world_size
from workbench.job import STOP_FILE, JobConfig, RunStopped, format_table, run_job
from workbench.runs import RunFolder, run_state
from workbench.security import install_log_redaction, scrub_secrets

logger = logging.getLogger(__name__)

# Exit code of a run stopped on request (SIGTERM, SIGINT or a STOP file); it can be resumed.
EXIT_STOPPED = 3


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The log often lands in a run folder (the dashboard's train.log): no token may reach it.
    install_log_redaction()
    raw = list(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        raw = ["train", *raw]
        args = parser.parse_args(raw)
    args.argv = raw
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, ImportError, PermissionError) as err:
        print(f"error: {scrub_secrets(str(err))}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(JobConfig)
        if getattr(args, f.name, None) is not None
    }
    if args.config:
        config = JobConfig.from_file(args.config, **overrides)
    else:
        config = JobConfig(**overrides)
    if config.num_processes > 1 and world_size() == 1:
        return _torchrun(config.num_processes, args.argv, args.output_dir)
    if world_size() == 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        # One process, one GPU: the Trainer would spread it over all of them with DataParallel.
        os.environ["CUDA_VISIBLE_DEVICES"] = "0"
    if not is_main_process():
        logging.getLogger("workbench").setLevel(logging.WARNING)
    try:
        results = run_job(config, args.output_dir, resume=args.resume)
    except RunStopped as err:
        if not is_main_process():
            return 0
        print(f"Stopped ({err}); continue with --resume. Run folder: {args.output_dir}")
        # Under torchrun a worker's non-zero exit reads as a crash: the launcher says 3.
        return EXIT_STOPPED if world_size() == 1 else 0
    if not is_main_process():
        return 0
    print()
    print(format_table(results))
    print()
    print(Path(args.output_dir, "report.md").read_text(encoding="utf-8").splitlines()[-1])
    print(f"Run folder: {args.output_dir}")
    return 0


def _torchrun(num_processes: int, argv: list[str], output_dir: str) -> int:
    """Run this same command once per process under torchrun and wait.

    A first SIGTERM / SIGINT writes the run's STOP file, so every rank stops at the same step
    with a checkpoint (torchrun's own signal handling gives workers 30 s, then kills them); a
    second one ends torchrun. Exit status: 3 for a stopped run, as in one process.
    """
    import torch

    gpus = torch.cuda.device_count()
    if gpus and num_processes > gpus:
        raise ValueError(f"num_processes={num_processes} but only {gpus} GPUs are visible")
    if not gpus:
        logger.warning("num_processes=%d without a GPU: the processes share the CPU", num_processes)
    env = dict(os.environ)
    if gpus > num_processes and "CUDA_VISIBLE_DEVICES" not in env:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(num_processes))
    command = torchrun_command(num_processes, argv)
    logger.info("Starting %d training processes: %s", num_processes, " ".join(command))
    # Its own session: a terminal's Ctrl-C reaches this process only, which asks for a stop.
    process = subprocess.Popen(command, env=env, start_new_session=True)
    stop_file = Path(output_dir) / STOP_FILE

    def on_signal(signum, frame):
        if stop_file.exists():
            process.terminate()
        else:
            stop_file.touch()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = process.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if code == 0 and run_state(output_dir).state == "stopped":
        return EXIT_STOPPED
    if code != 0:
        # A worker crashed: rank 0 may have been told to stop and written "stopped".
        error = f"a training process exited with code {code}; see the log"
        RunFolder(output_dir).write_json("status.json", {"state": "failed", "error": error})
    return code


def _evaluate(args: argparse.Namespace) -> int:
    from workbench.data import load_beir
    from workbench.evaluation.reranking import RerankingEvaluator, build_samples
    from workbench.model import CrossEncoder
    from workbench.retrieval import BM25Retriever

    beir = load_beir(args.data, args.split)
    hits = BM25Retriever(beir.corpus).search(list(beir.queries.values()), top_k=args.top_k)
    runs = dict(zip(beir.queries, hits, strict=True))
    samples = build_samples(beir.queries, beir.qrels, beir.corpus, runs, top_k=args.top_k)
    evaluator = RerankingEvaluator(
        samples, name=args.split, relevance_level=args.relevance_level, optimistic=True
    )
    model = CrossEncoder(args.model, max_length=args.max_length)
    metrics = evaluator(model)
    print(json.dumps(metrics, indent=2))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from workbench.data import validate_data

    report = validate_data(
        args.file,
        args.eval_file,
        column_map=_column_map(args.column),
        loss=args.loss,
        tokenizer=args.model,
        max_length=args.max_length,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_markdown())
    return 0 if report.ok else 1


def _mine(args: argparse.Namespace) -> int:
    from workbench.data import load_beir, scifact_path
    from workbench.data.validation import guess_column_roles
    from workbench.job_files import write_rows
    from workbench.mining import mine_hard_negatives

    if args.corpus == "scifact":
        corpus = load_beir(scifact_path(), "train").corpus
    elif args.corpus:
        corpus = _read_corpus(args.corpus)
    else:
        corpus = None
    columns = _columns_of(args.file)
    column_map = guess_column_roles(columns, _column_map(args.column))
    result = mine_hard_negatives(
        args.file,
        corpus,
        retriever=args.retriever,
        num_negatives=args.num_negatives,
        range_min=args.range_min,
        range_max=args.range_max,
        max_score=args.max_score,
        min_score=args.min_score,
        absolute_margin=args.absolute_margin,
        relative_margin=args.relative_margin,
        sampling=args.sampling,
        random_share=args.random_share,
        output_format=args.output_format,
        false_negative_screen=args.screen if args.screen != "off" else None,
        column_map={c: r for c, r in column_map.items() if c != r},
        seed=args.seed,
    )
    write_rows(result.dataset, args.output)
    print(result.report.to_markdown())
    print(f"Wrote {len(result.dataset)} rows to {args.output}")
    return 0


def _read_corpus(path: str) -> list[str]:
    """Corpus texts from a file: a BEIR corpus.jsonl (title + text) or a table with `text`."""
    from workbench.data import read_table

    table, origin = read_table(path)
    if "text" not in table.columns:
        raise ValueError(f"{origin}: a corpus needs a 'text' column, got {list(table.columns)!r}")
    titles = table["title"].fillna("") if "title" in table.columns else None
    texts = table["text"].fillna("").astype(str)
    if titles is not None:
        texts = [f"{t}. {x}" if t else x for t, x in zip(titles, texts, strict=True)]
    return list(texts)


def _columns_of(path: str) -> list[str]:
    from workbench.data import read_table

    return list(read_table(path)[0].columns)


def _column_map(items: list[str] | None) -> dict[str, str]:
    """`--column question=query` flags as {source column: role}."""
    mapping = {}
    for item in items or []:
        source, sep, role = item.partition("=")
        if not sep or not source or not role:
            raise ValueError(f"--column expects SOURCE=ROLE (e.g. question=query), got {item!r}")
        mapping[source] = role
    return mapping


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.splitlines()[0])
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(dest="command")

    train = commands.add_parser("train", help="fine-tune and compare (defaults: bundled SciFact)")
    train.add_argument("--output-dir", default="runs/scifact", help="the run folder")
    train.add_argument("--config", help="JSON file of JobConfig fields; flags override it")
    train.add_argument(
        "--resume",
        action="store_true",
        help=f"continue from the run folder's last checkpoint (a stopped run exits {EXIT_STOPPED})",
    )
    for field in dataclasses.fields(JobConfig):
        _add_config_flag(train, field)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="rerank BM25 candidates of a BEIR folder")
    evaluate.add_argument("--model", required=True, help="embedded name, folder or hub id")
    evaluate.add_argument("--data", required=True, help="a BEIR folder")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--top-k", type=int, default=30, help="rerank depth")
    evaluate.add_argument("--max-length", type=int, default=None)
    evaluate.add_argument("--relevance-level", type=int, default=1, help="TREC DL uses 2")
    evaluate.set_defaults(handler=_evaluate)

    column_help = "map a column to a role, e.g. question=query (repeatable)"
    validate = commands.add_parser("validate", help="check a data file before training")
    validate.add_argument("file", help="CSV, TSV, JSONL, JSON or Parquet (may be compressed)")
    validate.add_argument("--eval-file", help="eval data: checked too, and compared for leakage")
    validate.add_argument("--column", action="append", help=column_help)
    validate.add_argument("--loss", help="the loss you plan to use, e.g. BinaryCrossEntropyLoss")
    validate.add_argument("--model", default="minilm-l6", help="tokenizer for the length check")
    validate.add_argument("--max-length", type=int, default=256)
    validate.add_argument("--json", action="store_true", help="print the report as JSON")
    # Exit status: 0 ready to train, 1 errors found.
    validate.set_defaults(handler=_validate)

    mine = commands.add_parser("mine", help="mine hard negatives for (query, positive) rows")
    mine.add_argument("file", help="(query, positive) rows or labelled (query, passage, label)")
    mine.add_argument("--output", required=True, help="where to write the rows (JSON lines)")
    mine.add_argument("--corpus", help="extra candidates: a corpus file or 'scifact'")
    mine.add_argument("--column", action="append", help=column_help)
    mine.add_argument("--retriever", default="bm25", help="bm25, minilm-l6, bge-small, a folder")
    mine.add_argument("--num-negatives", type=int, default=3)
    mine.add_argument("--range-min", type=int, default=0)
    mine.add_argument("--range-max", type=int, default=None)
    mine.add_argument("--max-score", type=float, default=None)
    mine.add_argument("--min-score", type=float, default=None)
    mine.add_argument("--absolute-margin", type=float, default=None)
    mine.add_argument("--relative-margin", type=float, default=None)
    mine.add_argument("--sampling", choices=("top", "random"), default="top")
    mine.add_argument("--random-share", type=float, default=0.0)
    mine.add_argument(
        "--output-format",
        default="triplet",
        choices=("triplet", "n-tuple", "n-tuple-scores", "labeled-pairs", "labeled-list"),
    )
    mine.add_argument("--screen", choices=("flag", "drop", "off"), default="flag")
    mine.add_argument("--seed", type=int, default=12)
    mine.set_defaults(handler=_mine)
    return parser


def _add_config_flag(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
    flag = "--" + field.name.replace("_", "-")
    kind = typing.get_type_hints(JobConfig)[field.name]
    if kind is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        return
    base = next((t for t in (int, float, str) if t == kind or t in typing.get_args(kind)), str)
    parser.add_argument(flag, type=base, default=None, help=f"default: {field.default!r}")


if __name__ == "__main__":
    sys.exit(main())
