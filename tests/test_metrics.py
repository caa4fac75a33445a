"""Retrieval metrics (raretarget.query.metrics) on hand-built rankings."""

import math

import numpy as np
import pytest

from raretarget.query.metrics import (first_relevant_ranks, median_rank, mrr, random_expectation, recall_at_k,
                                      summarize)


def test_recall_and_mrr_by_hand():
    ranks = [1, 2, 5, 11, None]                       # None = the relevant item was never retrieved
    assert recall_at_k(ranks, 1) == pytest.approx(1 / 5)
    assert recall_at_k(ranks, 2) == pytest.approx(2 / 5)
    assert recall_at_k(ranks, 10) == pytest.approx(3 / 5)
    assert recall_at_k(ranks, 11) == pytest.approx(4 / 5)
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 11 + 0) / 5)
    assert median_rank([3, 1, 2]) == 2
    assert math.isinf(median_rank([1, None, None]))
    assert math.isnan(recall_at_k([], 1)) and math.isnan(mrr([]))
    with pytest.raises(ValueError):
        recall_at_k([0], 1)                             # ranks are 1-based


def test_first_relevant_ranks_from_scores():
    scores = np.array([
        [0.9, 0.1, 0.5, 0.3],       # relevant item 0 is best                  -> rank 1
        [0.9, 0.1, 0.5, 0.3],       # relevant item 3: 0.9 and 0.5 above it    -> rank 3
        [0.2, 0.8, 0.8, 0.1],       # relevant 2 and 3; best relevant 0.8 tied with non-relevant 1 -> rank 2
        [0.0, 0.0, 0.0, 0.0],       # all tied: pessimistic -> after the 3 non-relevant -> rank 4
        [0.4, 0.3, 0.2, 0.1],       # no relevant item -> None
    ])
    rel = np.zeros_like(scores, dtype=bool)
    rel[0, 0] = rel[1, 3] = rel[2, 2] = rel[2, 3] = rel[3, 1] = True
    ranks = first_relevant_ranks(scores, rel)
    assert ranks == [1, 3, 2, 4, None]
    s = summarize(ranks[:4], ks=(1, 3))
    assert s["n"] == 4
    assert s["recall@1"] == pytest.approx(1 / 4)
    assert s["recall@3"] == pytest.approx(3 / 4)
    assert s["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 2 + 1 / 4) / 4)
    assert s["median_rank"] == pytest.approx(2.5)


def test_random_expectation_matches_enumeration():
    import itertools

    n, m, k = 6, 2, 2
    hits, rr, count = 0, 0.0, 0
    for perm in itertools.permutations(range(n)):
        first = min(perm.index(i) for i in range(m)) + 1       # items 0..m-1 are relevant
        hits += first <= k
        rr += 1 / first
        count += 1
    e = random_expectation(n, m, k)
    assert e[f"recall@{k}"] == pytest.approx(hits / count)
    assert e["rr"] == pytest.approx(rr / count)
    one = random_expectation(10, 1, 1)
    assert one["recall@1"] == pytest.approx(0.1)
    assert one["rr"] == pytest.approx(sum(1 / r for r in range(1, 11)) / 10)
