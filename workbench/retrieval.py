"""First-stage lexical retrieval with BM25 (bm25s): candidates and hard negatives."""

from __future__ import annotations

import logging

import bm25s
import numpy as np

logger = logging.getLogger(__name__)


class BM25Retriever:
    """Lucene-style BM25 over an id -> text corpus.

    Defaults follow the figures in the SciFact data README: k1 1.5, b 0.75, English stopwords,
    no stemming.

    Args:
        corpus: Document id -> text.
        k1: Term-frequency saturation.
        b: Length normalisation.
        stopwords: A bm25s stopword language, or None.

    Example:
        >>> bm25 = BM25Retriever({"d1": "BM25 ranks documents", "d2": "pasta recipes"})
        >>> bm25.search(["how are documents ranked"], top_k=1)
    """

    def __init__(
        self,
        corpus: dict[str, str],
        *,
        k1: float = 1.5,
        b: float = 0.75,
        stopwords: str | None = "english",
    ) -> None:
        if not corpus:
            raise ValueError("BM25Retriever needs a non-empty corpus")
        self.doc_ids = list(corpus)
        self.stopwords = stopwords
        tokens = bm25s.tokenize(list(corpus.values()), stopwords=stopwords, show_progress=False)
        self.index = bm25s.BM25(k1=k1, b=b)
        self.index.index(tokens, show_progress=False)
        logger.info("Indexed %d documents with BM25", len(self.doc_ids))

    def search(self, queries: list[str], *, top_k: int = 100) -> list[list[tuple[str, float]]]:
        """Return each query's top documents as (doc_id, score), best first.

        Ties in score are broken by document id, descending, as trec_eval does, so the
        returned order is the order trec_eval would evaluate.
        """
        top_k = min(top_k, len(self.doc_ids))
        tokens = bm25s.tokenize(queries, stopwords=self.stopwords, show_progress=False)
        indices, scores = self.index.retrieve(tokens, k=top_k, show_progress=False)
        results = []
        for row_ids, row_scores in zip(indices, scores, strict=True):
            hits = [(self.doc_ids[i], float(s)) for i, s in zip(row_ids, row_scores, strict=True)]
            results.append(sort_run(hits))
        return results


def sort_run(hits: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Sort (doc_id, score) by score descending, ties by doc id descending (trec_eval's order)."""
    by_id = sorted(hits, key=lambda hit: hit[0], reverse=True)
    return sorted(by_id, key=lambda hit: -hit[1])


def scores_to_run(doc_ids: list[str], scores: np.ndarray) -> list[tuple[str, float]]:
    """Pair doc ids with scores and sort them as trec_eval would."""
    return sort_run([(d, float(s)) for d, s in zip(doc_ids, scores, strict=True)])
