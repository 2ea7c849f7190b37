"""UserState: bounded memory, River statistics checked against numpy, plain-data round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamrec.models.core.state import UserState
from streamrec.stream.messages import Event

T0 = 1_700_000_000.0


def _events(gaps: list[float], user: str = "u") -> list[Event]:
    ts, out = T0, []
    kinds = ["view", "click", "purchase"]
    for n, gap in enumerate(gaps):
        ts += gap
        out.append(Event(event_id=f"e{n}", user_id=user, item_id=f"i{n % 7}", type=kinds[n % 3], ts=ts))
    return out


def test_inter_arrival_statistics_match_numpy_after_every_update() -> None:
    rng = np.random.default_rng(3)
    gaps = rng.exponential(30.0, size=40).tolist()
    state = UserState("u")
    seen = []
    for event in _events(gaps):
        state.learn(event)
        seen.append(event.ts)
        if len(seen) >= 3:
            diffs = np.diff(seen)
            snap = state.snapshot()
            assert snap["gap_mean_s"] == pytest.approx(diffs.mean(), rel=1e-9)
            assert snap["gap_std_s"] == pytest.approx(diffs.std(ddof=1), rel=1e-9)


def test_history_and_consumed_are_bounded() -> None:
    state = UserState("u", max_history=5, max_consumed=4)
    for n in range(12):
        state.learn(Event(event_id=f"e{n}", user_id="u", item_id=f"i{n}", type="view", ts=T0 + n))
    assert [i.item_id for i in state.recent] == [f"i{n}" for n in range(7, 12)]
    assert state.consumed == frozenset(f"i{n}" for n in range(8, 12))
    assert state.n_events == 12 and state.last_event_id == "e11" and not state.is_cold


def test_counts_per_type() -> None:
    state = UserState("u")
    for event in _events([1.0] * 6):
        state.learn(event)
    assert state.counts == {"view": 2, "click": 2, "purchase": 2}
    assert state.snapshot()["rate_click_per_s"] > 0


def test_round_trip_through_json_continues_identically() -> None:
    events = _events([5.0, 7.0, 1.0, 20.0, 3.0, 9.0])
    original = UserState("u")
    for event in events[:4]:
        original.learn(event)
    restored = UserState.from_dict(json.loads(json.dumps(original.to_dict())))
    assert restored.to_dict() == original.to_dict()
    for event in events[4:]:
        original.learn(event)
        restored.learn(event)
    assert restored.snapshot() == original.snapshot()
    assert restored.recent == original.recent and restored.consumed == original.consumed


@pytest.mark.parametrize("bad", [{"v": 99}, {"v": 1, "user_id": "u"}, [], {"v": 1, "user_id": "u", "recent": [[1]]}])
def test_unknown_or_malformed_state_is_refused(bad) -> None:
    with pytest.raises(ValueError):
        UserState.from_dict(bad)


def test_out_of_order_events_are_counted_not_fatal() -> None:
    state = UserState("u")
    state.learn(Event(event_id="a", user_id="u", item_id="x", type="view", ts=T0 + 100))
    state.learn(Event(event_id="b", user_id="u", item_id="y", type="view", ts=T0))
    assert state.out_of_order == 1
    assert state.last_ts == T0 + 100
    assert state.snapshot()["gap_mean_s"] == 0.0


def test_an_event_learned_again_changes_nothing() -> None:
    """A crash re-reads events whose state is already in the changelog: they count once."""
    events = _events([7.0] * 6)
    once = UserState("u", max_history=10)
    for event in events:
        assert once.learn(event)
    again = UserState.from_dict(once.to_dict(), max_history=10)
    assert [again.learn(event) for event in events[2:]] == [False] * 4  # the replay window
    assert again.to_dict() == once.to_dict()
    assert again.learn(Event(event_id="e6", user_id="u", item_id="i9", type="view", ts=T0 + 100))
    assert again.n_events == 7  # a new event still counts
