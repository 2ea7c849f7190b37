"""A sliding window of recent events, bounded by count and by event time.

>>> from streamrec.stream.messages import Event
>>> window = EventWindow(max_events=3, max_age_s=100.0)
>>> window.extend(Event(event_id=f"e{n}", user_id="u", item_id=f"i{n}", type="view", ts=float(ts))
...               for n, ts in enumerate([0, 10, 150, 160]))
>>> [e.item_id for e in window.events()]  # e0 and e1 are over 100 s older than the newest
['i2', 'i3']
>>> train, holdout = window.split(0.5)
>>> [e.item_id for e in train], [e.item_id for e in holdout]
(['i2'], ['i3'])
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

from streamrec.stream.messages import Event


class EventWindow:
    """The newest events: at most `max_events`, none older than `max_age_s` behind the newest."""

    def __init__(self, max_events: int, max_age_s: float) -> None:
        if max_events < 1 or max_age_s <= 0:
            raise ValueError("max_events must be >= 1 and max_age_s > 0")
        self.max_events = max_events
        self.max_age_s = max_age_s
        self._events: deque[Event] = deque(maxlen=max_events)
        self.newest_ts: float | None = None

    def add(self, event: Event) -> None:
        self._events.append(event)
        if self.newest_ts is None or event.ts > self.newest_ts:
            self.newest_ts = event.ts
        self._evict()

    def extend(self, events: Iterable[Event]) -> None:
        for event in events:
            self.add(event)

    def _evict(self) -> None:
        # Events arrive roughly in time order: drop from the old end while too old.
        assert self.newest_ts is not None
        horizon = self.newest_ts - self.max_age_s
        while self._events and self._events[0].ts < horizon:
            self._events.popleft()

    def __len__(self) -> int:
        return len(self._events)

    @property
    def oldest_ts(self) -> float | None:
        return min((e.ts for e in self._events), default=None)

    def events(self) -> list[Event]:
        """The window's events, oldest first (by event time; arrival order among equals)."""
        horizon = (self.newest_ts or 0.0) - self.max_age_s
        return sorted((e for e in self._events if e.ts >= horizon), key=lambda e: e.ts)

    def split(self, holdout_fraction: float) -> tuple[list[Event], list[Event]]:
        """(older part, newest `holdout_fraction`): train on the first, evaluate on the second."""
        events = self.events()
        return split_newest(events, holdout_fraction)


def split_newest(events: list[Event], holdout_fraction: float) -> tuple[list[Event], list[Event]]:
    """Cut time-ordered events into (older, newest share); each part non-empty when len >= 2."""
    if not 0 < holdout_fraction < 1:
        raise ValueError("holdout_fraction must be within (0, 1)")
    if len(events) < 2:
        return list(events), []
    n_holdout = min(len(events) - 1, max(1, math.ceil(len(events) * holdout_fraction)))
    return events[:-n_holdout], events[-n_holdout:]
