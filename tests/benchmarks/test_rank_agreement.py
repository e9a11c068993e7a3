"""benchmarks/bench_rerank.py's ranking agreement between two sides' scores."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_rerank import ranking_agreement


def test_the_same_ranking_agrees_fully_whatever_the_scale():
    reference = np.array([0.1, 0.5, 0.3, 2.0, 1.0, -1.0])  # two queries of three candidates
    report = ranking_agreement(reference * 10 + 3, reference, per_query=3)
    assert report["spearman_per_query_mean"] == report["spearman_per_query_min"] == 1.0
    assert report["same_top_share"] == 1.0
    assert report["reference_score_std"] == pytest.approx(float(np.std(reference)), abs=1e-4)


def test_a_reversed_ranking_and_a_changed_top_are_seen_per_query():
    reference = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0])
    scores = np.array([1.0, 2.0, 3.0, 3.0, 2.0, 1.0])  # the second query reversed
    report = ranking_agreement(scores, reference, per_query=3)
    assert report["spearman_per_query_min"] == -1.0
    assert report["spearman_per_query_mean"] == 0.0
    assert report["same_top_share"] == 0.5


def test_queries_of_one_candidate_have_no_rank_correlation():
    report = ranking_agreement(np.array([1.0, 2.0]), np.array([3.0, 1.0]), per_query=1)
    assert report["spearman_per_query_mean"] is None and report["spearman_per_query_min"] is None
    assert report["same_top_share"] == 1.0  # one candidate is always its query's top
