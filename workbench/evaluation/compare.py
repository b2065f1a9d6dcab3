"""Compare two runs query by query: deltas, significance tests, bootstrap interval, figures."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go

logger = logging.getLogger(__name__)

# Sign flips or bootstrap draws held in memory at once, as (rows, num_queries) values.
_CHUNK_VALUES = 1_000_000


@dataclass
class RunComparison:
    """Paired comparison of run B against run A on one metric.

    Attributes:
        metric: The compared per-query column, e.g. `ndcg@10`.
        per_query: Columns query_id, a, b, delta (b - a), in run A's query order.
        improved: Queries where B beats A.
        regressed: Queries where B trails A.
        tied: Queries with equal values.
        mean_delta: Mean of B - A over the queries.
        randomization_p: Two-sided p-value of the paired randomization (sign-flip) test.
        t_test_p: Two-sided p-value of the paired t-test; 1.0 when every delta is 0.
        ci_low: Lower end of the 95% bootstrap interval of `mean_delta`.
        ci_high: Upper end of the 95% bootstrap interval of `mean_delta`.
        most_moved: The rows of `per_query` with the largest |delta|, largest first.
    """

    metric: str
    per_query: pd.DataFrame
    improved: int
    regressed: int
    tied: int
    mean_delta: float
    randomization_p: float
    t_test_p: float
    ci_low: float
    ci_high: float
    most_moved: pd.DataFrame

    @property
    def num_queries(self) -> int:
        """Queries compared."""
        return len(self.per_query)


def compare_runs(
    per_query_a: pd.DataFrame,
    per_query_b: pd.DataFrame,
    *,
    metric: str = "ndcg@10",
    seed: int = 0,
    resamples: int = 10_000,
    top_k: int = 10,
) -> RunComparison:
    """Compare run B against run A on the same queries.

    The randomization test flips the sign of each query's delta at random (`resamples` times)
    and counts how often the mean moves at least as far from 0 as observed; the bootstrap draws
    queries with replacement and takes the 2.5th and 97.5th percentiles of the mean delta.

    Args:
        per_query_a: Per-query metrics of run A (columns query_id and `metric`), such as
            `RerankingEvaluator.per_query`.
        per_query_b: The same for run B, on the same queries.
        metric: The column to compare.
        seed: Seeds the sign flips and bootstrap draws.
        resamples: Draws for the randomization test and the bootstrap each.
        top_k: Rows kept in `most_moved`.

    Returns:
        Deltas, counts, p-values and the interval.

    Raises:
        ValueError: If a column is missing, a query id repeats, the query sets differ, a value is
            not finite, fewer than 2 queries remain, or `resamples` is below 1.

    Example:
        >>> result = compare_runs(bm25.per_query, reranked.per_query, metric="ndcg@10")
        >>> result.mean_delta, result.randomization_p
    """
    if resamples < 1:
        raise ValueError(f"resamples must be 1 or more, but got {resamples!r}. Use e.g. 10000.")
    table = _paired_table(per_query_a, per_query_b, metric)
    delta = table["delta"].to_numpy()
    flip_rng, boot_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    ci_low, ci_high = _bootstrap_interval(delta, boot_rng, resamples)

    result = RunComparison(
        metric=metric,
        per_query=table,
        improved=int(np.sum(delta > 0)),
        regressed=int(np.sum(delta < 0)),
        tied=int(np.sum(delta == 0)),
        mean_delta=float(delta.mean()),
        randomization_p=_randomization_p(delta, flip_rng, resamples),
        t_test_p=paired_t_test_p(delta),
        ci_low=ci_low,
        ci_high=ci_high,
        most_moved=table.reindex(
            table["delta"].abs().sort_values(ascending=False, kind="stable").index
        )[:top_k],
    )
    logger.info(
        "%s: mean delta %+.4f [%.4f, %.4f], %d up / %d down / %d tied, p=%.4g (randomization)",
        metric,
        result.mean_delta,
        ci_low,
        ci_high,
        result.improved,
        result.regressed,
        result.tied,
        result.randomization_p,
    )
    return result


def comparison_figures(result: RunComparison) -> dict[str, go.Figure]:
    """Plotly figures of a comparison.

    Returns:
        `deltas`: histogram of B - A per query with the mean marked; `scatter`: A against B per
        query (hover shows the query id) with the diagonal, points above it improved.
    """
    table = result.per_query
    deltas = go.Figure(go.Histogram(x=table["delta"], name="B - A"))
    deltas.add_vline(x=0, line_dash="dot", line_color="gray")
    deltas.add_vline(x=result.mean_delta, line_color="crimson", annotation_text="mean")
    deltas.update_layout(
        title=f"Per-query {result.metric} change (B - A)",
        xaxis_title=f"delta {result.metric}",
        yaxis_title="queries",
    )

    scatter = go.Figure()
    low = float(min(table["a"].min(), table["b"].min()))
    high = float(max(table["a"].max(), table["b"].max()))
    scatter.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", name="A = B"))
    scatter.add_trace(
        go.Scatter(
            x=table["a"],
            y=table["b"],
            mode="markers",
            name="query",
            text=table["query_id"],
            hovertemplate="%{text}<br>A %{x:.4f}<br>B %{y:.4f}<extra></extra>",
        )
    )
    scatter.update_layout(
        title=f"Per-query {result.metric}", xaxis_title="run A", yaxis_title="run B"
    )
    return {"deltas": deltas, "scatter": scatter}


def paired_t_test_p(delta: np.ndarray) -> float:
    """Two-sided p-value of the paired t-test on per-query differences.

    Returns 1.0 when every difference is 0 and 0.0 when they are all the same non-zero value.
    """
    n = len(delta)
    mean, sd = float(delta.mean()), float(delta.std(ddof=1))
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    t = mean / (sd / math.sqrt(n))
    df = n - 1
    # P(|T| >= |t|) for Student's t with df degrees of freedom.
    return regularized_beta(df / (df + t * t), df / 2, 0.5)


def regularized_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by Lentz's continued fraction.

    Converges fast for x < (a + 1) / (a + b + 2); beyond that the symmetry
    I_x(a, b) = 1 - I_(1-x)(b, a) is used.
    """
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - regularized_beta(1.0 - x, b, a)
    log_gamma = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    log_front = log_gamma + a * math.log(x) + b * math.log1p(-x)
    return math.exp(log_front) * _beta_fraction(x, a, b) / a


def _beta_fraction(x: float, a: float, b: float, *, tiny: float = 1e-300) -> float:
    """The continued fraction of I_x(a, b) (Numerical Recipes' betacf, modified Lentz)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    value = d
    for m in range(1, 300):
        # Even step, then odd step of the fraction.
        for coefficient in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + coefficient * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + coefficient / c
            c = c if abs(c) > tiny else tiny
            value *= c * d
        if abs(c * d - 1.0) < 1e-15:
            return value
    logger.warning("Incomplete beta did not converge for x=%r, a=%r, b=%r", x, a, b)
    return value


def _paired_table(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> pd.DataFrame:
    for label, frame in (("per_query_a", a), ("per_query_b", b)):
        missing = [c for c in ("query_id", metric) if c not in frame.columns]
        if missing:
            raise ValueError(
                f"{label} expects columns 'query_id' and {metric!r}, but lacks {missing!r} "
                f"(has {list(frame.columns)!r}). Pass `RerankingEvaluator.per_query` or set metric."
            )
        repeated = frame["query_id"][frame["query_id"].duplicated()].tolist()
        if repeated:
            raise ValueError(
                f"{label} expects one row per query, but query ids {repeated[:5]!r} repeat. "
                "Aggregate or drop the duplicates."
            )

    only_a = sorted(set(a["query_id"]) - set(b["query_id"]))
    only_b = sorted(set(b["query_id"]) - set(a["query_id"]))
    if only_a or only_b:
        raise ValueError(
            f"Both runs must cover the same queries, but {len(only_a)} are only in A "
            f"({only_a[:5]!r}) and {len(only_b)} only in B ({only_b[:5]!r}). Evaluate both runs "
            "with the same evaluator."
        )

    table = a[["query_id", metric]].rename(columns={metric: "a"})
    table = table.merge(b[["query_id", metric]].rename(columns={metric: "b"}), on="query_id")
    table = table.astype({"a": np.float64, "b": np.float64}).reset_index(drop=True)
    if len(table) < 2 or not np.all(np.isfinite(table[["a", "b"]].to_numpy())):
        raise ValueError(
            f"compare_runs expects at least 2 queries with finite {metric!r} values, but got "
            f"{len(table)} queries with {int(table[['a', 'b']].isna().sum().sum())} missing "
            "values. Drop queries without a value."
        )
    table["delta"] = table["b"] - table["a"]
    return table


def _randomization_p(delta: np.ndarray, rng: np.random.Generator, resamples: int) -> float:
    """Share of sign flips whose |mean| reaches the observed |mean|, counting the observed one."""
    observed = abs(delta.mean())
    # Summation order changes the last bits; a flip equal to the observed mean must count.
    tolerance = 1e-12 * max(1.0, float(np.abs(delta).max()))
    hits = 0
    for rows in _chunks(resamples, len(delta)):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(rows, len(delta)))
        hits += int(np.sum(np.abs(signs @ delta) / len(delta) >= observed - tolerance))
    return (hits + 1) / (resamples + 1)


def _bootstrap_interval(
    delta: np.ndarray, rng: np.random.Generator, resamples: int
) -> tuple[float, float]:
    """Percentile 95% interval of the mean over queries drawn with replacement."""
    means = []
    for rows in _chunks(resamples, len(delta)):
        index = rng.integers(0, len(delta), size=(rows, len(delta)))
        means.append(delta[index].mean(axis=1))
    low, high = np.percentile(np.concatenate(means), [2.5, 97.5])
    return float(low), float(high)


def _chunks(total: int, width: int) -> list[int]:
    rows = max(1, _CHUNK_VALUES // width)
    return [min(rows, total - start) for start in range(0, total, rows)]
