"""TrendingItems against a brute-force reference of decayed sums."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.models.core.popularity import TrendingItems


def test_scores_match_the_brute_force_reference() -> None:
    rng = np.random.default_rng(0)
    half_life = 30.0
    trending = TrendingItems(half_life_s=half_life)
    history = []
    ts = 1_700_000_000.0
    for _ in range(500):
        ts += float(rng.exponential(5.0))
        item, weight = f"i{rng.integers(20)}", float(rng.choice([1.0, 2.0, 4.0]))
        trending.learn(item, ts, weight)
        history.append((item, ts, weight))
    reference: dict[str, float] = {}
    for item, t, w in history:
        reference[item] = reference.get(item, 0.0) + w * 0.5 ** ((ts - t) / half_life)
    for item, score in reference.items():
        assert trending.score(item) == pytest.approx(score, rel=1e-6)
    expected_order = sorted(reference, key=lambda i: -reference[i])[:5]
    assert [item for item, _ in trending.top(5)] == expected_order


def test_long_streams_with_short_half_lives_do_not_overflow() -> None:
    trending = TrendingItems(half_life_s=1.0)
    for k in range(5_000):
        trending.learn(f"i{k % 3}", 1_700_000_000.0 + k, 1.0)
    assert all(np.isfinite(score) and score > 0 for _, score in trending.top(3))


def test_exclusion_and_capacity() -> None:
    trending = TrendingItems(half_life_s=100.0, capacity=10)
    for k in range(50):
        trending.learn(f"i{k}", 1_000.0 + k, 1.0)
    assert len(trending) <= 10
    top = [item for item, _ in trending.top(3, exclude={"i49"})]
    assert top == ["i48", "i47", "i46"]
