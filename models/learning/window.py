"""A sliding window of recent events, bounded by count and by event time.

The trainer sidecar fine-tunes on what users did lately: the window keeps at most
`max_events` events, none older than `max_age_s` behind the newest one (event time, from the
events, never the wall clock). Events are kept sorted by time, so the count bound drops the
oldest events by time too, and a late event lands in its place.

>>> from streamrec.stream.messages import Event
>>> def event(n: int, ts: float) -> Event:
...     return Event(event_id=f"e{n}", user_id="u", item_id=f"i{n}", type="view", ts=ts)
>>> window = EventWindow(max_events=3, max_age_s=100.0)
>>> window.extend(event(n, ts) for n, ts in enumerate([0.0, 10.0, 150.0, 160.0]))
>>> [e.item_id for e in window.events()]  # e0 and e1 are over 100 s older than the newest
['i2', 'i3']
>>> window.add(event(4, 155.0))  # late: it takes its place by time
>>> [e.item_id for e in window.events()], window.oldest_ts, window.newest_ts
(['i2', 'i4', 'i3'], 150.0, 160.0)
>>> train, holdout = window.split(0.3)  # the newest 30 % (at least one event) is held out
>>> [e.item_id for e in train], [e.item_id for e in holdout]
(['i2', 'i4'], ['i3'])
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TypeVar

from streamrec.stream.messages import Event

T = TypeVar("T")


def _time_of(event: Event) -> float:
    return event.ts


class EventWindow:
    """The newest events: at most `max_events`, none older than `max_age_s` behind the newest.

    `add` is O(1) amortised for events that arrive in time order; a late event costs a
    binary search and an insertion where it lands (cheap when it lands near the new end).
    """

    def __init__(self, max_events: int, max_age_s: float) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        if not max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        self.max_events = max_events
        self.max_age_s = max_age_s
        self._events: deque[Event] = deque()  # sorted by ts; arrival order among equal ts
        self.evicted_by_count = 0  # events dropped because the window was full
        self.evicted_by_age = 0  # events dropped for being over `max_age_s` behind the newest

    def add(self, event: Event) -> None:
        """Insert one event in time order, then evict what is over either bound."""
        events = self._events
        if not events or event.ts >= events[-1].ts:
            events.append(event)  # the usual case: in time order
        else:
            # After every event with the same or an earlier time: stable among equals.
            events.insert(bisect.bisect_right(events, event.ts, key=_time_of), event)
        while len(events) > self.max_events:
            events.popleft()
            self.evicted_by_count += 1
        horizon = events[-1].ts - self.max_age_s
        while events[0].ts < horizon:  # never the newest event itself: max_age_s > 0
            events.popleft()
            self.evicted_by_age += 1

    def extend(self, events: Iterable[Event]) -> None:
        for event in events:
            self.add(event)

    def __len__(self) -> int:
        return len(self._events)

    @property
    def newest_ts(self) -> float | None:
        """Event time of the newest event; None when empty."""
        return self._events[-1].ts if self._events else None

    @property
    def oldest_ts(self) -> float | None:
        """Event time of the oldest event kept; None when empty."""
        return self._events[0].ts if self._events else None

    def events(self) -> list[Event]:
        """A copy of the window's events, oldest first (arrival order among equal times)."""
        return list(self._events)

    def split(self, holdout_fraction: float) -> tuple[list[Event], list[Event]]:
        """(older part, newest `holdout_fraction`): train on the first, evaluate on the second."""
        return split_newest(self.events(), holdout_fraction)


def split_newest(events: Sequence[T], holdout_fraction: float) -> tuple[list[T], list[T]]:
    """Cut time-ordered events into (older part, newest share).

    The newest share has ceil(n * fraction) events, at least one when there are any; the
    older part keeps at least one when there are two or more.

    >>> split_newest(list("abcdefghij"), 0.2)  # any sequence in time order
    (['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'], ['i', 'j'])
    >>> split_newest(["a"], 0.2), split_newest(["a", "b"], 0.9), split_newest([], 0.2)
    (([], ['a']), (['a'], ['b']), ([], []))
    """
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be within (0, 1), got {holdout_fraction}")
    n = len(events)
    if n == 0:
        return [], []
    n_holdout = max(1, math.ceil(round(n * holdout_fraction, 9)))  # 10 * 0.3 is 3, not 4
    if n >= 2:
        n_holdout = min(n - 1, n_holdout)
    return list(events[: n - n_holdout]), list(events[n - n_holdout :])
