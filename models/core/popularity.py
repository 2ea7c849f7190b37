"""Trending items: popularity with exponential time decay on event time, in bounded memory.

Scores are kept relative to a reference time that moves forward with the stream, so event
times around 1.7e9 s and half-lives of seconds never overflow.

>>> trending = TrendingItems(half_life_s=10.0)
>>> trending.learn("old", ts=1_000.0, weight=4.0)
>>> trending.learn("new", ts=1_020.0, weight=2.0)   # "old" has decayed to 4 * 0.25 = 1
>>> [(item, round(score, 3)) for item, score in trending.top(2)]
[('new', 2.0), ('old', 1.0)]
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Sequence

PRUNE_TO = 0.9  # when over capacity, keep this fraction of the capacity (the top scores)
REBASE_AFTER_HALF_LIVES = 64.0  # move the reference time once scores grow by 2**64


class TrendingItems:
    """Decayed popularity: score(i) = sum over its events of weight * 0.5 ** (age / half_life)."""

    def __init__(self, half_life_s: float = 3_600.0, capacity: int = 100_000) -> None:
        if half_life_s <= 0 or capacity < 1:
            raise ValueError("half_life_s must be > 0 and capacity >= 1")
        self.half_life_s = half_life_s
        self.capacity = capacity
        self._scores: dict[str, float] = {}  # scores as of `_reference_ts`, growth factor folded in
        self._reference_ts: float | None = None
        self._latest_ts: float | None = None
        self.learned = 0  # events counted so far (a clock for caches of the top items)

    def learn(self, item_id: str, ts: float, weight: float = 1.0) -> None:
        self.learned += 1
        if self._reference_ts is None:
            self._reference_ts = ts
        self._latest_ts = ts if self._latest_ts is None else max(self._latest_ts, ts)
        if (self._latest_ts - self._reference_ts) / self.half_life_s > REBASE_AFTER_HALF_LIVES:
            self._rebase(self._latest_ts)
        growth = math.pow(2.0, (ts - self._reference_ts) / self.half_life_s)
        self._scores[item_id] = self._scores.get(item_id, 0.0) + weight * growth
        if len(self._scores) > self.capacity:
            self._prune()

    def _rebase(self, new_reference: float) -> None:
        assert self._reference_ts is not None
        factor = math.pow(0.5, (new_reference - self._reference_ts) / self.half_life_s)
        self._scores = {item: score * factor for item, score in self._scores.items()}
        self._reference_ts = new_reference

    def _prune(self) -> None:
        keep = max(1, int(self.capacity * PRUNE_TO))
        self._scores = dict(heapq.nlargest(keep, self._scores.items(), key=lambda kv: kv[1]))

    def _to_now(self) -> float:
        """Factor that turns stored scores into scores decayed to the latest event time."""
        if self._reference_ts is None or self._latest_ts is None:
            return 1.0
        return math.pow(0.5, (self._latest_ts - self._reference_ts) / self.half_life_s)

    def score(self, item_id: str) -> float:
        return self._scores.get(item_id, 0.0) * self._to_now()

    def scores(self, item_ids: Sequence[str]) -> list[float]:
        """`score` of many items at once (one decay factor for all)."""
        factor = self._to_now()
        get = self._scores.get
        return [get(item, 0.0) * factor for item in item_ids]

    def top(self, n: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """The n highest scores (decayed to the latest event time), best first."""
        factor = self._to_now()
        candidates = (
            (item, score) for item, score in self._scores.items() if item not in exclude
        )
        return [(item, score * factor) for item, score in heapq.nlargest(n, candidates, key=lambda kv: kv[1])]

    def __len__(self) -> int:
        return len(self._scores)
