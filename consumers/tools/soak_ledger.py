"""The soak's ledger: every event planned and every user, what was sent and what a list answered.

Sized once, in numpy arrays, so that the driver's own memory stays flat over a long run
(`consumers/tools/soak.py`). A list answers its trigger and that user's earlier events not yet
answered (the worker coalesces a user's events within a micro-batch into one list).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from streamrec.consumers.tools.load_rig import percentiles
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.stream.messages import Event

EVENT_ID_PREFIX = "soak-"


@dataclass
class Ledger:
    """Every event planned (by number) and every user (by index): what was sent, what a list
    answered, and the latency of each list; numpy arrays, so memory does not grow in the run."""

    total: int
    user_index: dict[str, int]
    history_length: int
    sent_at: np.ndarray = field(init=False)  # (total,) perf_counter at send
    user_of: np.ndarray = field(init=False)  # (total,) the event's user
    ordinal: np.ndarray = field(init=False)  # (total,) its place in the user's events, from 1
    latency_ms: np.ndarray = field(init=False)  # (total,) send -> list received, NaN: no list
    worker_ms: np.ndarray = field(init=False)  # (total,) the list's latency_ms (event ts -> list made)
    sent_per_user: np.ndarray = field(init=False)  # (users,)
    answered_per_user: np.ndarray = field(init=False)  # (users,) ordinal of the newest event answered
    sent: int = 0
    lists: int = 0
    covered: int = 0  # events answered by a list
    duplicate_lists: int = 0  # a second list for the same trigger
    foreign_lists: int = 0  # lists whose trigger is not a soak event
    window: list[int] = field(default_factory=list)  # triggers answered since the last sample

    def __post_init__(self) -> None:
        users = len(self.user_index)
        self.sent_at = np.full(self.total, np.nan)
        self.user_of = np.zeros(self.total, dtype=np.int32)
        self.ordinal = np.zeros(self.total, dtype=np.int32)
        self.latency_ms = np.full(self.total, np.nan, dtype=np.float32)
        self.worker_ms = np.full(self.total, np.nan, dtype=np.float32)
        self.sent_per_user = np.zeros(users, dtype=np.int32)
        self.answered_per_user = np.zeros(users, dtype=np.int32)

    def on_sent(self, event: Event, at: float) -> None:
        n = int(event.event_id.removeprefix(EVENT_ID_PREFIX))
        user = self.user_index[event.user_id]
        self.sent_per_user[user] += 1
        self.sent_at[n], self.user_of[n], self.ordinal[n] = at, user, self.sent_per_user[user]
        self.sent += 1

    def on_list(self, at: float, value: bytes) -> None:
        data = json.loads(value)
        trigger = str(data.get("trigger_event_id", ""))
        number = trigger.removeprefix(EVENT_ID_PREFIX)
        if not trigger.startswith(EVENT_ID_PREFIX) or not number.isdigit() or int(number) >= self.total:
            self.foreign_lists += 1
            return
        n = int(number)
        if not np.isnan(self.latency_ms[n]):
            self.duplicate_lists += 1
            return
        self.lists += 1
        self.latency_ms[n] = (at - self.sent_at[n]) * 1000.0
        self.worker_ms[n] = float(data.get("latency_ms", np.nan))
        user, ordinal = self.user_of[n], self.ordinal[n]
        if ordinal > self.answered_per_user[user]:
            self.covered += int(ordinal - self.answered_per_user[user])
            self.answered_per_user[user] = ordinal
        self.window.append(n)

    @property
    def backlog(self) -> int:
        return self.sent - self.covered

    def users_seen(self) -> int:
        return int(np.count_nonzero(self.sent_per_user))

    def interactions_held(self) -> int:
        """Interactions the worker's user states hold now: each user's answered events, up to
        the history length (a bounded structure that is still filling while this grows)."""
        return int(np.minimum(self.answered_per_user, self.history_length).sum())

    def take_window(self) -> tuple[dict[str, float | None], dict[str, float | None]]:
        """Latency percentiles of the lists that arrived since the last call (driver, worker)."""
        rows, self.window = self.window, []
        return percentiles(self.latency_ms[rows]), percentiles(self.worker_ms[rows])


def soak_events(world: SyntheticWorld, total: int, chunk: int) -> Iterator[Event]:
    """`total` synthetic events numbered `soak-0` ..., generated `chunk` at a time."""
    for stream, start in enumerate(range(0, total, chunk)):
        events = world.events(min(chunk, total - start), start_ts=time.time(), stream=stream)
        for k, event in enumerate(events):
            yield event.model_copy(update={"event_id": f"{EVENT_ID_PREFIX}{start + k}"})
