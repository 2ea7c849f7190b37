"""Probe finding (issue 17): events about items the catalogue does not hold ("ghost" ids,
sent by a careless or hostile client) must never empty or shorten a new user's list.

Through the pure core (`Recommender.handle`, as the worker calls it), with the in-memory
index stand-in: a catalogue, a few real events, then 1,000 events about 20 ghost ids in one
batch (one authenticated `POST /events` in the probe); a user never seen gets a full list of
catalogue items.
"""

from __future__ import annotations

import numpy as np

from streamrec.models.core.popularity import TrendingItems
from streamrec.models.core.recommender import Recommender, RecommenderConfig
from streamrec.models.core.scoring import ContentScorer
from streamrec.models.core.state import UserState
from streamrec.models.index.protocol import IndexedItem
from tests.support.events import event
from tests.support.fakes import BruteForceIndex

DIM = 8
K = 10


def catalogue(n: int) -> BruteForceIndex:
    rng = np.random.default_rng(0)
    index = BruteForceIndex(DIM)
    for j in range(n):
        v = rng.normal(size=DIM).astype(np.float32)
        index.upsert([IndexedItem(item_id=f"i{j}", vector=v / np.linalg.norm(v), title=f"item {j}")])
    return index


def ghost_storm(n: int = 1_000, ghosts: int = 20, start: int = 0) -> list:
    return [event(f"attacker{m % 7}", f"ghost-{m % ghosts}", start + m, "purchase") for m in range(n)]


def new_users_list(rec: Recommender, states: dict) -> list[str]:
    handled = rec.handle([event("newcomer", "ghost-0", 99_999)], states)  # a first event, about a ghost
    [ranked] = handled.lists
    return [item.item_id for item in ranked.items]


def test_a_ghost_storm_leaves_new_users_a_full_list_of_catalogue_items() -> None:
    index = catalogue(40)
    rec = Recommender(index, ContentScorer(), TrendingItems(3600.0), RecommenderConfig(k=K))
    states: dict = {}
    real = [event(f"r{n}", f"i{n % 15}", n) for n in range(60)]  # 15 catalogue items with events
    states.update(rec.handle(real, states).states)
    states.update(rec.handle(ghost_storm(start=100), states).states)  # one batch of 1,000
    ids = new_users_list(rec, states)
    assert len(ids) == K, ids
    assert all(item.startswith("i") for item in ids), ids  # catalogue items only
    [cold] = rec.recommend([UserState("nobody")])
    assert len(cold.items) == K


def test_a_new_users_list_is_full_while_the_catalogue_has_items_even_if_only_ghosts_are_counted() -> None:
    rec = Recommender(catalogue(40), ContentScorer(), TrendingItems(3600.0), RecommenderConfig(k=K))
    states: dict = {}
    states.update(rec.handle([event(f"r{n}", f"i{n}", n) for n in range(3)], states).states)  # 3 counted
    states.update(rec.handle(ghost_storm(start=100), states).states)
    assert len(new_users_list(rec, states)) == K
