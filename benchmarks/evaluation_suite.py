"""The default evaluation suite for BM25, the embedded off-the-shelf reranker and a
SciFact-fine-tuned model: SciFact test in domain, TREC DL 2019 and WikiQA out of domain
(retrieve-then-rerank top 30), plus the paired test of the two rerankers on SciFact.

Run by hand (DL19 and WikiQA are read from the shared data folder, never shipped):
`python benchmarks/evaluation_suite.py [--finetuned RUN/final_model] [--quick]`.
Without `--finetuned` it first runs the main job (`workbench train`) into `--run-dir`; `--quick`
trains on 200 train queries and evaluates 100 queries per set (say so when you report it).
Prints a Markdown table and writes JSON next to the run folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from workbench import CrossEncoder
from workbench.evaluation import BeirSet, BeirSuiteEvaluator, compare_runs
from workbench.job import JobConfig, run_job

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
METRICS = ("ndcg@10", "mrr@10", "map")


def suite_sets(max_queries: int | None) -> list[BeirSet]:
    dl19_folder = SHARED / "trec-dl-2019-passage"
    dl19 = BeirSet.from_folder(
        dl19_folder, name="dl19", relevance_level=2, run_file=dl19_folder / "bm25_top100.tsv"
    )
    wikiqa = BeirSet.from_pairs("wikiqa", SHARED / "wikiqa" / "test.jsonl")
    sets = [BeirSet.scifact(max_queries=max_queries), dl19, wikiqa]
    return [s.head(max_queries) if max_queries else s for s in sets]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--finetuned", help="a fine-tuned model folder; default: train one")
    parser.add_argument("--baseline", default="ms-marco-minilm-l12")
    parser.add_argument("--run-dir", default="runs/suite")
    parser.add_argument("--top-k", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="200 train / 100 eval queries")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    started = time.time()
    if args.finetuned is None:
        config = JobConfig(
            max_train_queries=200 if args.quick else None,
            max_test_queries=2,  # the suite below evaluates SciFact test itself (2: a paired test)
            max_length=args.max_length,
        )
        run_job(config, args.run_dir)
        args.finetuned = str(Path(args.run_dir) / "final")
    trained_s = time.time() - started

    suite = BeirSuiteEvaluator(suite_sets(100 if args.quick else None), top_k=args.top_k)
    rows, per_query, seconds = {}, {}, {}
    for system, model_name in (("baseline", args.baseline), ("finetuned", args.finetuned)):
        start = time.time()
        metrics = suite(CrossEncoder(model_name, max_length=args.max_length))
        seconds[system] = round(time.time() - start, 1)
        rows[system] = metrics
        per_query[system] = suite.per_query.copy()
    names = [s.name for s in suite.sets] + ["mean"]
    table = {
        "bm25": {f"{n}_{m}": rows["baseline"][f"beir_{n}_base_{m}"] for n in names for m in METRICS}
    }
    for system, metrics in rows.items():
        table[system] = {f"{n}_{m}": metrics[f"beir_{n}_{m}"] for n in names for m in METRICS}

    scifact = {s: per_query[s][per_query[s]["set"] == "scifact"] for s in per_query}
    paired = compare_runs(scifact["baseline"], scifact["finetuned"], metric="ndcg@10")
    result = {
        "quick": args.quick,
        "finetuned": args.finetuned,
        "queries": dict(zip(suite.summary["set"], suite.summary["queries"], strict=True)),
        "table": table,
        "scifact_paired": {
            "mean_delta": paired.mean_delta,
            "ci": [paired.ci_low, paired.ci_high],
            "randomization_p": paired.randomization_p,
            "t_test_p": paired.t_test_p,
            "improved": paired.improved,
            "regressed": paired.regressed,
            "tied": paired.tied,
        },
        "seconds": {"training": round(trained_s, 1), **seconds},
    }
    out = Path(args.run_dir) / "evaluation_suite.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    print("| system | " + " | ".join(f"{n} nDCG@10" for n in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for system, values in table.items():
        cells = " | ".join(f"{values[f'{n}_ndcg@10']:.4f}" for n in names)
        print(f"| {system} | {cells} |")
    print()
    print(json.dumps(result["scifact_paired"]))
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
