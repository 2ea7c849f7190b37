"""The prequential harness's bookkeeping and the streaming baselines, on streams with known answers."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from streamrec.models.data.log import EventLog, stream_order
from streamrec.models.data.sequences import SequenceDataset
from streamrec.models.evaluation.baselines import (
    CooccurrenceBaseline,
    DecayedPopularityBaseline,
    MarkovBaseline,
    PopularityBaseline,
    RiverMFBaseline,
)
from streamrec.models.evaluation.prequential import (
    PrequentialConfig,
    micro_batches,
    prequential,
    replay_order,
)
from streamrec.models.learning.ranker import Step
from streamrec.stream.messages import Event


def stream_of(pairs: Sequence[tuple[str, str]], start: float = 0.0) -> list[Event]:
    return [
        Event(event_id=f"e{n}", user_id=user, item_id=item, type="view", ts=start + n)
        for n, (user, item) in enumerate(pairs)
    ]


class Oracle:
    """Knows the stream: lists the next item of each user at a chosen rank, or misses."""

    def __init__(self, name: str, stream: Sequence[Event], rank_of: dict[str, int | None]) -> None:
        self.name = name
        self.next: dict[str, list[str]] = {}
        for event in stream:
            self.next.setdefault(event.user_id, []).append(event.item_id)
        self.rank_of = rank_of  # item id -> 1-based rank to list it at (None: leave it out)
        self.calls: list[list[str]] = []

    def recommend(self, user_ids: Sequence[str], k: int) -> list[list[str]]:
        self.calls.append(list(user_ids))
        lists = []
        for user in user_ids:
            target = self.next[user][0]
            rank = self.rank_of.get(target)
            filler = [f"other{n}" for n in range(k)]
            if rank is not None:
                filler.insert(rank - 1, target)
            lists.append(filler[:k])
        return lists

    def learn(self, events: Sequence[Event]) -> None:
        for event in events:
            assert self.next[event.user_id].pop(0) == event.item_id


def test_known_ranks_give_known_metrics() -> None:
    # u1: a b c d; u2: x y. First events (a, x) are cold; b at rank 1, c at 2, d missed, y at 4.
    stream = stream_of([("u1", "a"), ("u2", "x"), ("u1", "b"), ("u1", "c"), ("u2", "y"), ("u1", "d")])
    oracle = Oracle("oracle", stream, {"a": 1, "x": None, "b": 1, "c": 2, "d": None, "y": 4})
    result = prequential(stream, [oracle], PrequentialConfig(k=5, windows=2))
    warm, cold = result.systems["oracle"].warm, result.systems["oracle"].cold
    assert (warm.n, warm.hits) == (4, 3)
    assert warm.hr == pytest.approx(0.75)
    assert warm.mrr == pytest.approx((1 + 1 / 2 + 1 / 4) / 4)
    assert warm.ndcg == pytest.approx((1 + 1 / 1.5849625 + 1 / 2.3219281) / 4, rel=1e-6)
    assert (cold.n, cold.hits) == (2, 1)
    assert sum(point.n for point in result.systems["oracle"].curve) == warm.n
    assert result.catalogue == 6


def test_warmup_and_sampling_measure_only_what_they_say_and_learn_everything() -> None:
    stream = stream_of([(f"u{n % 3}", f"i{n}") for n in range(30)])
    oracle = Oracle("oracle", stream, {f"i{n}": 1 for n in range(30)})
    result = prequential(stream, [oracle], PrequentialConfig(k=3, warmup=0.5, sample_every=4))
    measured = result.systems["oracle"].warm.n + result.systems["oracle"].cold.n
    assert result.measured_from == 15
    assert measured == len(range(15, 30, 4))  # positions 15, 19, 23, 27
    assert all(not queue for queue in oracle.next.values())  # every event was learned
    assert result.systems["oracle"].warm.hr == 1.0


class ServesEveryEvent(Oracle):
    """An oracle that says, like the full system, that it learns from the lists it serves."""

    serves_every_event = True


@pytest.mark.parametrize("serve_all", [True, False])
def test_a_system_that_learns_from_its_lists_is_served_at_every_event_only_when_asked(serve_all: bool) -> None:
    stream = stream_of([(f"u{n % 3}", f"i{n}") for n in range(30)])
    config = PrequentialConfig(k=3, warmup=0.5, sample_every=4, serve_all=serve_all)
    system = ServesEveryEvent("serves", stream, {f"i{n}": 1 for n in range(30)})
    result = prequential(stream, [system], config)
    measured = result.systems["serves"].warm.n + result.systems["serves"].cold.n
    assert measured == len(range(15, 30, 4))  # what is measured does not change
    assert result.systems["serves"].warm.hr == 1.0  # the measured lists are the right users'
    expected = [event.user_id for event in stream] if serve_all else [stream[p].user_id for p in range(15, 30, 4)]
    assert [user for call in system.calls for user in call] == expected  # warm-up included when serving all


def test_micro_batches_never_hold_a_user_twice_and_keep_order() -> None:
    stream = stream_of([("a", "1"), ("b", "2"), ("a", "3"), ("c", "4"), ("c", "5"), ("d", "6")])
    batches = list(micro_batches(stream, batch_size=2))
    assert [[e.item_id for e in batch] for batch in batches] == [["1", "2"], ["3", "4"], ["5", "6"]]
    for batch in micro_batches(stream, batch_size=100):
        assert len({e.user_id for e in batch}) == len(batch)


def test_replay_order_is_the_stream_order_and_keeps_each_users_order() -> None:
    sequences = {
        f"u{n}": [Step(f"i{n}-{m}", "view", 100.0 + (m // 2)) for m in range(4)] for n in range(20)
    }
    data = SequenceDataset("t", sequences, {s.item_id: "" for steps in sequences.values() for s in steps})
    first, again = replay_order(data), replay_order(data)
    assert [e.item_id for e in first] == [e.item_id for e in again]
    assert [e.ts for e in first] == sorted(e.ts for e in first)
    users_at_100 = [e.user_id for e in first if e.ts == 100.0]
    assert users_at_100 != sorted(users_at_100)  # users at one time interleave by the hash
    for user, steps in sequences.items():
        assert [e.item_id for e in first if e.user_id == user] == [s.item_id for s in steps]
    assert len(replay_order(data, limit=7)) == 7
    events = [Event(event_id=e.event_id, user_id=e.user_id, item_id=e.item_id, type=e.type, ts=e.ts) for e in first]
    derived = SequenceDataset.from_log(EventLog("t", stream_order(events), data.item_text))
    assert [(e.user_id, e.item_id) for e in replay_order(derived)] == [(e.user_id, e.item_id) for e in stream_order(events)]


def test_duplicate_system_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        prequential([], [PopularityBaseline(), PopularityBaseline()])


def test_markov_follows_the_last_item_and_never_lists_consumed_or_unseen_items() -> None:
    model = MarkovBaseline()
    model.learn(stream_of([("u1", "a"), ("u2", "a")]))
    model.learn(stream_of([("u1", "b"), ("u2", "c")], start=10))
    model.learn(stream_of([("u3", "a")], start=20))
    model.learn(stream_of([("u4", "a")], start=30))
    model.learn(stream_of([("u4", "b")], start=40))
    [ranked] = model.recommend(["u3"], k=10)
    assert ranked[0] == "b"  # a -> b twice (u1, u4), a -> c once
    assert set(ranked) == {"b", "c"}  # a consumed; nothing else seen
    assert model.recommend(["u4"], k=10)[0][0] == "c"  # after b nothing followed: popularity


def test_cooccurrence_scores_items_seen_with_the_users_recent_items() -> None:
    model = CooccurrenceBaseline(window=2)
    model.learn(stream_of([("u1", "a"), ("u1", "b"), ("u1", "c"), ("u2", "x"), ("u2", "y"), ("u3", "a")]))
    ranked = model.recommend(["u3"], k=2)[0]
    assert ranked == ["b", "c"]  # a met b (and c, through u1's window of 2)


def test_normalised_cooccurrence_prefers_a_specific_partner_to_a_popular_item() -> None:
    # "a" met "b" once and "hit" once; "hit" is also consumed by everyone else
    pairs = [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "hit")]
    pairs += [(f"v{n}", item) for n in range(8) for item in (f"z{n}", "hit")]
    pairs += [("u4", "a")]
    normalised, raw = CooccurrenceBaseline(window=3), CooccurrenceBaseline(window=3, normalise=False)
    for model in (normalised, raw):
        model.learn(stream_of(pairs))
    assert normalised.recommend(["u4"], k=1) == [["b"]]
    assert raw.recommend(["u4"], k=1) == [["hit"]]  # equal counts: popularity decides


def test_popularity_and_decayed_popularity_disagree_about_old_hits() -> None:
    stream = stream_of([("u1", "old"), ("u2", "old"), ("u3", "old")]) + stream_of(
        [("u4", "new"), ("u5", "new")], start=10_000
    )
    popular, trending = PopularityBaseline(), DecayedPopularityBaseline(half_life_s=60.0)
    for model in (popular, trending):
        model.learn(stream)
    assert popular.recommend(["u9"], k=1) == [["old"]]
    assert trending.recommend(["u9"], k=1) == [["new"]]


def test_river_mf_learns_a_plain_block_pattern() -> None:
    # Two groups of users, each consumes its own items: MF should list the own group's items.
    pairs = []
    for rep in range(30):
        for u in range(8):
            group = u % 2
            pairs.append((f"u{u}", f"g{group}-{(rep + u) % 6}"))
    model = RiverMFBaseline("FunkMF", n_factors=4, lr=0.1, negatives=3, seed=1)
    model.learn(stream_of(pairs))
    fresh = stream_of([("n0", "g0-0"), ("n0", "g0-1"), ("n0", "g0-2")], start=1e4)
    for event in fresh:
        for _ in range(20):
            model.learn([event])
    ranked = model.recommend(["n0"], k=3)[0]
    assert sum(item.startswith("g0-") for item in ranked) >= 2
