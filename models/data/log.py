"""A dataset as one stream of events (`EventLog`) and the single rule that orders it.

Every reader (`movielens`, `beauty`, `generic`, `synthetic`) returns its events in
`stream_order`, and everything downstream keeps that order: the bus replay (`streamrec feed`),
the prequential replay (`evaluation.prequential.replay_order`) and the per-user sequences that
leave-one-out and pretraining read (`sequences.SequenceDataset`). So all of them see the same
stream of the same data.

**The order**: by timestamp; events with the same timestamp by a stable hash (blake2b) of
(user id, item id); file order last (only for an exact repeat of user, item and time).
Why not file order: MovieLens lists a user's ratings by movie id, and 15.7% of its events share
their second with the user's previous one, so inside a tie the later-listed movie has the higher
id (roughly, the newer film); a sequence model would learn that, and a leave-one-out target would
be the highest id of its tie. Why not a seeded shuffle: a seed is one more thing the feed, the
replay and the evaluator must agree on; the hash is fixed by the data alone, the same in every
process (never Python's salted `hash()`), and as uninformative as a shuffle.

>>> from streamrec.stream.messages import Event
>>> def ev(user, item, ts):
...     return Event(event_id=f"{user}-{item}", user_id=user, item_id=item, type="view", ts=ts)
>>> ordered = stream_order([ev("u1", "b", 2.0), ev("u1", "a", 1.0), ev("u1", "c", 1.0)])
>>> [e.item_id for e in ordered]  # time first; the tie at 1.0 by the hash, not by file order
['c', 'a', 'b']
>>> [e.item_id for e in stream_order(reversed(ordered))] == [e.item_id for e in ordered]
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamrec.stream.messages import Event

#: What `stream_order` does, as dataset descriptions and result files say it.
ORDER_RULE = "by timestamp; equal timestamps by blake2b(user id, item id); file order last"


def tie_key(user_id: str, item_id: str) -> int:
    """The place of an event among events with the same timestamp: a stable 64-bit hash."""
    digest = hashlib.blake2b(f"{user_id}\x1f{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def stream_order(events: Iterable[Event]) -> list[Event]:
    """The events in the one stream order (see the module docstring); a stable sort."""
    return sorted(events, key=lambda event: (event.ts, tie_key(event.user_id, event.item_id)))


def count_ties(events: Iterable[Event]) -> int:
    """Events with the same timestamp as the same user's previous event (the ties that the order
    rule decides)."""
    last: dict[str, float] = {}
    ties = 0
    for event in events:
        ties += last.get(event.user_id) == event.ts
        last[event.user_id] = event.ts
    return ties


@dataclass
class EventLog:
    """A dataset as a stream: its events in stream order and the text of its items."""

    name: str
    events: list[Event]  # in `stream_order`
    item_text: dict[str, str]  # item id -> text for the encoder (every item of `events`)
    item_title: dict[str, str] = field(default_factory=dict)  # item id -> short label
    description: dict[str, Any] = field(default_factory=dict)  # JSON-able provenance and rules

    def counts(self) -> dict[str, int]:
        """Users, items and events, as descriptions report them."""
        return {
            "n_users": len({event.user_id for event in self.events}),
            "n_items": len({event.item_id for event in self.events}),
            "n_events": len(self.events),
        }


def require_file(folder: Path, name: str, layout: str) -> Path:
    """`folder/name`, or FileNotFoundError naming the file and the expected layout."""
    file = Path(folder) / name
    if not file.is_file():
        raise FileNotFoundError(f"expected {name} in {folder} ({layout})")
    return file
