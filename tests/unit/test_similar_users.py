"""The similar-users signal: neighbours by overlapping recent items, bounded, batch-independent,
and in the core as a candidate source with its own reason.

Pure logic: the item index is the brute-force stand-in (tests/support/fakes.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamrec.models.core.collaborative import CollaborativeConfig, CollaborativeSignals
from streamrec.models.core.pipeline import Pipeline
from streamrec.models.core.popularity import TrendingItems
from streamrec.models.core.ranking import FEATURES, PEERS_REASON
from streamrec.models.core.recommender import Recommender, RecommenderConfig
from streamrec.models.core.scoring import ContentScorer
from streamrec.models.core.similar_users import EMPTY, SimilarUsers, SimilarUsersConfig
from streamrec.models.index.protocol import IndexedItem
from streamrec.stream.settings import Settings
from tests.support.events import event
from tests.support.fakes import BruteForceIndex


def _scores(users: SimilarUsers, seeds: list[int]) -> dict[int, float]:
    found = users.scores_batch([seeds])[0]
    return dict(zip(found.rows.tolist(), found.scores.tolist()))


def test_the_users_sharing_more_recent_items_count_more() -> None:
    users = SimilarUsers()
    for user, items in {"close": [1, 2, 3, 10], "far": [1, 20], "stranger": [5, 30]}.items():
        for item in items:
            users.learn(user, item)
    scores = _scores(users, [3, 2, 1])
    assert scores[10] > scores[20] > 0  # "close" shares three items, "far" one
    assert 30 not in scores  # shares nothing


def test_a_query_does_not_depend_on_who_else_is_asked_with_it() -> None:
    users = SimilarUsers()
    rng = np.random.default_rng(0)
    for n in range(300):
        users.learn(f"u{n % 40}", int(rng.integers(0, 60)))
    queries = [[1, 2, 3], [4], [], [5, 6, 7, 8, 9], [99_999]]
    together = users.scores_batch(queries)
    for query, found in zip(queries, together):
        alone = users.scores_batch([query])[0]
        assert np.array_equal(found.rows, alone.rows)
        assert np.allclose(found.scores, alone.scores)


def test_a_repeated_item_moves_to_the_newest_place_and_is_kept_once() -> None:
    users = SimilarUsers(SimilarUsersConfig(window=3))
    for item in (1, 2, 1, 3, 4):
        users.learn("u", item)
    row = users._row_of["u"]
    assert users._items[row, : users._lengths[row]].tolist() == [1, 3, 4]  # 2 fell out of the window
    assert (users._users[1] == row).sum() == 1


def test_forgotten_users_leave_the_item_rings() -> None:
    users = SimilarUsers(SimilarUsersConfig(max_users=2))
    users.learn("old", 1)
    users.learn("old", 7)
    users.learn("a", 2)
    users.learn("b", 3)  # a third user: "old" (the least recently active) is forgotten
    assert len(users) == 2
    assert _scores(users, [1]) == {}  # nobody remembered took item 1
    users.learn("c", 1)
    assert set(_scores(users, [1])) == {1}  # c's row (maybe old's, reused) holds only c's items


def test_rows_stay_right_when_the_vocabulary_is_compacted() -> None:
    signals = CollaborativeSignals(CollaborativeConfig(max_items=20))
    for n in range(10):  # a habit: a, then b, then c
        for position, item in enumerate(["a", "b", "c"]):
            signals.learn(["a", "b", "c"][:position], item, user_id=f"habit{n}")
    for j in range(60):  # junk items seen once each force a compaction
        signals.learn([], f"junk{j}", user_id=f"junk{j}")
    assert len(signals.vocabulary) < 40
    [best] = signals.similar_users_batch([["a", "b"]])
    assert {item for item, _ in best} == {"a", "b", "c"}  # the habit's items, by their names


def test_a_remap_keeps_each_users_surviving_items_in_order_and_renumbers_the_rings() -> None:
    users = SimilarUsers()
    for item in (0, 1, 2, 3):
        users.learn("u1", item)
    for item in (3, 1):
        users.learn("u2", item)
    new_row = np.array([0, -1, 1, 2])  # item 1 dropped, 2 and 3 move down one row
    users.remap(new_row, n_items=3)
    u1, u2 = users._row_of["u1"], users._row_of["u2"]
    assert users._items[u1, : users._lengths[u1]].tolist() == [0, 1, 2]  # was 0, 2, 3: newest last
    assert users._items[u2, : users._lengths[u2]].tolist() == [2]
    assert (users._items[u1, users._lengths[u1]:] == EMPTY).all()
    assert sorted(users._users[2][users._users[2] >= 0].tolist()) == sorted([u1, u2])  # old item 3's ring


def test_the_core_recommends_what_similar_users_took_with_its_reason() -> None:
    rng = np.random.default_rng(3)
    index = BruteForceIndex(16)
    for j in range(80):
        v = rng.normal(size=16).astype(np.float32)
        index.upsert([IndexedItem(item_id=f"i{j}", vector=v / np.linalg.norm(v), title=f"item {j}")])
    rec = Recommender(
        index=index,
        scorer=ContentScorer(),
        trending=TrendingItems(half_life_s=3600.0),
        config=RecommenderConfig(k=5, seed_items=3, neighbours_per_item=5, profile_items=10),
    )
    # A taste shared by a group: i1..i4 in any order, then i60, which never follows any one
    # item often enough to win on transitions alone; everyone else browses at random.
    events, t = [], 0
    for n in range(30):
        taste = [f"i{j}" for j in rng.permutation([1, 2, 3, 4])]
        for item in [*taste, "i60"]:
            events.append(event(f"group{n}", item, t))
            t += 1
    for n in range(60):
        for j in rng.integers(5, 59, size=4):
            events.append(event(f"random{n}", f"i{j}", t))
            t += 1
    states: dict = {}
    for start in range(0, len(events), 32):
        states.update(rec.handle(events[start : start + 32], states).states)
    rec.blend.weights[:] = 0.0  # only the similar-users signal ranks
    rec.blend.weights[FEATURES.index("peers")] = 1.0
    newcomer = [event("newcomer", item, t + n) for n, item in enumerate(["i3", "i1", "i4", "i2"])]
    for e in newcomer:
        handled = rec.handle([e], states)
        states.update(handled.states)
    [ranked] = handled.lists
    assert ranked.items[0].item_id == "i60", [item.item_id for item in ranked.items]
    assert ranked.items[0].reason == PEERS_REASON


def test_the_workers_pipeline_bounds_similar_users_by_the_signals_setting(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, index_mode="client", qdrant_url=":memory:", device="cpu",
                        signals_max_users=7)
    pipeline = Pipeline.from_settings(settings)
    try:
        signals = pipeline.recommender.collaborative
        assert signals is not None
        for n in range(20):
            signals.learn([], "i1", user_id=f"u{n}")
        assert len(signals.similar_users) == 7
    finally:
        pipeline.close()
