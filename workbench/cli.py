"""The `workbench` command: `train` runs the main job, `evaluate` scores a model.

Run `workbench --help` (or `python -m workbench --help`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path

from workbench.job import JobConfig, RunStopped, format_table, run_job

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
    if args.command is None:
        args = parser.parse_args(["train", *(argv or [])])
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, ImportError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
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
    try:
        results = run_job(config, args.output_dir, resume=args.resume)
    except RunStopped as err:
        print(f"Stopped ({err}); continue with --resume. Run folder: {args.output_dir}")
        return EXIT_STOPPED
    print()
    print(format_table(results))
    print()
    print(Path(args.output_dir, "report.md").read_text(encoding="utf-8").splitlines()[-1])
    print(f"Run folder: {args.output_dir}")
    return 0


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
