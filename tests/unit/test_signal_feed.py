"""`SignalFeed`: the collaborative signals of every user, learned from a stream of all events.

Checked against the reference, `Recommender.learn` over the users' states (what a single
process learns today): the same events in the same order give the very same signals.
Pure logic: the item index is the brute-force stand-in (tests/support/fakes.py).
"""

from __future__ import annotations

import numpy as np

from streamrec.models.core.collaborative import (
    CollaborativeConfig,
    CollaborativeSignals,
    distinct_recent,
)
from streamrec.models.core.popularity import TrendingItems
from streamrec.models.core.recommender import Recommender, RecommenderConfig, group_by_user
from streamrec.models.core.scoring import ContentScorer
from streamrec.models.core.signal_feed import SignalFeed, SignalFeedConfig
from streamrec.models.core.state import UserState
from streamrec.stream.messages import Event
from tests.support.events import event
from tests.support.fakes import BruteForceIndex

HISTORY = 6  # events a user state keeps: short, so items leave it while still among the distinct
COUNTS = CollaborativeConfig(window=4, seed_items=4)  # a short window: the cut is exercised


def _stream(n_events: int, n_users: int = 25, n_items: int = 30, seed: int = 0) -> list[Event]:
    """Users taking items of a small catalogue, often the same one again or one of their last."""
    rng = np.random.default_rng(seed)
    last: dict[str, list[str]] = {}
    events = []
    for n in range(n_events):
        user = f"u{rng.integers(n_users)}"
        mine = last.setdefault(user, [])
        roll = rng.random()
        if mine and roll < 0.2:
            item = mine[-1]  # the same item twice in a row
        elif mine and roll < 0.4:
            item = mine[int(rng.integers(len(mine)))]  # back to an earlier one
        else:
            item = f"i{rng.integers(n_items)}"
        mine.append(item)
        kind = ("view", "click", "purchase")[int(rng.integers(3))]
        events.append(event(user, item, n, kind=kind))
    return events


def _recommender(feed: SignalFeed | None = None) -> Recommender:
    rec = Recommender(BruteForceIndex(8), ContentScorer(), TrendingItems(3600.0),
                      RecommenderConfig(history_length=HISTORY), collaborative=COUNTS)
    rec.signal_feed = feed
    return rec


def _learn_in_batches(
    rec: Recommender, events: list[Event], states: dict[str, UserState], size: int = 17
) -> list[Event]:
    """`Recommender.learn` over micro-batches; the events in the order learned (by user in a batch)."""
    order = []
    for start in range(0, len(events), size):
        users = group_by_user(events[start : start + size], states, HISTORY)
        rec.learn(users)
        states.update({user.state.user_id: user.state for user in users})
        order += [e for user in users for e in user.events]
    return order


def _signals_as_seen(signals: CollaborativeSignals, events: list[Event]) -> dict:
    """Everything the signals answer for the stream's items and consecutive pairs (public API)."""
    items = sorted({e.item_id for e in events})
    pairs = sorted({(a.item_id, b.item_id) for a, b in zip(events, events[1:]) if a.user_id == b.user_id})
    return {
        "items": list(signals.vocabulary.names),
        "covisited": {item: signals.covisited([item]) for item in items},
        "next": {item: signals.next_after([item]) for item in items},
        "next2": {pair: signals.next_after(list(pair)) for pair in pairs},
        "popular": signals.most_popular(len(items)),
        "popular_now": signals.most_popular(len(items), now=True),
        "features": signals.features(items[:3], items).tolist(),
    }


def test_the_feed_learns_exactly_what_recommender_learn_learns_from_the_states() -> None:
    events = _stream(1_500)
    reference, states = _recommender(), {}
    learned = _learn_in_batches(reference, events, states)  # by user within each micro-batch
    feed = SignalFeed(CollaborativeSignals(COUNTS), SignalFeedConfig(history_length=HISTORY))
    assert feed.learn_many(learned) == len(events)

    assert reference.collaborative is not None
    assert _signals_as_seen(feed.signals, events) == _signals_as_seen(reference.collaborative, events)
    for user, state in states.items():  # what the next event of each user would pair with
        held = [i.item_id for i in state.recent]
        mine = feed.user_items(user)
        assert distinct_recent(mine, COUNTS.window) == distinct_recent(held, COUNTS.window), user
        assert mine[-2:] == held[-2:], user


def test_the_workers_own_events_are_learned_before_ranking_and_counted_once() -> None:
    events = _stream(900, seed=1)
    local_users = {f"u{n}" for n in range(10)}  # this worker's partitions' users
    feed = SignalFeed(CollaborativeSignals(COUNTS), SignalFeedConfig(history_length=HISTORY))
    feed.live = True
    worker, states = _recommender(feed), {}
    reference = SignalFeed(CollaborativeSignals(COUNTS), SignalFeedConfig(history_length=HISTORY))
    for start in range(0, len(events), 20):
        chunk = events[start : start + 20]
        local = [e for e in chunk if e.user_id in local_users]
        learned = feed.learned
        local = _learn_in_batches(worker, local, states, size=len(local) or 1)  # learn, then rank
        assert feed.learned - learned == len(local), "the worker's own events count before ranking"
        feed.learn_many(chunk)  # the broadcast reader reads them again, with everyone else's
        reference.learn_many(local + [e for e in chunk if e.user_id not in local_users])
    assert feed.duplicates == sum(e.user_id in local_users for e in events)
    assert feed.learned == len(events)
    assert _signals_as_seen(feed.signals, events) == _signals_as_seen(reference.signals, events)


def test_until_the_reader_has_caught_up_the_reader_learns_the_workers_own_events() -> None:
    feed = SignalFeed(CollaborativeSignals(COUNTS))
    worker = _recommender(feed)
    _learn_in_batches(worker, [event("u1", "a", 0), event("u1", "b", 1)], {})
    assert feed.learned == 0 and worker.collaborative is not None and len(worker.collaborative) == 0
    assert feed.learn_many([event("u1", "a", 0), event("u1", "b", 1)]) == 2


def test_memory_is_bounded_in_users_items_and_event_ids() -> None:
    feed = SignalFeed(CollaborativeSignals(COUNTS), SignalFeedConfig(max_users=5, dedup_events=50))
    events = _stream(2_000, n_users=40, seed=2)
    feed.learn_many(events)
    assert len(feed) == 5 and feed.forgotten_users > 0
    assert all(len(set(feed.user_items(f"u{n}"))) <= COUNTS.window for n in range(40))
    assert all(len(feed.user_items(f"u{n}")) <= COUNTS.window + 1 for n in range(40))
    recent = {e.user_id for e in events[-30:]}
    assert set(feed._users) <= recent, "the least recently active users are forgotten first"
    assert not feed.learn(events[-1]), "a recent event id is remembered"
    assert feed.learn(events[0]), "an event id beyond `dedup_events` is not"


def test_a_compacted_vocabulary_renumbers_the_users_items() -> None:
    small = CollaborativeConfig(window=4, seed_items=4, max_items=10)  # compacts at 20 items
    feed = SignalFeed(CollaborativeSignals(small), SignalFeedConfig(history_length=HISTORY))
    events = _stream(1_000, n_items=60, seed=3)
    vocabulary = feed.signals.vocabulary
    reference, states = Recommender(BruteForceIndex(8), ContentScorer(), TrendingItems(3600.0),
                                    RecommenderConfig(history_length=HISTORY), collaborative=small), {}
    feed.learn_many(events)
    _learn_in_batches(reference, events, states)
    assert feed.signals.vocabulary is not vocabulary, "the vocabulary was compacted"
    names = set(feed.signals.vocabulary.names)
    # Each user's items, in order, less those dropped (an item dropped and seen again later is
    # in the vocabulary again, but forgotten by the users who had it: a small, rare difference).
    for user, state in states.items():
        mine = distinct_recent(feed.user_items(user), small.window)
        held = iter(distinct_recent([i.item_id for i in state.recent], HISTORY))
        assert set(mine) <= names and all(item in held for item in mine), user  # a subsequence
