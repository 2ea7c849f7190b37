"""The trainer's sliding window: bounds by count and event time, late events, the time split.

The window is checked against a reference after every add: the newest `max_events` events
by (time, arrival) among all those seen, none over `max_age_s` behind the newest.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.models.learning.window import EventWindow, split_newest
from streamrec.stream.messages import Event
from tests.support.events import event


def _reference(seen: list[Event], max_events: int, max_age_s: float) -> list[str]:
    """What the window should hold, from every event seen so far (arrival order)."""
    newest = max(e.ts for e in seen)
    ranked = sorted(enumerate(seen), key=lambda pair: (pair[1].ts, pair[0]))  # (time, arrival)
    fresh = [e for _, e in ranked if e.ts >= newest - max_age_s]
    return [e.event_id for e in fresh[-max_events:]]


def test_count_bound_keeps_the_newest_events() -> None:
    events = SyntheticWorld(seed=2, n_items=20, n_users=5).events(30, start_ts=0.0, rate_per_s=1.0)
    window = EventWindow(max_events=8, max_age_s=1e9)
    window.extend(events)
    assert len(window) == 8 and window.evicted_by_count == 22 and window.evicted_by_age == 0
    assert [e.event_id for e in window.events()] == [e.event_id for e in events[-8:]]
    assert (window.oldest_ts, window.newest_ts) == (events[-8].ts, events[-1].ts)


def test_age_bound_is_event_time_behind_the_newest() -> None:
    window = EventWindow(max_events=100, max_age_s=60.0)
    window.extend(event(n=n, ts=ts) for n, ts in enumerate([0.0, 30.0, 59.0, 60.0]))
    assert len(window) == 4  # 0 is exactly 60 s behind 60: still in
    window.add(event(n=4, ts=100.0))  # horizon 40: 0 and 30 go, 59 and 60 stay
    assert [e.ts for e in window.events()] == [59.0, 60.0, 100.0]
    assert window.evicted_by_age == 2
    window.add(event(n=5, ts=10.0))  # a straggler already too old: in and out again at once
    assert [e.ts for e in window.events()] == [59.0, 60.0, 100.0]
    window.add(event(n=6, ts=1_000.0))
    assert [e.ts for e in window.events()] == [1_000.0] and window.oldest_ts == 1_000.0


def test_late_events_take_their_place_in_time_stably() -> None:
    window = EventWindow(max_events=4, max_age_s=100.0)
    for n, ts in enumerate([10.0, 20.0, 20.0, 30.0]):
        window.add(event(n=n, ts=ts))
    window.add(event(n=4, ts=20.0))  # late, and equal to two others: after them (arrival order)
    assert [e.event_id for e in window.events()] == ["u1-1", "u1-2", "u1-4", "u1-3"]  # u1-0 is the oldest: out
    window.add(event(n=5, ts=5.0))  # older than everything in a full window: dropped at once
    assert [e.event_id for e in window.events()] == ["u1-1", "u1-2", "u1-4", "u1-3"]
    assert window.newest_ts == 30.0 and window.evicted_by_count == 2


@pytest.mark.parametrize("max_events,max_age_s", [(1, 1e9), (5, 30.0), (50, 8.0), (500, 1e9)])
def test_matches_the_reference_after_every_add(max_events: int, max_age_s: float) -> None:
    rng = random.Random(max_events)
    window = EventWindow(max_events, max_age_s)
    seen: list[Event] = []
    ts = 0.0
    for n in range(300):
        ts += rng.expovariate(1.0)
        late = rng.random() < 0.2  # one in five arrives late, up to 20 s, sometimes a tie
        event_ts = round(ts - rng.uniform(0, 20) if late else ts, 0 if rng.random() < 0.3 else 3)
        arrived = event(n=n, ts=event_ts)
        window.add(arrived)
        seen.append(arrived)
        kept = window.events()
        assert [e.event_id for e in kept] == _reference(seen, max_events, max_age_s)
        assert len(window) == len(kept)
        assert (window.oldest_ts, window.newest_ts) == (kept[0].ts, max(e.ts for e in seen))


def test_empty_window() -> None:
    window = EventWindow(max_events=3, max_age_s=1.0)
    assert len(window) == 0 and window.events() == [] and window.split(0.2) == ([], [])
    assert window.newest_ts is None and window.oldest_ts is None


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 100, 101])
@pytest.mark.parametrize("fraction", [0.01, 0.2, 0.3, 0.55, 0.99])
def test_split_holds_out_the_newest_share(n: int, fraction: float) -> None:
    window = EventWindow(max_events=1_000, max_age_s=1e9)
    window.extend(event(n=k, ts=float(k % 13) + k / 1_000) for k in range(n))  # not in time order
    events = window.events()
    train, holdout = window.split(fraction)
    assert train + holdout == events
    assert len(holdout) >= 1 and (len(train) >= 1 or n == 1)
    expected = max(1, math.ceil(Fraction(n) * Fraction(str(fraction))))  # exact arithmetic
    assert len(holdout) == (min(expected, n - 1) if n >= 2 else 1)
    if train:
        assert max(e.ts for e in train) <= min(e.ts for e in holdout)


def test_split_counts_do_not_suffer_float_rounding() -> None:
    assert 100 * 0.55 > 55  # 55.00000000000001: a plain ceil would hold out 56
    assert [len(part) for part in split_newest(list(range(100)), 0.55)] == [45, 55]
    assert [len(part) for part in split_newest(list(range(10)), 0.25)] == [7, 3]  # 2.5 -> 3


def test_bad_bounds_and_fractions_are_refused() -> None:
    with pytest.raises(ValueError, match="max_events"):
        EventWindow(max_events=0, max_age_s=1.0)
    with pytest.raises(ValueError, match="max_age_s"):
        EventWindow(max_events=1, max_age_s=0.0)
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="holdout_fraction"):
            split_newest([event(n=0, ts=0.0)], fraction)
