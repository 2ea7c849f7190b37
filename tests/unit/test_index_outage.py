"""The core while the item index is unavailable: trending lists, the reason, probes, recovery.

The index is the brute-force stand-in with a switch (pure logic under test); a real
qdrant-client against a dead port and a real local-mode index that fails and comes back are
in tests/integration/test_index_outage.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.consumers.worker.metrics import WorkerMetrics
from streamrec.models.core.popularity import TrendingItems
from streamrec.models.core.recommender import (
    TRENDING_REASON,
    Recommender,
    RecommenderConfig,
    UserBatch,
)
from streamrec.models.core.scoring import ContentScorer
from streamrec.models.core.state import UserState
from streamrec.models.index.health import (
    FALLBACK_VERSION,
    INDEX_UNAVAILABLE_REASON,
    IndexHealth,
)
from streamrec.models.index.protocol import IndexedItem, IndexUnavailableError
from tests.support.events import event
from tests.support.fakes import BruteForceIndex

DIM = 4


class FlakyIndex(BruteForceIndex):
    """The stand-in index, unavailable while `down` (every call raises); counts the calls."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.down = False
        self.calls = 0

    def _call(self) -> None:
        self.calls += 1
        if self.down:
            raise IndexUnavailableError("Qdrant at http://127.0.0.1:1 is unavailable: refused")

    def get(self, item_ids):
        self._call()
        return super().get(item_ids)

    def search_batch(self, *args, **kwargs):
        self._call()
        return super().search_batch(*args, **kwargs)

    def count(self) -> int:
        self._call()
        return super().count()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _catalogue() -> FlakyIndex:
    index = FlakyIndex(DIM)
    for n in range(8):
        vector = np.zeros(DIM, dtype=np.float32)
        vector[n % DIM] = 1.0
        index.upsert([IndexedItem(f"i{n}", vector, f"item {n}")])
    return index


def _setup(k: int = 3) -> tuple[FlakyIndex, Recommender, Clock]:
    index, clock = _catalogue(), Clock()
    recommender = Recommender(
        index=index,
        scorer=ContentScorer(),
        trending=TrendingItems(half_life_s=3600.0),
        config=RecommenderConfig(k=k, seed_items=2, neighbours_per_item=4, profile_items=4),
        index_health=IndexHealth(retry_s=10.0, clock=clock),
    )
    return index, recommender, clock


def test_an_unavailable_index_gives_trending_lists_minus_consumed_with_the_reason() -> None:
    index, recommender, _ = _setup()
    metrics = WorkerMetrics()
    metrics.watch_index(recommender)
    # Popularity from earlier events: i5 > i6 > i7.
    warmup = [UserBatch(UserState(f"w{n}"), [event(f"w{n}", item, n, kind="click")]) for n, item in
              enumerate(["i5", "i5", "i5", "i6", "i6", "i7"])]
    recommender.process_batch(warmup)
    assert metrics.index_available._value.get() == 1.0  # set_function: read as scraped

    index.down = True
    alice = UserState("alice")
    users = [UserBatch(alice, [event("alice", "i5", 10, kind="click")]), UserBatch(UserState("bob"), [])]
    ranked = recommender.process_batch(users)

    assert [[item.item_id for item in r.items] for r in ranked] == [["i6", "i7"], ["i5", "i6", "i7"]]
    assert all(item.reason == INDEX_UNAVAILABLE_REASON for r in ranked for item in r.items)
    assert {r.model_version for r in ranked} == {FALLBACK_VERSION}
    assert alice.has_consumed("i5") and alice.served_version == FALLBACK_VERSION  # learned as usual
    assert recommender.index_health.available is False
    exposition = metrics.exposition().decode()
    assert 'streamrec_fallback_lists_total{reason="index_unavailable"} 2.0' in exposition
    assert "streamrec_index_available 0.0" in exposition


def test_the_index_is_left_alone_until_the_retry_time_then_probed_and_back_to_normal() -> None:
    index, recommender, clock = _setup()
    recommender.process_batch([UserBatch(UserState("w"), [event("w", "i1", 0, kind="click")])])
    index.down = True
    recommender.recommend([UserState("alice")])
    calls = index.calls
    clock.now = 9.9
    ranked = recommender.recommend([UserState("alice")])
    assert index.calls == calls, "no call to a failed index before retry_s"
    assert ranked[0].items[0].reason == INDEX_UNAVAILABLE_REASON

    clock.now = 10.0  # time to try: still down, so the probe fails and the wait starts again
    recommender.recommend([UserState("alice")])
    assert index.calls == calls + 1 and recommender.index_health.available is False

    index.down = False
    clock.now = 20.0
    [ranked] = recommender.recommend([UserState("carol")])
    assert recommender.index_health.available is True and recommender.index_health.outages == 1
    assert ranked.model_version == ContentScorer().version
    # A cold user, normally: the one counted item first, the list filled up from the catalogue.
    assert ranked.items[0].item_id == "i1" and len(ranked.items) == 3
    assert {item.reason for item in ranked.items} == {TRENDING_REASON}


def test_a_failure_half_way_through_a_batch_falls_back_for_the_whole_batch() -> None:
    index, recommender, _ = _setup()
    users = [UserBatch(UserState(f"u{n}"), [event(f"u{n}", f"i{n}", n, kind="click")]) for n in range(3)]
    calls = {"n": 0}
    similar = index.similar

    def times_out(*args, **kwargs):  # the vectors were fetched, then the neighbour search fails
        calls["n"] += 1
        raise IndexUnavailableError("timed out")

    index.similar = times_out  # type: ignore[method-assign]
    ranked = recommender.process_batch(users)
    assert calls["n"] == 1 and len(ranked) == 3
    assert all(item.reason == INDEX_UNAVAILABLE_REASON for r in ranked for item in r.items)
    index.similar = similar  # type: ignore[method-assign]


def test_other_index_errors_are_not_swallowed() -> None:
    index, recommender, _ = _setup()

    def broken(*args, **kwargs):
        raise ValueError("queries have shape (1, 3), index expects (Q, 4)")

    index.get = broken  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="index expects"):  # a bug is not served around
        recommender.process_batch([UserBatch(UserState("u"), [event("u", "i1", 0, kind="click")])])
    assert recommender.index_health.available is True
