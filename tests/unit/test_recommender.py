"""The pure core: candidates, exclusion of consumed items, reasons, batching, cold start.

The item index here is a brute-force in-memory stand-in (pure logic under test); the real
Qdrant backends are covered by tests/integration/test_index_contract.py and the e2e test.
"""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.models.core.popularity import TrendingItems
from streamrec.models.core.recommender import (
    TRENDING_REASON,
    Recommender,
    RecommenderConfig,
    UserBatch,
)
from streamrec.models.core.scoring import ContentScorer
from streamrec.models.core.state import UserState
from streamrec.models.index.protocol import IndexedItem
from tests.support.events import event
from tests.support.fakes import BruteForceIndex

DIM = 8


def _clustered_catalogue(n_clusters: int = 3, per_cluster: int = 10, seed: int = 0) -> BruteForceIndex:
    """Items in tight clusters: cluster c's items point near axis c."""
    rng = np.random.default_rng(seed)
    index = BruteForceIndex(DIM)
    for c in range(n_clusters):
        for j in range(per_cluster):
            v = np.zeros(DIM, dtype=np.float32)
            v[c] = 1.0
            v += rng.normal(0, 0.05, DIM).astype(np.float32)
            v /= np.linalg.norm(v)
            index.upsert([IndexedItem(item_id=f"c{c}-{j}", vector=v, title=f"cluster {c} item {j}")])
    return index


def _recommender(index: BruteForceIndex, k: int = 5) -> Recommender:
    return Recommender(
        index=index,
        scorer=ContentScorer(),
        trending=TrendingItems(half_life_s=3600.0),
        config=RecommenderConfig(k=k, seed_items=3, neighbours_per_item=10, profile_items=10),
    )


def test_recommends_similar_unconsumed_items_with_reasons() -> None:
    rec = _recommender(_clustered_catalogue())
    user = UserBatch(UserState("alice"), [event("alice", f"c1-{j}", j) for j in range(3)])
    [ranked] = rec.process_batch([user])
    ids = [item.item_id for item in ranked.items]
    assert len(ids) == 5
    assert all(i.startswith("c1-") for i in ids), ids  # her cluster
    assert not set(ids) & {"c1-0", "c1-1", "c1-2"}  # nothing she consumed
    assert all(item.reason and item.reason.startswith("similar to cluster 1") for item in ranked.items)
    scores = [item.score for item in ranked.items]
    assert scores == sorted(scores, reverse=True)
    assert ranked.trigger is not None and ranked.trigger.event_id == "alice-2"


def test_cold_user_gets_trending_items() -> None:
    rec = _recommender(_clustered_catalogue())
    # Others made c2-0 and c2-1 popular.
    crowd = [UserBatch(UserState(f"u{n}"), [event(f"u{n}", f"c2-{n % 2}", n, "purchase")]) for n in range(6)]
    rec.process_batch(crowd)
    # A newcomer whose only item is not in the catalogue: no usable history.
    [ranked] = rec.process_batch([UserBatch(UserState("bob"), [event("bob", "not-in-catalogue", 99)])])
    assert [item.item_id for item in ranked.items][:2] in (["c2-0", "c2-1"], ["c2-1", "c2-0"])
    assert all(item.reason == TRENDING_REASON for item in ranked.items)


def test_batched_lists_equal_one_by_one_lists() -> None:
    """Padding users of different history lengths into one tensor must not change results."""
    histories = {
        "a": ["c0-1"],
        "b": ["c1-1", "c1-2", "c1-3", "c1-4"],
        "c": ["c2-5", "c0-3"],
        "d": ["unknown-item", "c1-7"],
    }

    def run(together: bool) -> dict[str, list[str]]:
        rec = _recommender(_clustered_catalogue())
        users = [
            UserBatch(UserState(u), [event(u, item, n) for n, item in enumerate(items)])
            for u, items in histories.items()
        ]
        if together:
            ranked = rec.process_batch(users)
        else:
            rec.learn(users)
            ranked = [rec.recommend([user.state])[0] for user in users]
        return {r.user_id: [i.item_id for i in r.items] for r in ranked}

    assert run(together=True) == run(together=False)


def test_empty_catalogue_and_no_history_yield_empty_lists_not_errors() -> None:
    rec = _recommender(BruteForceIndex(DIM))
    [ranked] = rec.process_batch([UserBatch(UserState("zed"), [event("zed", "x", 1)])])
    assert ranked.items == []


@pytest.mark.parametrize("k", [1, 3, 12])
def test_list_length_is_k_when_enough_candidates(k: int) -> None:
    rec = _recommender(_clustered_catalogue(), k=k)
    [ranked] = rec.process_batch([UserBatch(UserState("al"), [event("al", "c0-0", 1)])])
    assert len(ranked.items) == k
    assert len({i.item_id for i in ranked.items}) == k


def _ranker_scorer(index: BruteForceIndex, store_dir):
    import torch

    from streamrec.models.learning.ranker import Ranker, RankerConfig
    from streamrec.models.learning.serving import open_scorer
    from streamrec.models.learning.store import DirectoryModelStore

    torch.manual_seed(0)
    config = RankerConfig(text_dim=DIM, dim=8, max_len=5, layers=1, heads=2, id_buckets=64, dropout=0.0)
    store = DirectoryModelStore(store_dir)
    manifest = store.save(Ranker(config).state_dict(), config.to_dict())
    retrieval = BruteForceIndex(config.dim)
    scorer = open_scorer(store, None, index, lambda name, dim: retrieval, "items")
    return scorer, manifest, store


def test_a_ranker_checkpoint_serves_lists_in_its_own_order_with_its_version(tmp_path) -> None:
    import torch

    index = _clustered_catalogue()
    scorer, manifest, _ = _ranker_scorer(index, tmp_path)
    assert scorer.retrieval.count() == index.count()  # this version's vectors for every item
    rec = Recommender(
        index=index,
        scorer=scorer,
        trending=TrendingItems(half_life_s=3600.0),
        config=RecommenderConfig(k=5, seed_items=2, neighbours_per_item=6, profile_items=10),
    )
    assert rec.model_version == manifest.version
    # A blend that listens to the model alone ranks in the model's own order.
    rec.blend.weights[:] = [1.0 if name == "model" else 0.0 for name in rec.blend.names]
    events = [event("alice", f"c1-{j}", j, "click") for j in range(3)]
    [ranked] = rec.process_batch([UserBatch(UserState("alice"), events)])
    ids = [item.item_id for item in ranked.items]
    assert len(ids) == 5 and not set(ids) & {"c1-0", "c1-1", "c1-2"}
    # The order is the ranker's own w·(u ⊙ h) + b, recomputed here from its parts.
    text = {item_id: item.vector for item_id, item in index.items.items()}
    user = scorer.user_vectors([[e for e in events]], text)  # (1, D)
    candidates = scorer.item_vectors(ids, np.stack([text[i] for i in ids]))  # (5, D)
    with torch.inference_mode():
        expected = scorer.ranker.score(user, torch.from_numpy(candidates))[0].tolist()
    assert expected == sorted(expected, reverse=True)
    assert [item.score for item in ranked.items] == sorted((item.score for item in ranked.items), reverse=True)
    assert all(
        item.reason.startswith("similar to cluster 1") or item.reason == "picked for you after cluster 1 item 2"
        for item in ranked.items
    ), [item.reason for item in ranked.items]
    # A cold user still gets trending items, and new catalogue items reach the retrieval index.
    [cold] = rec.recommend([UserState("bob")])
    assert [item.reason for item in cold.items] == [TRENDING_REASON] * len(cold.items)
    fresh = IndexedItem("new-1", index.items["c0-0"].vector, "brand new")
    index.upsert([fresh])
    scorer.index_items([fresh])
    assert "new-1" in scorer.retrieval.get(["new-1"])


def test_a_pinned_checkpoint_that_is_missing_is_an_error_and_no_checkpoint_means_none(tmp_path) -> None:
    from streamrec.models.learning.serving import open_scorer
    from streamrec.models.learning.store import DirectoryModelStore, ModelStoreError

    index = _clustered_catalogue()
    empty = DirectoryModelStore(tmp_path / "empty")
    assert open_scorer(empty, None, index, lambda name, dim: BruteForceIndex(dim), "items") is None
    _, _, store = _ranker_scorer(index, tmp_path / "store")
    with pytest.raises(ModelStoreError):
        open_scorer(store, "ranker-missing", index, lambda name, dim: BruteForceIndex(dim), "items")


def test_a_batch_read_again_is_learned_once_and_still_answered() -> None:
    """After a crash, uncommitted events come again: same state, same trigger, no double counts."""
    rec = _recommender(_clustered_catalogue())
    events = [event("alice", f"c1-{j}", j, kind="click") for j in range(3)]
    state = UserState("alice")
    rec.process_batch([UserBatch(state, events)])
    learned, trending = state.to_dict(), rec.trending.top(5)
    outcomes = rec.learn([UserBatch(state, events)])
    assert outcomes == [] and rec.trending.top(5) == trending
    [ranked] = rec.process_batch([UserBatch(state, events[1:])])
    assert ranked.trigger == events[-1] and len(ranked.items) == 5
    assert {k: v for k, v in state.to_dict().items() if k != "served"} == {
        k: v for k, v in learned.items() if k != "served"
    }


def _served_candidates(rec: Recommender, states: list[UserState], user_id: str) -> set[str]:
    """What `user_id`'s list was chosen from when `states` are recommended together (no
    learning: the same counts for every call)."""
    rec.recommend(states)
    served = rec.served.take(user_id)
    assert served is not None
    return set(served.ids)


def test_a_users_candidates_do_not_depend_on_who_else_is_in_the_batch() -> None:
    """The popular candidates a user gets are the same alone and beside a user with a long
    history (the popular list was once cut to a length set by the batch's longest history)."""
    t0 = 1_750_000_000.0
    rec = _recommender(_clustered_catalogue(per_cluster=30))
    # Popular over all time: the c0 items, three events each, early. Trending now: the c1 items,
    # one event each, ten hours (ten trending half-lives) later.
    rec.process_batch([UserBatch(UserState(f"e{j}"), [event(f"e{j}", f"c0-{j}", n, ts=t0 + n) for n in range(3)])
                       for j in range(30)])
    rec.process_batch([UserBatch(UserState(f"l{j}"), [event(f"l{j}", f"c1-{j}", 0, ts=t0 + 36_000 + j)])
                       for j in range(30)])
    light, heavy = UserState("light"), UserState("heavy")
    rec.learn([UserBatch(light, [event("light", "c2-0", 0, ts=t0 + 36_100)])])
    rec.learn([UserBatch(heavy, [event("heavy", f"c2-{n}", n, ts=t0 + 36_100 + n) for n in range(1, 30)])])

    alone, beside = _served_candidates(rec, [light], "light"), _served_candidates(rec, [light, heavy], "light")
    assert alone == beside, (sorted(alone - beside), sorted(beside - alone))


def test_a_users_co_visited_candidates_do_not_depend_on_who_else_is_in_the_batch() -> None:
    """Items co-visited with a user's history stay their candidates when a batch mate
    already has them from another source (they were once dropped for everyone but the
    first user of the batch to name them)."""
    rec = _recommender(_clustered_catalogue(per_cluster=12))
    # Two users took c0-0 and then c2-5: c2-5 goes with c0-0 by co-visitation, not by text;
    # 24 other items, three events each, keep it out of the popular candidates.
    for j in range(2):
        rec.process_batch([UserBatch(UserState(f"p{j}"), [event(f"p{j}", "c0-0", 0), event(f"p{j}", "c2-5", 1)])])
    for j, item in enumerate([f"c1-{n}" for n in range(12)] + [f"c0-{n}" for n in range(1, 12)] + ["c2-0"]):
        rec.process_batch([UserBatch(UserState(f"q{j}"), [event(f"q{j}", item, n) for n in range(3)])])
    fan, mate = UserState("fan"), UserState("mate")
    rec.learn([UserBatch(fan, [event("fan", "c0-0", 2)])])
    rec.learn([UserBatch(mate, [event("mate", "c2-4", 3)])])  # c2-5 is among mate's text neighbours

    alone, beside = _served_candidates(rec, [fan], "fan"), _served_candidates(rec, [mate, fan], "fan")
    assert "c2-5" in alone
    assert alone == beside, (sorted(alone - beside), sorted(beside - alone))
