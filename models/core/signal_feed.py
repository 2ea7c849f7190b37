"""The collaborative signals of every user, not only a worker's own: `SignalFeed`.

A worker owns some partitions' users, so counts learned from its own users' states are a
sample. A `SignalFeed` learns `CollaborativeSignals` from a stream of events of *all* users
(the worker reads `events` whole, as a broadcast). It keeps its own compact memory
of each user: just what `CollaborativeSignals.learn` reads of a user state (the last `window`
distinct items with where each last occurred, and how many events the user had), so every
co-visitation pair and transition comes out as it would from the user's `UserState` of
`history_length` events. Per-user order holds because a user's events share one partition
(events keyed by user id, as the producer SDK sends them).

The worker's own events reach the feed twice (the agent that ranks them learns them first,
`learn_local`; its broadcast reader reads them again): an event id seen before is skipped,
so each event counts once, whichever path comes first.

Memory is bounded: at most `max_users` users (the least recently active forgotten first), each
an `array('i')` of 1 + 2 * max(window, 2) integers, and `dedup_events` event-id digests.

>>> from streamrec.models.core.collaborative import CollaborativeSignals
>>> from streamrec.stream.messages import Event
>>> feed = SignalFeed(CollaborativeSignals())
>>> for n, (user, item) in enumerate([("u1", "a"), ("u2", "a"), ("u1", "b"), ("u2", "b")]):
...     _ = feed.learn(Event(event_id=str(n), user_id=user, item_id=item, type="view", ts=float(n)))
>>> [item for item, _ in feed.signals.next_after(["a"])], feed.user_items("u1")
(['b'], ['a', 'b'])
>>> feed.learn(Event(event_id="3", user_id="u2", item_id="b", type="view", ts=3.0))  # read again
False
"""

from __future__ import annotations

from array import array
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from streamrec.models.core.collaborative import CollaborativeSignals
from streamrec.models.core.item_rows import ItemVocabulary
from streamrec.models.core.state import EVENT_WEIGHTS, event_id_digest
from streamrec.stream.messages import Event

__all__ = ["SignalFeed", "SignalFeedConfig"]


@dataclass(frozen=True)
class SignalFeedConfig:
    """Bounds of a feed's memory; `history_length` must match the user states' (`Settings`)."""

    max_users: int = 200_000  # users remembered; the least recently active forgotten first
    history_length: int = 50  # events a user state keeps: the items a new one may pair with
    dedup_events: int = 200_000  # event ids remembered: an event read twice is learned once


class SignalFeed:
    """Learns `signals` from every user's events; see the module docstring."""

    def __init__(self, signals: CollaborativeSignals, config: SignalFeedConfig | None = None) -> None:
        self.signals = signals
        self.config = config or SignalFeedConfig()
        self.window = signals.config.window
        self._kept = max(self.window, 2)  # (item, position) pairs kept: the last two events need 2
        # user id -> [events seen, row, last position, row, last position, ...], newest first
        self._users: OrderedDict[str, array] = OrderedDict()
        self._vocabulary: ItemVocabulary = signals.vocabulary  # the one `rows` refer to
        self._seen: set[int] = set()  # digests of the last `dedup_events` event ids learned
        self._seen_order: deque[int] = deque()
        # Whether events handed in by this worker's recommend agent are learned (`learn_local`):
        # off until the broadcast reader has caught up, so that a user's events go in order.
        self.live = False
        self.learned = 0  # events learned
        self.duplicates = 0  # events skipped: learned already
        self.forgotten_users = 0  # users dropped for `max_users`

    # --- learning ---------------------------------------------------------------------
    def learn(self, event: Event) -> bool:
        """Count one event of any user; False (and no change) if its id was learned already."""
        digest = event_id_digest(event.event_id)
        if digest in self._seen:
            self.duplicates += 1
            return False
        self._remember(digest)
        self._follow_vocabulary()
        memory = self._users.get(event.user_id)
        if memory is None:
            memory = array("i", [0])
        signals = self.signals
        signals.learn(self._items(memory), event.item_id, EVENT_WEIGHTS[event.type], user_id=event.user_id)
        if self._follow_vocabulary():  # compacted while learning: the memory was renumbered
            memory = self._users.get(event.user_id, memory)
        row = signals.vocabulary.get(event.item_id)
        assert row is not None  # `learn` has just added it
        self._store(event.user_id, self._pushed(memory, row))
        self.learned += 1
        return True

    def learn_many(self, events: Iterable[Event]) -> int:
        """`learn` each event in order; how many were new."""
        return sum(self.learn(event) for event in events)

    def learn_local(self, event: Event) -> bool:
        """An event of this worker's own users, learned before its user's list is ranked, once
        the feed is `live`; until then the broadcast reader learns it (False)."""
        return self.live and self.learn(event)

    # --- reading ----------------------------------------------------------------------
    def user_items(self, user_id: str) -> list[str]:
        """What `CollaborativeSignals.learn` is given for the user's next event: their recent
        items, oldest first, as far as they matter (distinct ones, the last two as they came)."""
        memory = self._users.get(user_id)
        return self._items(memory) if memory is not None else []

    def __len__(self) -> int:
        """Users remembered."""
        return len(self._users)

    # --- memory -----------------------------------------------------------------------
    def _items(self, memory: array) -> list[str]:
        """The user's items for `CollaborativeSignals.learn`: the distinct items a user state
        of `history_length` events still holds, oldest first, the last one repeated when the
        user took it twice in a row (then there is no second-order transition)."""
        n = memory[0]
        oldest = n - self.config.history_length  # positions before this left the user state
        names = self._vocabulary.names
        rows = [memory[at] for at in range(1, len(memory), 2) if memory[at + 1] >= oldest]
        items = [names[row] for row in reversed(rows)]
        if items and n >= 2 and self.config.history_length >= 2:
            second_last_is_another = len(rows) >= 2 and memory[4] == n - 2
            if not second_last_is_another:
                items.append(items[-1])  # the same item twice in a row
        return items

    def _pushed(self, memory: array, row: int) -> array:
        """The memory after one more event of item `row`: it goes first, its older place goes."""
        n = memory[0]
        oldest = n + 1 - self.config.history_length
        pushed = array("i", [n + 1, row, n])
        for at in range(1, len(memory), 2):
            if len(pushed) >= 1 + 2 * self._kept:
                break
            if memory[at] != row and memory[at + 1] >= oldest:
                pushed.append(memory[at])
                pushed.append(memory[at + 1])
        return pushed

    def _store(self, user_id: str, memory: array) -> None:
        users = self._users
        users[user_id] = memory
        users.move_to_end(user_id)
        while len(users) > self.config.max_users:
            users.popitem(last=False)
            self.forgotten_users += 1

    def _remember(self, digest: int) -> None:
        self._seen.add(digest)
        self._seen_order.append(digest)
        while len(self._seen_order) > self.config.dedup_events:
            self._seen.discard(self._seen_order.popleft())

    def _follow_vocabulary(self) -> bool:
        """Renumber the memories after the signals compacted their vocabulary (a new one with
        only the most popular items): an item no longer in it is forgotten. True if it was."""
        vocabulary = self.signals.vocabulary
        if vocabulary is self._vocabulary:
            return False
        old_names = self._vocabulary.names
        for user_id, memory in self._users.items():
            renumbered = array("i", [memory[0]])
            for at in range(1, len(memory), 2):
                row = vocabulary.get(old_names[memory[at]])
                if row is not None:
                    renumbered.append(row)
                    renumbered.append(memory[at + 1])
            self._users[user_id] = renumbered
        self._vocabulary = vocabulary
        return True
