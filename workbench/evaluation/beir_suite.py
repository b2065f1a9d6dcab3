"""Retrieve-then-rerank over BEIR sets, in the spirit of NanoBEIR: BM25 (or a given run) finds
each query's top k, a model reranks them, and nDCG@10, MRR@10 and MAP are reported per set and
as the mean over sets. The default suite is the bundled SciFact sample.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.data import (
    BeirData,
    DataValidationError,
    load_beir,
    load_pairs,
    load_run,
    scifact_path,
)
from workbench.evaluation.reranking import RerankingEvaluator, build_samples
from workbench.retrieval import BM25Retriever, sort_run

logger = logging.getLogger(__name__)

# Metrics averaged over the sets, for the reranked and the first-stage order.
SUITE_METRICS = ("ndcg@10", "mrr@10", "map")


@dataclass
class BeirSet:
    """One set of a suite: corpus, queries, judgments and, optionally, a first-stage run.

    Attributes:
        name: Short name used in metric keys, e.g. `scifact`.
        data: Corpus, the judged queries and their judgments.
        relevance_level: Minimum grade counted relevant by MAP, MRR and recall (TREC DL: 2).
        run: First-stage results, query id -> [(doc id, score)]. When None, BM25 over
            `data.corpus` retrieves them the first time they are needed and they are kept here,
            so every evaluator built on this set reuses one retrieval.

    Example:
        >>> dl19 = BeirSet.from_folder("data/trec-dl-2019", relevance_level=2,
        ...                            run_file="data/trec-dl-2019/bm25_top100.tsv")
    """

    name: str
    data: BeirData
    relevance_level: int = 1
    run: dict[str, list[tuple[str, float]]] | None = None
    _bm25_depth: int = field(default=0, init=False, repr=False)

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        *,
        split: str = "test",
        name: str | None = None,
        relevance_level: int = 1,
        run_file: str | Path | None = None,
        max_queries: int | None = None,
    ) -> BeirSet:
        """Read a BEIR folder (`corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`).

        Args:
            folder: The BEIR folder.
            split: The qrels file to use.
            name: Metric name of the set; defaults to the folder's name.
            relevance_level: See the class attributes.
            run_file: A first-stage run to rerank instead of BM25 (see `load_run`).
            max_queries: Keep only the first queries, by sorted id, that have a relevant
                judgment (a quick suite for evaluation during training).
        """
        data = load_beir(folder, split)
        run = load_run(run_file) if run_file is not None else None
        beir_set = cls(name or Path(folder).name, data, relevance_level, run)
        return beir_set.head(max_queries) if max_queries else beir_set

    @classmethod
    def scifact(cls, *, split: str = "test", max_queries: int | None = None) -> BeirSet:
        """The bundled SciFact sample (CC BY-NC 2.0, non-commercial; see its LICENSE)."""
        return cls.from_folder(scifact_path(), split=split, name="scifact", max_queries=max_queries)

    @classmethod
    def from_pairs(
        cls,
        name: str,
        source,
        *,
        column_map: Mapping[str, str] | None = None,
        max_queries: int | None = None,
    ) -> BeirSet:
        """Build a set from labelled (query, passage, label) pairs, e.g. WikiQA.

        Every distinct passage joins one corpus that BM25 searches for every query; labels
        become graded judgments (pairs not listed count as 0). Ids are assigned in order of
        first appearance: `q0, q1, ...` for queries, `d0, d1, ...` for passages.

        Args:
            name: Metric name of the set.
            source: Anything `load_pairs` reads.
            column_map: Renames columns to `query`, `passage`, `label`.
            max_queries: See `from_folder`.

        Raises:
            DataValidationError: If a label is not a whole number 0 or more.
        """
        pairs = load_pairs(source, column_map=column_map, label_range=None)
        query_ids: dict[str, str] = {}
        doc_ids: dict[str, str] = {}
        qrels: dict[str, dict[str, int]] = {}
        rows = zip(pairs["query"], pairs["passage"], pairs["label"], strict=True)
        for row, (query, passage, label) in enumerate(rows, start=1):
            if label != int(label) or label < 0:
                raise DataValidationError(
                    f"{name}, row {row}, column 'label': expected a whole grade 0 or more for "
                    f"judgments, got {label!r}"
                )
            query_id = query_ids.setdefault(query, f"q{len(query_ids)}")
            doc_id = doc_ids.setdefault(passage, f"d{len(doc_ids)}")
            judged = qrels.setdefault(query_id, {})
            judged[doc_id] = max(judged.get(doc_id, 0), int(label))
        queries = {query_id: query for query, query_id in query_ids.items()}
        corpus = {doc_id: passage for passage, doc_id in doc_ids.items()}
        beir_set = cls(name, BeirData(corpus, queries, qrels))
        return beir_set.head(max_queries) if max_queries else beir_set

    def head(self, max_queries: int) -> BeirSet:
        """A copy with the first `max_queries` queries (sorted ids) that have a relevant doc."""
        judged = [
            query_id
            for query_id in sorted(self.data.queries)
            if any(g >= self.relevance_level for g in self.data.qrels.get(query_id, {}).values())
        ]
        keep = judged[:max_queries]
        data = BeirData(
            self.data.corpus,
            {q: self.data.queries[q] for q in keep},
            {q: self.data.qrels[q] for q in keep},
        )
        run = {q: self.run[q] for q in keep if q in self.run} if self.run is not None else None
        return BeirSet(self.name, data, self.relevance_level, run)

    def first_stage(self, depth: int) -> dict[str, list[tuple[str, float]]]:
        """Each judged query's top `depth` documents, best first (trec_eval's order).

        The given run is used when there is one; otherwise BM25 retrieves once and the run is
        kept for later calls that need no more depth.
        """
        if self.run is None or 0 < self._bm25_depth < depth:
            retriever = BM25Retriever(self.data.corpus)
            hits = retriever.search(list(self.data.queries.values()), top_k=depth)
            self.run = dict(zip(self.data.queries, hits, strict=True))
            self._bm25_depth = depth
            logger.info("BM25 top-%d for %d queries of %s", depth, len(hits), self.name)
        missing = [q for q in self.data.queries if q not in self.run]
        if missing:
            logger.warning(
                "%s: %d judged queries have no first-stage results (e.g. %r); they are left out",
                self.name,
                len(missing),
                missing[:3],
            )
        return {
            query_id: sort_run(list(self.run[query_id]))[:depth]
            for query_id in self.data.queries
            if query_id in self.run
        }


class BeirSuiteEvaluator:
    """Rerank each set's first-stage top k with a model; report per-set and mean metrics.

    Metric keys are `<name>_<set>_<metric>` for every `RerankingEvaluator` metric of each set
    (`ndcg@10`, `mrr@10`, `map`, the first stage's `base_*`, `base_recall@<top_k>`, ...) and
    `<name>_mean_<metric>` for the unweighted mean over sets of `ndcg@10`, `mrr@10`, `map` and
    their `base_` versions. After a call, `summary` holds one row per set plus the mean and
    `per_query` one row per query (column `set` first); `per_query.to_csv(path)` saves it.

    Args:
        sets: `BeirSet`s, BEIR folder paths, or `"scifact"`; defaults to the bundled SciFact
            sample's test split.
        name: Metric prefix.
        top_k: First-stage documents reranked per query.
        batch_size: Pairs per forward pass.
        precision: Autocast precision for scoring.

    Raises:
        ValueError: If two sets share a name, a set is named `mean`, or `top_k` is below 1.

    Example:
        >>> suite = BeirSuiteEvaluator(["scifact", "data/fiqa"], top_k=30)
        >>> suite(model)["beir_mean_ndcg@10"]
        >>> suite.summary
    """

    def __init__(
        self,
        sets: Sequence[BeirSet | str | Path] | None = None,
        *,
        name: str = "beir",
        top_k: int = 30,
        batch_size: int = 32,
        precision: str = "fp32",
    ) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be 1 or more, but got {top_k!r}. Use e.g. 30.")
        self.sets = [_as_set(s) for s in sets] if sets else [BeirSet.scifact()]
        _check_set_names([s.name for s in self.sets])
        self.name = name
        self.top_k = top_k
        self.evaluators = {
            s.name: RerankingEvaluator(
                build_samples(
                    s.data.queries, s.data.qrels, s.data.corpus, s.first_stage(top_k), top_k=top_k
                ),
                name=s.name,
                relevance_level=s.relevance_level,
                recall_at=(top_k,),
                batch_size=batch_size,
                precision=precision,
            )
            for s in self.sets
        }
        self.summary: pd.DataFrame | None = None
        self.per_query: pd.DataFrame | None = None

    @property
    def primary_metric(self) -> str:
        """The metric key used for model selection: mean nDCG@10 over the sets."""
        return self._key("mean_ndcg@10")

    @property
    def num_pairs(self) -> int:
        """Pairs scored by one call, all sets together."""
        return sum(e.num_pairs for e in self.evaluators.values())

    def __call__(self, model) -> dict[str, float]:
        """Score every set's candidates with `model` and return the metrics."""
        return self.compute(self.score(model))

    def score(self, model) -> dict[str, list[np.ndarray]]:
        """Raw model scores per set, then per query (see `RerankingEvaluator.score`)."""
        return {name: evaluator.score(model) for name, evaluator in self.evaluators.items()}

    def compute(self, scores: Mapping[str, Sequence[np.ndarray]]) -> dict[str, float]:
        """Metrics from precomputed scores, as returned by `score`; fills `summary` and
        `per_query`.

        Raises:
            ValueError: If the scores do not name exactly the suite's sets.
        """
        if set(scores) != set(self.evaluators):
            raise ValueError(
                f"`BeirSuiteEvaluator` expects scores for the sets {sorted(self.evaluators)!r}, "
                f"but got {sorted(scores)!r}. Pass the output of `score`."
            )
        metrics, rows, tables = {}, [], []
        for set_name, evaluator in self.evaluators.items():
            values = evaluator.compute(scores[set_name])
            metrics |= {self._key(key): value for key, value in values.items()}
            row = {m: values[f"{set_name}_{m}"] for m in _summary_columns(self.top_k)}
            rows.append({"set": set_name, "queries": len(evaluator.samples)} | row)
            tables.append(evaluator.per_query.assign(set=set_name))

        summary = pd.DataFrame(rows)
        mean = summary.drop(columns=["set", "queries"]).mean()
        for metric in (*SUITE_METRICS, *(f"base_{m}" for m in SUITE_METRICS)):
            metrics[self._key(f"mean_{metric}")] = float(mean[metric])
        mean_row = {"set": "mean", "queries": int(summary["queries"].sum())} | mean.to_dict()
        self.summary = pd.concat([summary, pd.DataFrame([mean_row])], ignore_index=True)
        per_query = pd.concat(tables, ignore_index=True)
        self.per_query = per_query[["set", *(c for c in per_query.columns if c != "set")]]
        logger.info(
            "%s mean nDCG@10 over %d sets: first stage %.4f -> reranked %.4f",
            self.name or "suite",
            len(self.sets),
            metrics[self._key("mean_base_ndcg@10")],
            metrics[self.primary_metric],
        )
        return metrics

    def _key(self, metric: str) -> str:
        return f"{self.name}_{metric}" if self.name else metric


def _summary_columns(top_k: int) -> list[str]:
    return [*SUITE_METRICS, *(f"base_{m}" for m in SUITE_METRICS), f"base_recall@{top_k}"]


def _as_set(item: BeirSet | str | Path) -> BeirSet:
    if isinstance(item, BeirSet):
        return item
    if item == "scifact":
        return BeirSet.scifact()
    if isinstance(item, str | Path):
        return BeirSet.from_folder(item)
    raise TypeError(
        f"`BeirSuiteEvaluator` expects sets as BeirSet objects or BEIR folder paths, but got a "
        f"{type(item).__name__}. Wrap in-memory data in `BeirSet(name, data)`."
    )


def _check_set_names(names: list[str]) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated or "mean" in names:
        raise ValueError(
            f"`BeirSuiteEvaluator` expects distinct set names other than 'mean', but got "
            f"{names!r}. Pass `name=` to `BeirSet.from_folder` to rename a set."
        )
