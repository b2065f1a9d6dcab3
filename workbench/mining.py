"""Hard-negative mining for (query, positive) data with BM25 or dense retrieval, and its report.

Each query's candidates are ranked by the retriever (optionally rescored by a cross-encoder),
filtered by rank window, score bounds and margins to the positive, screened for false negatives,
and sampled. Scoring runs in chunks with a running top-k, so memory stays bounded.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import bm25s
import datasets
import numpy as np
import pandas as pd
import torch

from workbench.data.readers import DataValidationError, read_table
from workbench.embeddings import DenseEmbedder
from workbench.losses.base import detect_format
from workbench.retrieval import BM25Retriever

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("triplet", "n-tuple", "n-tuple-scores", "labeled-pairs", "labeled-list")
SAMPLINGS = ("top", "random")
# Filters in the order they run; a candidate is counted under the first one that removes it.
FILTERS = ("false_negative_screen", "absolute_margin", "relative_margin", "max_score", "min_score")
FLAG_KINDS = ("scored_above_positive", "near_duplicate", "other_query_positive")
_EXAMPLES = 5
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class FalseNegativeScreen:
    """Which negatives count as likely false negatives, and what to do with them.

    A candidate is flagged when it is a near-duplicate of one of the query's positives
    (word-set Jaccard at or above `duplicate_threshold`), when it is another query's positive
    (`other_positives`), or, with a rescorer, when the cross-encoder scores it at or above the
    query's lowest-scored positive.

    Attributes:
        action: `"flag"` reports flagged negatives and keeps them; `"drop"` removes flagged
            candidates before sampling, so others take their place.
        duplicate_threshold: Word-set Jaccard similarity that counts as a near-duplicate.
        other_positives: Flag candidates that are a positive of another query.
    """

    action: str = "flag"
    duplicate_threshold: float = 0.9
    other_positives: bool = True

    def __post_init__(self) -> None:
        if self.action not in ("flag", "drop"):
            raise ValueError(
                f"FalseNegativeScreen.action must be 'flag' or 'drop', got {self.action!r}"
            )
        if not 0 < self.duplicate_threshold <= 1:
            raise ValueError(
                f"duplicate_threshold must be in (0, 1], got {self.duplicate_threshold!r}"
            )


@dataclass
class MiningReport:
    """What mining did: counts in and out, why queries fell short, score distributions, flags.

    Attributes:
        retriever: `"bm25"` or the embedder's name.
        settings: The mining options used (after defaults).
        rows_in: Rows of the input data.
        pairs_used: Distinct (query, positive) pairs mined for.
        rows_skipped: Input rows not used, by reason.
        queries: Distinct queries.
        corpus_size: Distinct candidate texts (corpus and positives).
        rows_out: Rows of the output dataset.
        pairs_dropped: (query, positive) pairs without an output row (too few negatives for
            `n-tuple`, or none at all).
        negatives_per_query: Number of negatives -> number of queries.
        queries_short: Queries with fewer than `num_negatives` negatives.
        short_by_reason: Reason -> short queries (a query counts once per reason): a filter
            that removed candidates in its window, or `window` when none did and the window
            simply held too few candidates.
        removed_by_filter: Filter -> candidates it removed (each counted once, by the first
            filter in `FILTERS` order that removed it).
        positive_scores: Statistics of the (query, positive) scores.
        negative_scores: Statistics of the chosen negatives' scores.
        margins: Statistics of lowest positive score minus negative score, per hard negative.
        histogram: Bin edges and positive and negative counts on shared bins.
        false_negative_flags: Kind -> flagged negatives (flag) or dropped candidates (drop).
        flag_examples: A few flagged negatives with their query, positive and scores.
        positives_in_window: With `include_positives`, positives ranked inside the window.
        embeddings: Texts embedded and texts read from the cache (dense retrieval only).
        seconds: Wall time of each stage.
    """

    retriever: str
    settings: dict
    rows_in: int = 0
    pairs_used: int = 0
    rows_skipped: dict = field(default_factory=dict)
    queries: int = 0
    corpus_size: int = 0
    rows_out: int = 0
    pairs_dropped: int = 0
    negatives_per_query: dict = field(default_factory=dict)
    queries_short: int = 0
    short_by_reason: dict = field(default_factory=dict)
    removed_by_filter: dict = field(default_factory=dict)
    positive_scores: dict = field(default_factory=dict)
    negative_scores: dict = field(default_factory=dict)
    margins: dict = field(default_factory=dict)
    histogram: dict = field(default_factory=dict)
    false_negative_flags: dict = field(default_factory=dict)
    flag_examples: list = field(default_factory=list)
    positives_in_window: int | None = None
    embeddings: dict | None = None
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready copy."""
        return dataclasses.asdict(self)

    def to_markdown(self) -> str:
        """A readable report: summary, shortfalls, filters, scores, flags."""
        lines = [f"## Hard-negative mining ({self.retriever})", "", "| | |", "|---|---|"]
        lines += [
            f"| rows in | {self.rows_in:,} |",
            f"| (query, positive) pairs used | {self.pairs_used:,} |",
            *[f"| rows skipped: {k} | {v:,} |" for k, v in self.rows_skipped.items()],
            f"| queries | {self.queries:,} |",
            f"| candidate texts | {self.corpus_size:,} |",
            f"| rows out | {self.rows_out:,} |",
            f"| pairs without an output row | {self.pairs_dropped:,} |",
            f"| queries short of negatives | {self.queries_short:,} |",
        ]
        if self.positives_in_window is not None:
            lines.append(f"| positives inside the window | {self.positives_in_window:,} |")
        if self.embeddings:
            lines.append(
                f"| texts embedded / from cache | {self.embeddings['embedded']:,} / "
                f"{self.embeddings['from_cache']:,} |"
            )
        lines += ["", "Negatives per query: " + _inline(self.negatives_per_query)]
        lines += ["", "Why queries fell short: " + _inline(self.short_by_reason)]
        lines += ["", "Candidates removed by filter: " + _inline(self.removed_by_filter)]
        lines += ["", *_stats_table(self), ""]
        lines.append("False-negative flags: " + _inline(self.false_negative_flags))
        for example in self.flag_examples:
            lines.append(
                f"- {', '.join(example['kinds'])}: query {_short(example['query'])!r}; "
                f"negative {_short(example['negative'])!r} ({example['negative_score']:.4f}) vs "
                f"positive {_short(example['positive'])!r} ({example['positive_score']:.4f})"
            )
        return "\n".join(lines) + "\n"


@dataclass
class MiningResult:
    """The mined dataset and its report."""

    dataset: datasets.Dataset
    report: MiningReport


def mine_hard_negatives(
    dataset,
    corpus=None,
    *,
    retriever: str | DenseEmbedder = "bm25",
    num_negatives: int = 3,
    range_min: int = 0,
    range_max: int | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    sampling: str = "top",
    random_share: float = 0.0,
    include_positives: bool = False,
    output_format: str = "triplet",
    rescorer=None,
    false_negative_screen: FalseNegativeScreen | str | None = "flag",
    column_map: Mapping[str, str] | None = None,
    cache_dir=None,
    batch_size: int = 32,
    chunk_size: int = 1024,
    seed: int = 12,
) -> MiningResult:
    """Find hard negatives for (query, positive) data.

    Candidates of a query are the corpus texts ranked by the retriever, without the query's
    positives (unless `include_positives`) and without the query's own text. Steps per query:

    1. the window: ranks `range_min` to `range_max` (0-based, end excluded) of that ranking;
       BM25 candidates sharing no term with the query (score 0) are not ranked;
    2. with a `rescorer`, the window, the positives and the random negatives get
       cross-encoder scores, and the window is re-sorted by them;
    3. filters, in `FILTERS` order: the false-negative screen (with `action="drop"`), the
       absolute and relative margins to the query's lowest positive score, `max_score` and
       `min_score`;
    4. sampling: the best survivors (`top`) or a seeded random choice of them (`random`),
       kept in score order;
    5. `round(num_negatives * random_share)` of the negatives are drawn at random from the
       corpus outside the window's ranks instead (easy negatives; no filters apply to them).

    Args:
        dataset: (query, positive) rows: a path, DataFrame or Dataset with columns `query`
            and `positive`, or labelled pairs (`query`, `passage`, `label`) whose rows with
            label > 0 are the positives. A query may have several positives.
        corpus: Extra candidate texts: a list, an id -> text dict, or None for the positives
            only. Positives are always candidates; duplicates count once.
        retriever: `"bm25"`, an embedder name (`minilm-l6`, `bge-small`), a folder or hub id
            of an encoder, or a `DenseEmbedder`.
        num_negatives: Negatives per query.
        range_min: First rank of the window.
        range_max: End of the window; defaults to `range_min + num_negatives`, or
            `range_min + 10 * num_negatives` when a filter or random sampling needs room.
        max_score: Drop candidates scoring above this.
        min_score: Drop candidates scoring below this.
        absolute_margin: Keep a candidate only if it scores at least this far below the
            query's lowest positive.
        relative_margin: Keep a candidate only if it scores at most
            `positive - abs(positive) * relative_margin` (0.05: 5% below).
        sampling: `"top"` or `"random"` within the filtered window.
        random_share: Share of `num_negatives` drawn at random from the rest of the corpus.
        include_positives: Keep positives in the ranked window, labelled 1, to build
            evaluation lists; needs `labeled-list` or `labeled-pairs`.
        output_format: `"triplet"` (`query`, `positive`, `negative`); `"n-tuple"`
            (`query`, `positive`, `negative_1..n`; queries short of negatives are left out and
            counted); `"n-tuple-scores"` (the same plus `labels`: the positive's and each
            negative's score, which `MarginMSELoss` reads as teacher scores);
            `"labeled-pairs"` (`query`, `passage`, `label` 1/0); `"labeled-list"` (`query`,
            `documents`, `labels`: one list per query, positives first).
        rescorer: A `CrossEncoder` that rescores candidates; its scores drive filters and order.
        false_negative_screen: `"flag"`, `"drop"`, a `FalseNegativeScreen`, or None for off.
        column_map: Renames input columns to roles, e.g. `{"question": "query"}`.
        cache_dir: Embedding cache folder; default under `embedded.cache_dir()`; False for none.
        batch_size: Texts per forward pass (embedder and rescorer).
        chunk_size: Queries per block, and corpus texts per block in dense scoring.
        seed: Seeds random sampling and random negatives.

    Returns:
        The mined dataset and a `MiningReport`.

    Raises:
        ValueError: On an inconsistent option (window too small for `num_negatives`, an
            unknown format or sampling, ...).
        DataValidationError: On missing columns, empty text or a non-numeric label.

    Example:
        >>> result = mine_hard_negatives(pairs, corpus, num_negatives=5, relative_margin=0.05)
        >>> print(result.report.to_markdown())
    """
    started = time.perf_counter()
    screen = _screen(false_negative_screen)
    data, rows_in, skipped = _read_pairs(dataset, column_map)
    pool = _Pool(data, corpus)
    options = _Options.build(
        num_negatives=num_negatives,
        range_min=range_min,
        range_max=range_max,
        max_score=max_score,
        min_score=min_score,
        absolute_margin=absolute_margin,
        relative_margin=relative_margin,
        sampling=sampling,
        random_share=random_share,
        include_positives=include_positives,
        output_format=output_format,
        screen=screen,
        max_positives=max(len(p) for p in pool.positives),
        chunk_size=chunk_size,
    )
    if rescorer is not None and not hasattr(rescorer, "predict"):
        raise TypeError(f"rescorer must be a workbench CrossEncoder, got {type(rescorer).__name__}")

    # Retrieval, rescoring, filtering and sampling, one block of queries at a time
    search = _searcher(retriever, pool, cache_dir=cache_dir, batch_size=batch_size, options=options)
    miner = _Miner(pool, search, options, screen, rescorer, batch_size, seed)
    for start in range(0, len(pool.queries), options.chunk_size):
        miner.mine_block(start, min(start + options.chunk_size, len(pool.queries)))
        logger.info("Mined %d / %d queries", miner.done, len(pool.queries))

    output, pairs_dropped = _build_output(pool, miner.results, options)
    report = _report(pool, miner, options, output, rows_in, skipped, pairs_dropped, search)
    report.seconds = {**miner.seconds, "total": round(time.perf_counter() - started, 2)}
    logger.info(
        "Mined %d rows for %d queries (%d short of %d negatives)",
        len(output),
        report.queries,
        report.queries_short,
        options.num_negatives,
    )
    return MiningResult(output, report)


@dataclass(frozen=True)
class _Options:
    num_negatives: int
    num_random: int
    range_min: int
    range_max: int
    max_score: float | None
    min_score: float | None
    absolute_margin: float | None
    relative_margin: float | None
    sampling: str
    include_positives: bool
    output_format: str
    chunk_size: int

    @property
    def num_hard(self) -> int:
        return self.num_negatives - self.num_random

    @classmethod
    def build(cls, *, screen, max_positives, **values) -> _Options:
        """Check options, fill defaults, and say which defaults were chosen."""
        n, fmt = values["num_negatives"], values["output_format"]
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"num_negatives must be an integer >= 1, got {n!r}")
        if values["sampling"] not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {values['sampling']!r}")
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
        if values["include_positives"] and fmt not in ("labeled-list", "labeled-pairs"):
            raise ValueError(
                f"include_positives=True builds ranked lists with labels, but output_format is "
                f"{fmt!r}. Use 'labeled-list' or 'labeled-pairs'."
            )
        share = values.pop("random_share")
        if not 0 <= share <= 1:
            raise ValueError(f"random_share must be in [0, 1], got {share!r}")
        if values["chunk_size"] < 1:
            raise ValueError(f"chunk_size must be >= 1, got {values['chunk_size']!r}")
        num_random = round(n * share)

        lo, hi = values["range_min"], values["range_max"]
        if hi is None:
            needs_room = values["sampling"] == "random"
            needs_room |= screen is not None and screen.action == "drop"
            needs_room |= any(values[k] is not None for k in FILTERS[1:])
            hi = lo + max(1, (n - num_random) * (10 if needs_room else 1))
            hi += max_positives if values["include_positives"] else 0
            logger.info("range_max not set: using %d", hi)
        if lo < 0 or hi <= lo:
            raise ValueError(f"Need 0 <= range_min < range_max, got {lo!r} and {hi!r}")
        if n - num_random > hi - lo:
            raise ValueError(
                f"Cannot mine {n - num_random} hard negatives from a window of {hi - lo} ranks "
                f"(range_min={lo}, range_max={hi}). Raise range_max or lower num_negatives."
            )
        return cls(num_random=num_random, **(values | {"range_max": hi}))


class _Pool:
    """Distinct queries, distinct candidate texts, and who is whose positive."""

    def __init__(self, data: pd.DataFrame, corpus) -> None:
        self.texts: list[str] = []
        self.index: dict[str, int] = {}
        self.corpus_empty = 0
        for text in _corpus_texts(corpus):
            if not isinstance(text, str) or not text.strip():
                self.corpus_empty += 1
                continue
            self._add(text)

        self.queries: list[str] = []
        self.positives: list[list[int]] = []
        query_row: dict[str, int] = {}
        for query, positive in zip(data["query"], data["positive"], strict=True):
            row = query_row.setdefault(query, len(self.queries))
            if row == len(self.queries):
                self.queries.append(query)
                self.positives.append([])
            self.positives[row].append(self._add(positive))

        # Who is whose positive, for the screen; the query's own text is never its candidate.
        self.owners: dict[int, set[int]] = {}
        for row, docs in enumerate(self.positives):
            for doc in docs:
                self.owners.setdefault(doc, set()).add(row)
        self.self_index = [self.index.get(q, -1) for q in self.queries]
        self.pairs = sum(len(p) for p in self.positives)

    def _add(self, text: str) -> int:
        if text not in self.index:
            self.index[text] = len(self.texts)
            self.texts.append(text)
        return self.index[text]


@dataclass
class _QueryResult:
    """One query's outcome: its positives, chosen negatives and what was filtered."""

    positive_scores: list[float]
    negatives: list[int] = field(default_factory=list)
    negative_scores: list[float] = field(default_factory=list)
    hard: int = 0
    ranked: list[tuple[int, float, int]] | None = None  # include_positives: (doc, score, label)
    removed: Counter = field(default_factory=Counter)
    flags: list[tuple[int, float, list[str]]] = field(default_factory=list)


class _Miner:
    """Runs the per-query steps over blocks of queries and collects results and timings."""

    def __init__(self, pool, search, options, screen, rescorer, batch_size, seed) -> None:
        self.pool = pool
        self.search = search
        self.options = options
        self.screen = screen
        self.rescorer = rescorer
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.results: list[_QueryResult] = []
        self.seconds = Counter({"search": 0.0, "rescoring": 0.0})
        self._words: dict[int, frozenset] = {}

    @property
    def done(self) -> int:
        return len(self.results)

    def mine_block(self, start: int, stop: int) -> None:
        """Mine queries `start..stop`: search, rescore, then filter and sample each."""
        opts, pool = self.options, self.pool
        tic = time.perf_counter()
        k = opts.range_max + 1 + (0 if opts.include_positives else max(map(len, pool.positives)))
        top_scores, top_docs = self.search.top(start, stop, k)  # (block, k) each

        # Ranked window, positive scores and random negatives of each query
        blocks = []
        for row in range(start, stop):
            window = self._window(row, top_docs[row - start], top_scores[row - start])
            positives = pool.positives[row]
            randoms = self._random_negatives(row, top_docs[row - start])
            scores = self.search.pair_scores(row, np.array(positives + randoms, dtype=np.int64))
            split = len(positives)
            blocks.append([row, window, scores[:split], randoms, scores[split:]])
        self.seconds["search"] += time.perf_counter() - tic

        if self.rescorer is not None:
            self._rescore(blocks)
        for row, window, positive_scores, randoms, random_scores in blocks:
            result = self._select(row, window, positive_scores)
            result.negatives += randoms
            result.negative_scores += [float(s) for s in random_scores]
            if self.screen and self.screen.action == "flag":
                reference = min(positive_scores)
                for doc, score in zip(result.negatives, result.negative_scores, strict=True):
                    self._flag(row, doc, score, reference, result)
            self.results.append(result)

    def _window(self, row: int, docs: np.ndarray, scores: np.ndarray) -> list[tuple[int, float]]:
        positives = set(self.pool.positives[row])
        ranked = [
            (int(d), float(s))
            for d, s in zip(docs, scores, strict=True)
            if d >= 0
            and d != self.pool.self_index[row]
            and (self.options.include_positives or d not in positives)
        ]
        return ranked[self.options.range_min : self.options.range_max]

    def _random_negatives(self, row: int, top_docs: np.ndarray) -> list[int]:
        """Uniform draws from the corpus outside the query's ranked window and positives."""
        wanted = self.options.num_random
        if not wanted:
            return []
        excluded = set(self.pool.positives[row]) | {self.pool.self_index[row]}
        excluded |= {int(d) for d in top_docs[: self.options.range_max + len(excluded)]}
        excluded.discard(-1)
        size = len(self.pool.texts)
        if size - len(excluded) <= 4 * wanted:
            choices = [d for d in range(size) if d not in excluded]
            picks = self.rng.permutation(len(choices))[:wanted]
            return [choices[i] for i in picks]
        found: list[int] = []
        while len(found) < wanted:
            doc = int(self.rng.integers(size))
            if doc not in excluded and doc not in found:
                found.append(doc)
        return found

    def _rescore(self, blocks: list) -> None:
        """Replace retriever scores by cross-encoder scores; re-sort each window by them."""
        tic = time.perf_counter()
        pairs = []
        for row, window, _, randoms, _ in blocks:
            docs = [d for d, _ in window] + self.pool.positives[row] + randoms
            pairs += [(self.pool.queries[row], self.pool.texts[d]) for d in docs]
        scores = iter(self.rescorer.predict(pairs, batch_size=self.batch_size).tolist())

        for block in blocks:
            row, window, _, randoms, _ = block
            rescored = [(doc, next(scores)) for doc, _ in window]
            # Stable sort: equal scores keep the retriever's order.
            block[1] = sorted(rescored, key=lambda item: -item[1])
            block[2] = np.array([next(scores) for _ in self.pool.positives[row]])
            block[4] = np.array([next(scores) for _ in randoms])
        self.seconds["rescoring"] += time.perf_counter() - tic

    def _select(self, row: int, window: list, positive_scores: np.ndarray) -> _QueryResult:
        """Filter the window and sample the hard negatives of one query."""
        opts = self.options
        result = _QueryResult(positive_scores=[float(s) for s in positive_scores])
        reference = float(np.min(positive_scores))
        positives = set(self.pool.positives[row])
        survivors, ranked = [], []
        for doc, score in window:
            if opts.include_positives and doc in positives:
                ranked.append((doc, score, 1))
                continue
            reason = self._rejected(row, doc, score, reference, result)
            if reason:
                result.removed[reason] += 1
                continue
            survivors.append((doc, score))

        if opts.sampling == "random" and len(survivors) > opts.num_hard:
            keep = np.sort(self.rng.choice(len(survivors), opts.num_hard, replace=False))
            survivors = [survivors[i] for i in keep]
        chosen = survivors[: opts.num_hard]
        result.negatives = [d for d, _ in chosen]
        result.negative_scores = [s for _, s in chosen]
        result.hard = len(chosen)
        if opts.include_positives:
            ranked += [(d, s, 0) for d, s in chosen]
            result.ranked = sorted(ranked, key=lambda item: -item[1])
        return result

    def _rejected(self, row, doc, score, reference, result) -> str | None:
        opts = self.options
        if self.screen and self.screen.action == "drop":
            if self._flag(row, doc, score, reference, result):
                return "false_negative_screen"
        if opts.absolute_margin is not None and score > reference - opts.absolute_margin:
            return "absolute_margin"
        if opts.relative_margin is not None:
            if score > reference - abs(reference) * opts.relative_margin:
                return "relative_margin"
        if opts.max_score is not None and score > opts.max_score:
            return "max_score"
        if opts.min_score is not None and score < opts.min_score:
            return "min_score"
        return None

    def _flag(self, row, doc, score, reference, result) -> bool:
        """Record and return whether `doc` looks like a false negative for query `row`."""
        kinds = []
        if self.rescorer is not None and score >= reference:
            kinds.append("scored_above_positive")
        words = self._word_set(doc)
        for positive in self.pool.positives[row]:
            if _jaccard(words, self._word_set(positive)) >= self.screen.duplicate_threshold:
                kinds.append("near_duplicate")
                break
        if self.screen.other_positives and self.pool.owners.get(doc, set()) - {row}:
            kinds.append("other_query_positive")
        if kinds:
            result.flags.append((doc, score, kinds))
        return bool(kinds)

    def _word_set(self, doc: int) -> frozenset:
        if doc not in self._words:
            self._words[doc] = frozenset(_WORD.findall(self.pool.texts[doc].lower()))
        return self._words[doc]


class _BM25Search:
    """BM25 scores of one query against the whole corpus at a time (bm25s, sparse)."""

    name = "bm25"

    def __init__(self, pool: _Pool) -> None:
        self.retriever = BM25Retriever({str(i): t for i, t in enumerate(pool.texts)})
        self.tokens = bm25s.tokenize(
            pool.queries, stopwords=self.retriever.stopwords, return_ids=False, show_progress=False
        )
        self.size = len(pool.texts)
        self._last: tuple[int, np.ndarray] | None = None
        self.embeddings = None

    def top(self, start: int, stop: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.size)
        scores = np.full((stop - start, k), -np.inf, dtype=np.float32)
        docs = np.full((stop - start, k), -1, dtype=np.int64)
        for row in range(start, stop):
            vector = self._scores(row)
            best = np.argpartition(-vector, k - 1)[:k] if k < self.size else np.arange(k)
            # Score descending, ties by corpus position; unmatched documents (0) are not ranked.
            best = best[np.lexsort((best, -vector[best]))]
            best = best[vector[best] > 0]
            scores[row - start, : len(best)] = vector[best]
            docs[row - start, : len(best)] = best
        return scores, docs

    def pair_scores(self, row: int, docs: np.ndarray) -> np.ndarray:
        return self._scores(row)[docs]

    def _scores(self, row: int) -> np.ndarray:
        if self._last is None or self._last[0] != row:
            tokens = self.tokens[row]
            vector = (
                self.retriever.index.get_scores(tokens).astype(np.float32)
                if tokens
                else np.zeros(self.size, dtype=np.float32)
            )
            self._last = (row, vector)
        return self._last[1]


class _DenseSearch:
    """Cosine similarity of unit-length embeddings; query and corpus blocks, running top-k."""

    def __init__(self, embedder: DenseEmbedder, pool: _Pool, chunk_size: int) -> None:
        self.name = embedder.name_or_path
        self.embedder = embedder
        before = (embedder.texts_embedded, embedder.texts_from_cache)
        self.corpus = torch.from_numpy(embedder.encode(pool.texts))  # (corpus, dim)
        self.queries = torch.from_numpy(embedder.encode(pool.queries, is_query=True))
        self.embeddings = {
            "embedded": embedder.texts_embedded - before[0],
            "from_cache": embedder.texts_from_cache - before[1],
        }
        self.chunk_size = chunk_size

    def top(self, start: int, stop: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = self.queries[start:stop]
        k = min(k, len(self.corpus))
        best_scores = torch.empty((len(queries), 0))
        best_docs = torch.empty((len(queries), 0), dtype=torch.long)
        for first in range(0, len(self.corpus), self.chunk_size):
            block = queries @ self.corpus[first : first + self.chunk_size].T  # (queries, chunk)
            ids = torch.arange(first, first + block.shape[1]).expand(len(queries), -1)
            merged = torch.cat([best_scores, block], dim=1)
            best_scores, where = torch.topk(merged, min(k, merged.shape[1]), dim=1)
            best_docs = torch.gather(torch.cat([best_docs, ids], dim=1), 1, where)

        # Score descending, ties by corpus position, so runs are reproducible.
        scores, docs = best_scores.numpy(), best_docs.numpy()
        order = np.lexsort((docs, -scores), axis=1)
        return np.take_along_axis(scores, order, 1), np.take_along_axis(docs, order, 1)

    def pair_scores(self, row: int, docs: np.ndarray) -> np.ndarray:
        if not len(docs):
            return np.empty(0, dtype=np.float32)
        return (self.corpus[docs] @ self.queries[row]).numpy()


def _searcher(retriever, pool: _Pool, *, cache_dir, batch_size: int, options: _Options):
    tic = time.perf_counter()
    if isinstance(retriever, DenseEmbedder):
        search = _DenseSearch(retriever, pool, options.chunk_size)
    elif not isinstance(retriever, str):
        raise TypeError(
            f"retriever must be 'bm25', an embedder name or path, or a DenseEmbedder; got "
            f"{type(retriever).__name__}"
        )
    elif retriever == "bm25":
        search = _BM25Search(pool)
    else:
        embedder = DenseEmbedder(retriever, batch_size=batch_size, cache_dir=cache_dir)
        search = _DenseSearch(embedder, pool, options.chunk_size)
    search.index_seconds = round(time.perf_counter() - tic, 2)
    return search


def _screen(value) -> FalseNegativeScreen | None:
    if value is None or value is False:
        return None
    if isinstance(value, FalseNegativeScreen):
        return value
    if value in ("flag", "drop"):
        return FalseNegativeScreen(action=value)
    raise ValueError(
        f"false_negative_screen must be 'flag', 'drop', a FalseNegativeScreen or None; got "
        f"{value!r}"
    )


def _read_pairs(dataset, column_map) -> tuple[pd.DataFrame, int, dict[str, int]]:
    """(query, positive) rows from tuples or labelled pairs, with skipped rows counted."""
    table, origin = read_table(dataset, column_map=column_map)
    data_format = detect_format([str(c) for c in table.columns])
    skipped: dict[str, int] = {}
    if data_format == "pairs":
        labels = pd.to_numeric(table["label"], errors="coerce")
        for row, (raw, value) in enumerate(zip(table["label"], labels, strict=True), start=1):
            if pd.isna(value):
                raise DataValidationError(
                    f"{origin}, row {row}, column 'label': expected a number, got {raw!r}"
                )
        skipped["label <= 0"] = int((labels <= 0).sum())
        table = table[labels > 0].rename(columns={"passage": "positive"})
    elif data_format != "tuples":
        raise DataValidationError(
            f"{origin}: mining needs columns query and positive, or query, passage and label; "
            f"got {list(table.columns)!r}. Pass column_map={{'your_column': 'query'}} to rename."
        )

    rows_in = len(table) + sum(skipped.values())
    for column in ("query", "positive"):
        for row, value in zip(table.index, table[column], strict=True):
            if not isinstance(value, str) or not value.strip():
                raise DataValidationError(
                    f"{origin}, row {row + 1}, column {column!r}: expected non-empty text, "
                    f"got {value!r}"
                )
    pairs = table[["query", "positive"]]
    duplicated = pairs.duplicated()
    skipped["duplicate (query, positive)"] = int(duplicated.sum())
    if pairs.empty or duplicated.all():
        raise DataValidationError(f"{origin}: no (query, positive) pairs to mine for")
    return pairs[~duplicated], rows_in, skipped


def _corpus_texts(corpus) -> list:
    if corpus is None:
        return []
    if isinstance(corpus, str):
        raise TypeError("corpus must be a list of texts or an id -> text dict, not one string")
    if isinstance(corpus, Mapping):
        return list(corpus.values())
    return list(corpus)


def _build_output(pool: _Pool, results: list[_QueryResult], options: _Options):
    """The mined rows in the chosen format, and how many (query, positive) pairs got none."""
    fmt, texts = options.output_format, pool.texts
    rows: dict[str, list] = {}
    dropped = 0

    def add(**values):
        for key, value in values.items():
            rows.setdefault(key, []).append(value)

    for row, result in enumerate(results):
        query = pool.queries[row]
        negatives = [texts[d] for d in result.negatives]
        positives = list(zip(pool.positives[row], result.positive_scores, strict=True))
        if fmt == "labeled-list":
            if result.ranked is not None:
                listed = [(texts[d], label) for d, _, label in result.ranked]
                listed += [(texts[d], 0) for d in result.negatives[result.hard :]]
            else:
                listed = [(texts[d], 1) for d, _ in positives] + [(t, 0) for t in negatives]
            add(query=query, documents=[t for t, _ in listed], labels=[y for _, y in listed])
        elif fmt == "labeled-pairs":
            if result.ranked is not None:
                listed = [(texts[d], label) for d, _, label in result.ranked]
                listed += [(texts[d], 0) for d in result.negatives[result.hard :]]
            else:
                listed = [(texts[d], 1) for d, _ in positives] + [(t, 0) for t in negatives]
            for text, label in listed:
                add(query=query, passage=text, label=float(label))
        for doc, score in positives:
            if fmt == "triplet":
                for negative in negatives:
                    add(query=query, positive=texts[doc], negative=negative)
                dropped += not negatives
            elif fmt in ("n-tuple", "n-tuple-scores"):
                if len(negatives) < options.num_negatives:
                    dropped += 1
                    continue
                columns = {f"negative_{i}": t for i, t in enumerate(negatives, start=1)}
                if fmt == "n-tuple-scores":
                    columns["labels"] = [score, *result.negative_scores]
                add(query=query, positive=texts[doc], **columns)
    return datasets.Dataset.from_dict(rows or _empty_columns(options)), dropped


def _empty_columns(options: _Options) -> dict[str, list]:
    fmt = options.output_format
    if fmt == "triplet":
        return {"query": [], "positive": [], "negative": []}
    if fmt == "labeled-pairs":
        return {"query": [], "passage": [], "label": []}
    if fmt == "labeled-list":
        return {"query": [], "documents": [], "labels": []}
    columns = {"query": [], "positive": []}
    columns |= {f"negative_{i}": [] for i in range(1, options.num_negatives + 1)}
    return columns | ({"labels": []} if fmt == "n-tuple-scores" else {})


def _report(pool, miner, options, output, rows_in, skipped, pairs_dropped, search) -> MiningReport:
    results = miner.results
    settings = {
        k: v for k, v in dataclasses.asdict(options).items() if k not in ("chunk_size",)
    } | {"false_negative_screen": dataclasses.asdict(miner.screen) if miner.screen else None}
    settings["rescorer"] = getattr(miner.rescorer, "name_or_path", None)
    report = MiningReport(retriever=search.name, settings=settings)
    report.rows_in = rows_in
    report.rows_skipped = {k: v for k, v in skipped.items() if v}
    if pool.corpus_empty:
        report.rows_skipped["empty corpus text"] = pool.corpus_empty
    report.pairs_used, report.queries = pool.pairs, len(pool.queries)
    report.corpus_size, report.rows_out = len(pool.texts), len(output)
    report.pairs_dropped = pairs_dropped

    # Shortfalls and filters
    counts = Counter(len(r.negatives) for r in results)
    report.negatives_per_query = {n: counts.get(n, 0) for n in range(options.num_negatives + 1)}
    reasons = Counter()
    for result in results:
        if len(result.negatives) < options.num_negatives:
            reasons.update([f for f in FILTERS if result.removed[f]] or ["window"])
    report.queries_short = sum(len(r.negatives) < options.num_negatives for r in results)
    report.short_by_reason = dict(reasons)
    removed = Counter()
    for result in results:
        removed.update(result.removed)
    report.removed_by_filter = {f: removed[f] for f in FILTERS if removed[f]}

    # Scores
    positive = np.array([s for r in results for s in r.positive_scores], dtype=np.float64)
    negative = np.array([s for r in results for s in r.negative_scores], dtype=np.float64)
    margins = [min(r.positive_scores) - s for r in results for s in r.negative_scores[: r.hard]]
    report.positive_scores, report.negative_scores = _stats(positive), _stats(negative)
    report.margins = _stats(np.array(margins, dtype=np.float64))
    report.histogram = _histogram(positive, negative)

    # False negatives
    flags = Counter(kind for r in results for _, _, kinds in r.flags for kind in kinds)
    report.false_negative_flags = {k: flags[k] for k in FLAG_KINDS if flags[k]}
    report.flag_examples = _flag_examples(pool, results)
    if options.include_positives:
        report.positives_in_window = sum(label for r in results for _, _, label in (r.ranked or []))
    report.embeddings = getattr(search, "embeddings", None)
    miner.seconds["index"] = search.index_seconds
    miner.seconds = {k: round(v, 2) for k, v in miner.seconds.items()}
    return report


def _flag_examples(pool: _Pool, results: list[_QueryResult]) -> list[dict]:
    examples = []
    for row, result in enumerate(results):
        for doc, score, kinds in result.flags:
            positive_score, positive = min(
                zip(result.positive_scores, pool.positives[row], strict=True)
            )
            examples.append(
                {
                    "query": pool.queries[row],
                    "positive": pool.texts[positive],
                    "negative": pool.texts[doc],
                    "kinds": kinds,
                    "negative_score": float(score),
                    "positive_score": float(positive_score),
                }
            )
            if len(examples) == _EXAMPLES:
                return examples
    return examples


def _stats(values: np.ndarray) -> dict:
    if not len(values):
        return {"count": 0}
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    return {
        "count": int(len(values)),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "min": float(values.min()),
        "25%": float(q25),
        "median": float(median),
        "75%": float(q75),
        "max": float(values.max()),
    }


def _histogram(positive: np.ndarray, negative: np.ndarray, bins: int = 10) -> dict:
    both = np.concatenate([positive, negative])
    if not len(both):
        return {}
    edges = np.histogram_bin_edges(both, bins=bins)
    return {
        "edges": [float(e) for e in edges],
        "positive": np.histogram(positive, edges)[0].tolist(),
        "negative": np.histogram(negative, edges)[0].tolist(),
    }


def _jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _stats_table(report: MiningReport) -> list[str]:
    keys = ("count", "mean", "std", "min", "25%", "median", "75%", "max")
    lines = ["| score | positive | negative | positive - negative |", "|---|---|---|---|"]
    for key in keys:
        cells = []
        for stats in (report.positive_scores, report.negative_scores, report.margins):
            value = stats.get(key)
            if value is None:
                cells.append("")
            else:
                cells.append(f"{value:,}" if key == "count" else f"{value:.4f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def _inline(counts: dict) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in counts.items()) or "none"


def _short(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
