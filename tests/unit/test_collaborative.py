"""The hybrid core's collaborative half: counts learned per event, bounded, used as sources and
features, and a blend that learns which signal predicts what users take next.

Pure logic: the item index is the brute-force stand-in (tests/support/fakes.py).
"""

from __future__ import annotations

import numpy as np

from streamrec.models.core.blend import OnlineBlend
from streamrec.models.core.collaborative import FEATURES as COLLABORATIVE_FEATURES
from streamrec.models.core.collaborative import CollaborativeConfig, CollaborativeSignals
from streamrec.models.core.popularity import TrendingItems
from streamrec.models.core.ranking import FEATURES
from streamrec.models.core.recommender import Recommender, RecommenderConfig
from streamrec.models.core.scoring import ContentScorer
from streamrec.models.core.state import UserState
from streamrec.models.index.protocol import IndexedItem
from tests.support.events import event
from tests.support.fakes import BruteForceIndex

DIM = 16


def _random_catalogue(n: int = 60, seed: int = 0) -> BruteForceIndex:
    """Items whose text says nothing about what goes together (random directions)."""
    rng = np.random.default_rng(seed)
    index = BruteForceIndex(DIM)
    for j in range(n):
        v = rng.normal(size=DIM).astype(np.float32)
        index.upsert([IndexedItem(item_id=f"i{j}", vector=v / np.linalg.norm(v), title=f"item {j}")])
    return index


def _learn(signals: CollaborativeSignals, sequences: list[list[str]]) -> None:
    for items in sequences:
        for n, item in enumerate(items):
            signals.learn(items[:n], item)


def test_transitions_are_directed_and_co_visitation_is_not() -> None:
    signals = CollaborativeSignals()
    _learn(signals, [["a", "b"]] * 3)
    assert [item for item, _ in signals.next_after(["a"])] == ["b"]
    assert signals.next_after(["b"]) == []  # nothing ever came after b
    assert [item for item, _ in signals.covisited(["b"])] == ["a"]


def test_second_order_transitions_tell_apart_what_follows_a_pair() -> None:
    signals = CollaborativeSignals()
    _learn(signals, [["x", "m", "after-xm"]] * 3 + [["y", "m", "after-ym"]] * 3)
    features = signals.features(["x", "m"], ["after-xm", "after-ym"])  # (2, F)
    from streamrec.models.core.collaborative import FEATURES as COUNTS

    next1, next2 = COUNTS.index("next"), COUNTS.index("next2")
    assert abs(features[0, next1] - features[1, next1]) < 1e-3  # after m alone: a tie
    assert features[0, next2] == 1.0 and features[1, next2] == 0.0  # after (x, m): only one


def test_sequential_rules_follow_an_item_past_a_step_in_between_one_way_only() -> None:
    signals = CollaborativeSignals()
    # a is followed by b two steps on, with a different item in between each time
    _learn(signals, [["a", f"noise{n}", "b"] for n in range(4)])
    followers = [item for item, _ in signals.followers_batch([["a"]])[0]]
    assert followers[0] == "b"  # each noise item followed a once, b four times (at gap 2)
    assert "b" not in [item for item, _ in signals.next_after(["a"])]  # never *right* after a
    assert signals.followers_batch([["b"]])[0] == []  # directed: nothing came after b
    col = COLLABORATIVE_FEATURES.index("follows")
    features = signals.features(["a"], ["b", "noise0", "a"])  # (3, F)
    assert features[0, col] == 1.0 and 0 < features[1, col] < 1.0 and features[2, col] == 0.0


def test_newest_seeds_lead_what_follows() -> None:
    signals = CollaborativeSignals()
    _learn(signals, [["old", "after-old"]] * 3 + [["new", "after-new"]] * 3)
    found = signals.follows_scores_batch([["old", "new"]])[0]  # newest last: "new" leads
    scores = dict(zip([signals.vocabulary.names[row] for row in found.rows.tolist()], found.scores.tolist()))
    assert scores["after-new"] > scores["after-old"] > 0


def test_co_visitation_is_cosine_so_a_popular_item_does_not_win_for_being_popular() -> None:
    signals = CollaborativeSignals()
    # "hit" goes with everything (40 users take it after something random); "pair" goes with
    # "a" only: 4 users took a then pair, 6 took a then hit.
    _learn(signals, [[f"r{n}", "hit"] for n in range(40)])
    _learn(signals, [["a", "pair"]] * 4 + [["a", "hit"]] * 6)
    row = signals.vocabulary.get
    raw = signals.covisit.rows[row("a")]
    assert raw[row("hit")] > raw[row("pair")]  # more pairs with "hit" in raw counts
    assert [item for item, _ in signals.covisited(["a"])][:2] == ["pair", "hit"]  # cosine


def test_older_seeds_count_less_than_the_newest() -> None:
    signals = CollaborativeSignals()
    _learn(signals, [["old", "with-old"]] * 3 + [["new", "with-new"]] * 3)
    scores = signals.covisit_scores(["old", "new"])  # "new" is the user's newest item
    with_new, with_old = scores.lookup(np.array([signals.vocabulary.get("with-new"), signals.vocabulary.get("with-old")]))
    assert with_new > with_old > 0


def test_memory_stays_bounded() -> None:
    config = CollaborativeConfig(max_neighbours=5, max_items=50, max_pairs=40)
    signals = CollaborativeSignals(config)
    rng = np.random.default_rng(1)
    _learn(signals, [[f"i{j}" for j in rng.integers(0, 500, size=20)] for _ in range(200)])
    assert len(signals.covisit.rows) <= config.max_items
    assert len(signals.next2.rows) <= config.max_pairs
    assert max(len(row) for row in signals.covisit.rows.values()) <= 2 * config.max_neighbours
    assert len(signals.vocabulary) <= 2 * config.max_items  # compacted to the most popular
    assert signals.covisited([f"i{j}" for j in range(500)])  # still answers after compaction


def test_a_flood_of_junk_items_compacts_the_vocabulary_but_keeps_real_patterns() -> None:
    signals = CollaborativeSignals(CollaborativeConfig(max_items=20))
    _learn(signals, [["a", "b", "c"]] * 10)
    _learn(signals, [[f"junk{j}"] for j in range(200)])  # seen once each, never again
    assert len(signals.vocabulary) < 40
    assert [item for item, _ in signals.covisited(["a"])] == ["b", "c"]
    assert [item for item, _ in signals.next_after(["a", "b"])] == ["c"]
    assert signals.most_popular(1)[0][0] in {"a", "b", "c"}


def test_counts_decay_so_a_new_habit_replaces_an_old_one() -> None:
    signals = CollaborativeSignals(CollaborativeConfig(half_life_events=20.0, short_half_life_events=5.0))
    _learn(signals, [["a", "old"]] * 10)
    _learn(signals, [["a", "new"]] * 8)  # fewer, but recent
    assert [item for item, _ in signals.next_after(["a"])][0] == "new"
    assert signals.most_popular(1, now=True)[0][0] in {"a", "new"}


def test_the_worker_core_recommends_a_planted_co_visitation_pattern_with_its_reason() -> None:
    index = _random_catalogue()
    rec = Recommender(
        index=index,
        scorer=ContentScorer(),
        trending=TrendingItems(half_life_s=3600.0),
        config=RecommenderConfig(k=5, seed_items=3, neighbours_per_item=5, profile_items=10),
    )
    states: dict = {}
    # The crowd: whoever takes i7 also takes i42 (text says nothing of it), among random noise.
    rng = np.random.default_rng(2)
    events = []
    for n in range(40):
        user = f"crowd{n}"
        noise = [f"i{j}" for j in rng.integers(0, 60, size=3) if j not in (7, 42)]
        for m, item in enumerate([*noise, "i7", "i42"]):
            events.append(event(user, item, 100 * n + m))
    for start in range(0, len(events), 32):
        states.update(rec.handle(events[start : start + 32], states).states)
    handled = rec.handle([event("newcomer", "i7", 10_000)], states)
    [ranked] = handled.lists
    ids = [item.item_id for item in ranked.items]
    assert ids[0] == "i42", ids
    assert ranked.items[0].reason in {"often viewed with item 7", "often next after item 7"}
    assert ranked.trigger is not None and ranked.trigger.item_id == "i7"
    # Context features describe the user, not the item: however much they weigh, they are
    # never the reason shown.
    rec.blend.weights[[FEATURES.index("history"), FEATURES.index("next_support")]] = 1_000.0
    [again] = rec.handle([event("newcomer2", "i7", 10_001)], handled.states).lists
    assert again.items[0].item_id == "i42"
    assert again.items[0].reason in {"often viewed with item 7", "often next after item 7"}


def test_candidate_recall_counts_next_items_among_the_candidates_and_their_source() -> None:
    index = _random_catalogue()
    rec = Recommender(index=index, scorer=ContentScorer(), trending=TrendingItems(half_life_s=3600.0),
                      config=RecommenderConfig(k=5, seed_items=3, neighbours_per_item=5, profile_items=10))
    states: dict = {}
    for n in range(30):  # everyone goes i7 -> i42
        states.update(rec.handle([event(f"u{n}", "i7", 10 * n)], states).states)
        states.update(rec.handle([event(f"u{n}", "i42", 10 * n + 1)], states).states)
    recall = rec.candidate_recall.as_dict()
    assert recall["judged"] == 30  # every user's second event, against the list after their first
    assert recall["held"] >= 25 and recall["recall"] == round(recall["held"] / 30, 4)
    assert set(recall["by_source"]) <= {"next", "covisit", "peers", "neighbour", "trending"}
    assert max(recall["by_source"], key=recall["by_source"].get) in {"next", "covisit"}  # found by the counts
    states.update(rec.handle([event("u0", "nowhere", 1_000)], states).states)  # not a catalogue item
    assert rec.candidate_recall.judged == 31 and rec.candidate_recall.held == recall["held"]


def test_cold_users_get_the_popular_items_of_the_catalogue_only() -> None:
    index = _random_catalogue(n=20)
    rec = Recommender(index, ContentScorer(), TrendingItems(3600.0), RecommenderConfig(k=5))
    ghosts = [event(f"g{n}", f"ghost-{n % 3}", n) for n in range(300)]  # not in the catalogue
    real = [event(f"r{n}", f"i{n % 4}", 300 + n) for n in range(20)]
    states: dict = {}
    for start in range(0, len(ghosts + real), 64):
        states.update(rec.handle((ghosts + real)[start : start + 64], states).states)
    [ranked] = rec.recommend([UserState("nobody")])
    ids = [item.item_id for item in ranked.items]
    # Every catalogue item with events is listed first, however many ghosts are more
    # popular; the list is filled up from the catalogue (never short while it has items).
    assert sorted(ids[:4]) == ["i0", "i1", "i2", "i3"]
    assert len(ids) == 5 and not any(item.startswith("ghost") for item in ids)


def test_the_blend_learns_which_signal_predicts_the_next_item() -> None:
    blend = OnlineBlend(FEATURES, [1.0] * len(FEATURES))
    rng = np.random.default_rng(3)
    covisit = FEATURES.index("covisit")
    for _ in range(300):
        features = rng.random((20, len(FEATURES))).astype(np.float32)  # (C, F)
        blend.learn(features, consumed=int(np.argmax(features[:, covisit])))
    weights = blend.as_dict()
    assert weights["covisit"] == max(weights.values())
    assert blend.updates == 300


def test_context_features_say_how_much_the_counts_know() -> None:
    """`covisit_seeds`: the share of the user's recent items a candidate goes with;
    `covisit_last`: co-visited with the newest item itself; `next_support` grows with how often
    the last item was followed; `history` with the user's distinct recent items."""
    signals = CollaborativeSignals()
    _learn(signals, [["a", "b", "x"], ["c", "x"], ["b", "y"]] + [["a", "z"]] * 30)
    columns = {name: i for i, name in enumerate(COLLABORATIVE_FEATURES)}
    table = signals.features(["c", "b"], ["x", "y", "z"])  # (C=3, F) newest item: b
    x, y, z = range(3)
    assert table[x, columns["covisit_seeds"]] == 1.0  # x went with both b and c
    assert 0 < table[y, columns["covisit_seeds"]] < 1.0  # y with b only
    assert table[z, columns["covisit_seeds"]] == 0.0
    assert table[x, columns["covisit_last"]] > 0 and table[y, columns["covisit_last"]] > 0
    assert table[z, columns["covisit_last"]] == 0.0
    well_followed = signals.features(["a"], ["z"])[0, columns["next_support"]]
    rarely_followed = signals.features(["c"], ["x"])[0, columns["next_support"]]
    assert 0 < rarely_followed < well_followed < 1.0
    assert signals.features(["a", "b", "c"], ["x"])[0, columns["history"]] > table[0, columns["history"]]
