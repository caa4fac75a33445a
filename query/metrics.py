"""Retrieval quality metrics over 1-based ranks of the first relevant item (``None`` = never retrieved).

    >>> recall_at_k([1, 3, None], 1), recall_at_k([1, 3, None], 10), round(mrr([1, 3, None]), 4)
    (0.3333333333333333, 0.6666666666666666, 0.4444)

:func:`first_relevant_ranks` turns a score matrix and a relevance mask into those ranks (ties count
against the query: a relevant item tied with non-relevant ones gets the worst of the tied ranks);
:func:`random_expectation` gives the same metrics for a uniformly random ranking.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

__all__ = ["recall_at_k", "mrr", "median_rank", "first_relevant_ranks", "random_expectation", "summarize"]


def _ranks(ranks: Iterable[int | None]) -> list[float]:
    out = []
    for r in ranks:
        if r is None or (isinstance(r, float) and math.isnan(r)):
            out.append(math.inf)
        else:
            if r < 1:
                raise ValueError(f"ranks are 1-based, got {r}")
            out.append(float(r))
    return out


def recall_at_k(ranks: Iterable[int | None], k: int) -> float:
    """Share of queries whose first relevant item is at rank ≤ ``k`` (NaN for no queries)."""
    r = _ranks(ranks)
    return float(np.mean([x <= k for x in r])) if r else float("nan")


def mrr(ranks: Iterable[int | None]) -> float:
    """Mean reciprocal rank of the first relevant item (0 for a query with none retrieved)."""
    r = _ranks(ranks)
    return float(np.mean([0.0 if math.isinf(x) else 1.0 / x for x in r])) if r else float("nan")


def median_rank(ranks: Iterable[int | None]) -> float:
    r = _ranks(ranks)
    return float(np.median(r)) if r else float("nan")


def first_relevant_ranks(scores: np.ndarray, relevant: np.ndarray) -> list[int | None]:
    """``scores`` (q, n) higher = better; ``relevant`` (q, n) bool. Returns the 1-based rank of each
    query's best relevant item = 1 + number of non-relevant items scoring ≥ it (pessimistic ties);
    ``None`` when a query has no relevant item."""
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.shape != relevant.shape:
        raise ValueError("scores and relevant must have the same shape")
    out: list[int | None] = []
    for s, rel in zip(scores, relevant):
        if not rel.any():
            out.append(None)
            continue
        best = s[rel].max()
        out.append(int(1 + np.count_nonzero(s[~rel] >= best)))
    return out


def random_expectation(n: int, m: int, k: int) -> dict[str, float]:
    """Expected recall@k and reciprocal rank of the first relevant item when ``m`` relevant items are
    among ``n`` ranked uniformly at random."""
    if not 1 <= m <= n:
        raise ValueError("need 1 <= m <= n")
    # P(first relevant at rank r) = C(n-r, m-1) / C(n, m)
    total = math.comb(n, m)
    rr = sum(math.comb(n - r, m - 1) / r for r in range(1, n - m + 2)) / total
    # P(no relevant item in the top k) = C(n-m, k) / C(n, k)
    rec = 1.0 - (math.comb(n - m, k) / math.comb(n, k) if k <= n - m else 0.0)
    return {f"recall@{k}": rec, "rr": rr}


def summarize(ranks: Sequence[int | None], ks: Sequence[int] = (1, 10)) -> dict:
    """``{"n", "recall@k"..., "mrr", "median_rank"}`` for one task."""
    out: dict = {"n": len(ranks)}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(ranks, k)
    out["mrr"] = mrr(ranks)
    out["median_rank"] = median_rank(ranks)
    return out
