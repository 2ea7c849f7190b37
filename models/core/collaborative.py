"""Collaborative signals learned per event, in bounded memory: co-visitation, transitions, popularity.

What simple baselines win with on small data, kept fresh at every event inside the core:

- **co-visitation**: items consumed near each other by the same user (within the user's last
  `window` distinct items), both directions, weighted by the event type and by how close the
  two were in the user's sequence;
- **transitions**: what came *right after* an item (first order) and after a pair of items
  (second order), directed;
- **popularity** at two scales: all-time counts and counts that halve every
  `short_half_life_events` events (an event clock, so the scale does not depend on whether a
  stream's timestamps are seconds or days).

Every count decays on the same event clock (`half_life_events`), so neighbours of an item
follow what users do now. Memory is bounded: each item keeps its `max_neighbours` strongest
neighbours per table, and at most `max_items` items (and `max_pairs` item pairs) have rows;
the weakest rows go first.

Each table is a **candidate source** (its neighbours of the user's recent items) and a
**feature** of any candidate (`features`), the two things the `Recommender` needs.

>>> signals = CollaborativeSignals()
>>> for items in (["a", "b", "c"], ["a", "b"], ["x", "b", "c"]):  # three users' sequences
...     for n, item in enumerate(items):
...         signals.learn(user_items=items[:n], item_id=item)
>>> [item for item, _ in signals.next_after(["a", "b"])]   # after b (and after a, b) came c
['c']
>>> [item for item, _ in signals.covisited(["a"])][:2]
['b', 'c']
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

REBASE_AFTER_HALF_LIVES = 60.0  # rescale stored counts once they grow by 2**60

FEATURES = ("covisit", "next", "next2", "popular", "popular_now")


@dataclass(frozen=True)
class CollaborativeConfig:
    """Knobs of the collaborative signals; defaults chosen for any dataset, not tuned to one."""

    window: int = 8  # the user's last distinct items that pair with a new one
    seed_items: int = 5  # the user's last distinct items whose neighbours become candidates
    candidates_per_seed: int = 20  # neighbours taken from each seed's row
    max_neighbours: int = 100  # strongest neighbours kept per item and table
    max_items: int = 200_000  # items with rows (the weakest rows are dropped beyond)
    max_pairs: int = 200_000  # second-order (pair) rows
    half_life_events: float = 200_000.0  # all counts halve every this many events
    short_half_life_events: float = 2_000.0  # "popular now"


class _Rows:
    """item -> {neighbour: decayed weight}, each row capped to its strongest neighbours."""

    def __init__(self, max_neighbours: int, max_rows: int) -> None:
        self.rows: dict = {}
        self.totals: dict = {}  # row key -> sum of all weight ever added (decayed), for normalising
        self.max_neighbours = max_neighbours
        self.max_rows = max_rows

    def add(self, key, neighbour: str, weight: float) -> None:
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = {}
            if len(self.rows) > self.max_rows:
                self._drop_weakest_rows()
        row[neighbour] = row.get(neighbour, 0.0) + weight
        self.totals[key] = self.totals.get(key, 0.0) + weight
        if len(row) > 2 * self.max_neighbours:
            kept = heapq.nlargest(self.max_neighbours, row.items(), key=lambda kv: kv[1])
            self.rows[key] = dict(kept)

    def _drop_weakest_rows(self) -> None:
        keep = int(self.max_rows * 0.9)
        strongest = heapq.nlargest(keep, self.totals.items(), key=lambda kv: kv[1])
        self.totals = dict(strongest)
        self.rows = {key: self.rows[key] for key in self.totals if key in self.rows}

    def scale(self, factor: float) -> None:
        for row in self.rows.values():
            for neighbour in row:
                row[neighbour] *= factor
        for key in self.totals:
            self.totals[key] *= factor

    def normalised(self, key) -> dict[str, float]:
        """The row as shares of everything that followed/accompanied `key` (0..1)."""
        row = self.rows.get(key)
        if not row:
            return {}
        total = self.totals.get(key) or 1.0
        return {neighbour: weight / total for neighbour, weight in row.items()}


class CollaborativeSignals:
    """Co-visitation, first/second-order transitions and popularity, learned one event at a time."""

    def __init__(self, config: CollaborativeConfig | None = None) -> None:
        self.config = config or CollaborativeConfig()
        cfg = self.config
        self.covisit = _Rows(cfg.max_neighbours, cfg.max_items)
        self.next1 = _Rows(cfg.max_neighbours, cfg.max_items)
        self.next2 = _Rows(cfg.max_neighbours, cfg.max_pairs)
        self.popular: dict[str, float] = {}  # decayed on the long clock
        self.popular_now: dict[str, float] = {}  # decayed on the short clock
        self.events = 0  # the event clock
        self._growth = 1.0  # 2 ** (events / half_life) since the last rebase
        self._growth_now = 1.0
        self._step = math.pow(2.0, 1.0 / cfg.half_life_events)
        self._step_now = math.pow(2.0, 1.0 / cfg.short_half_life_events)

    # --- learning ---------------------------------------------------------------------
    def learn(self, user_items: Sequence[str], item_id: str, weight: float = 1.0) -> None:
        """Count one event of `item_id` by a user whose earlier items are `user_items`
        (oldest first, repeats allowed)."""
        cfg = self.config
        self.events += 1
        self._growth *= self._step
        self._growth_now *= self._step_now
        if self._growth > 2.0**REBASE_AFTER_HALF_LIVES or self._growth_now > 2.0**REBASE_AFTER_HALF_LIVES:
            self._rebase()
        w = weight * self._growth
        self.popular[item_id] = self.popular.get(item_id, 0.0) + w
        self.popular_now[item_id] = self.popular_now.get(item_id, 0.0) + weight * self._growth_now
        if len(self.popular) > cfg.max_items:
            self.popular = dict(heapq.nlargest(int(cfg.max_items * 0.9), self.popular.items(), key=lambda kv: kv[1]))
        if len(self.popular_now) > cfg.max_items:
            self.popular_now = dict(
                heapq.nlargest(int(cfg.max_items * 0.9), self.popular_now.items(), key=lambda kv: kv[1])
            )
        if not user_items:
            return
        last = user_items[-1]
        if last != item_id:
            self.next1.add(last, item_id, w)
            if len(user_items) > 1 and user_items[-2] != last:
                self.next2.add((user_items[-2], last), item_id, w)
        for distance, other in enumerate(_distinct_newest_first(user_items, cfg.window), start=1):
            if other == item_id:
                continue
            pair_weight = w / distance  # nearer in the sequence: more related
            self.covisit.add(other, item_id, pair_weight)
            self.covisit.add(item_id, other, pair_weight)

    def _rebase(self) -> None:
        factor = 1.0 / self._growth
        for table in (self.covisit, self.next1, self.next2):
            table.scale(factor)
        self.popular = {item: count * factor for item, count in self.popular.items()}
        factor_now = 1.0 / self._growth_now
        self.popular_now = {item: count * factor_now for item, count in self.popular_now.items()}
        self._growth = self._growth_now = 1.0

    # --- candidate sources --------------------------------------------------------------
    def covisited(self, user_items: Sequence[str]) -> list[tuple[str, float]]:
        """Items often consumed near the user's recent ones, best first: (item, score)."""
        scores = self._covisit_scores(user_items)
        return heapq.nlargest(self._limit(), scores.items(), key=lambda kv: kv[1])

    def next_after(self, user_items: Sequence[str]) -> list[tuple[str, float]]:
        """Items that often came right after the user's last item (or last two), best first."""
        scores = self._next_scores(user_items)
        return heapq.nlargest(self.config.candidates_per_seed * 2, scores.items(), key=lambda kv: kv[1])

    def _limit(self) -> int:
        return self.config.seed_items * self.config.candidates_per_seed

    def _covisit_scores(self, user_items: Sequence[str]) -> dict[str, float]:
        scores: dict[str, float] = {}
        seeds = _distinct_newest_first(user_items, self.config.seed_items)
        per_seed = self.config.candidates_per_seed
        for rank, seed in enumerate(seeds):
            recency = 1.0 / (rank + 1)
            row = self.covisit.normalised(seed)
            for neighbour, share in heapq.nlargest(per_seed, row.items(), key=lambda kv: kv[1]):
                scores[neighbour] = scores.get(neighbour, 0.0) + recency * share
        return scores

    def _next_scores(self, user_items: Sequence[str]) -> dict[str, float]:
        if not user_items:
            return {}
        scores = dict(self.next1.normalised(user_items[-1]))
        if len(user_items) > 1:
            for item, share in self.next2.normalised((user_items[-2], user_items[-1])).items():
                scores[item] = scores.get(item, 0.0) + share
        return scores

    # --- features -----------------------------------------------------------------------
    def features(self, user_items: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        """(C, len(FEATURES)) signal values of each candidate for this user (0 where nothing
        is known): co-visitation and transition shares, popularity scaled to 0..1."""
        covisit = self._full_covisit(user_items)
        next1 = self.next1.normalised(user_items[-1]) if user_items else {}
        next2 = (
            self.next2.normalised((user_items[-2], user_items[-1])) if len(user_items) > 1 else {}
        )
        popular, popular_now = self.popular, self.popular_now
        table = np.array(
            [
                [
                    covisit.get(c, 0.0),
                    next1.get(c, 0.0),
                    next2.get(c, 0.0),
                    math.log1p(popular.get(c, 0.0) / self._growth),
                    math.log1p(popular_now.get(c, 0.0) / self._growth_now),
                ]
                for c in candidates
            ],
            dtype=np.float32,
        ).reshape(len(candidates), len(FEATURES))
        # Co-visitation and transitions are shares (how much of what went with / came after
        # the user's items is this candidate), comparable across users: kept as they are, so a
        # strong pattern outweighs a weak one. Popularity is scaled to 0..1 among the candidates.
        peak = table[:, 3:].max(axis=0, initial=0.0)  # (2,)
        table[:, 3:] /= np.where(peak > 0, peak, 1.0)
        return table

    def _full_covisit(self, user_items: Sequence[str]) -> dict[str, float]:
        """Like `_covisit_scores` over whole rows (a candidate from another source still gets
        its co-visitation value)."""
        scores: dict[str, float] = {}
        for rank, seed in enumerate(_distinct_newest_first(user_items, self.config.seed_items)):
            recency = 1.0 / (rank + 1)
            for neighbour, share in self.covisit.normalised(seed).items():
                scores[neighbour] = scores.get(neighbour, 0.0) + recency * share
        return scores

    def most_popular(self, n: int, now: bool = False) -> list[tuple[str, float]]:
        counts = self.popular_now if now else self.popular
        return heapq.nlargest(n, counts.items(), key=lambda kv: kv[1])

    def __len__(self) -> int:
        return len(self.popular)


def _distinct_newest_first(items: Sequence[str], n: int) -> list[str]:
    seen: list[str] = []
    for item in reversed(items):
        if item not in seen:
            seen.append(item)
            if len(seen) >= n:
                break
    return seen


def distinct_recent(items: Iterable[str], n: int) -> list[str]:
    """The last `n` distinct items, newest first.

    >>> distinct_recent(["a", "b", "a", "c"], 2)
    ['c', 'a']
    """
    return _distinct_newest_first(list(items), n)
