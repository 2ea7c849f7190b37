"""Per-user state, learned one event at a time: recent items, counts and River online statistics.

Stored in the worker's Faust table packed (`packed_state.py`: int32 item codes, 2-bit types,
float16 time gaps, 4-byte event-id digests), never pickled; `to_dict` / `from_dict` are the
plain-data format of version 1 (JSON: what changelogs written before the packed state hold,
read back by `packed_state.from_record`, and what tools and tests use).

>>> from streamrec.stream.messages import Event
>>> state = UserState("u1", max_history=2)
>>> for n, kind in enumerate(["view", "click", "purchase"]):
...     _ = state.learn(Event(event_id=f"e{n}", user_id="u1", item_id=f"i{n}", type=kind, ts=100.0 + 10 * n))
>>> [i.item_id for i in state.recent], state.counts["click"], sorted(state.consumed)
(['i1', 'i2'], 1, ['i0', 'i1', 'i2'])
>>> state.snapshot()["gap_mean_s"]
10.0
>>> UserState.from_dict(state.to_dict()).snapshot() == state.snapshot()
True
>>> state.learn(Event(event_id="e2", user_id="u1", item_id="i2", type="purchase", ts=120.0))
False
"""

from __future__ import annotations

import base64
import hashlib
import math
import sys
from array import array
from collections import OrderedDict, deque
from collections.abc import Iterable, KeysView, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from river import stats

from streamrec.stream.messages import EVENT_TYPES, Event

#: How much each event type says about a user's taste (purchase > click > view).
EVENT_WEIGHTS: dict[str, float] = {"view": 1.0, "click": 2.0, "purchase": 4.0}
DICT_VERSION = 1  # the plain-data (JSON) format of `to_dict`; the packed format is version 2
RATE_HALF_LIFE_S = 3_600.0  # per-type event rates are exponentially decayed with this half-life
#: Event ids a state remembers (as 4-byte digests) to learn each once. It must cover the events
#: of one user read again after a crash (those after the last committed offset: a few seconds'
#: worth) and sent again by a producer; 64 is >20 events/s from one user over Faust's 2.8 s
#: commit interval. docs/state.md gives the odds of a false "seen already" (64 / 2**32).
EVENT_IDS_KEPT = 64


def event_id_digest(event_id: str) -> int:
    """A stable 64-bit digest of an event id (blake2b: the same in every process).

    >>> event_id_digest("e1") == event_id_digest("e1") != event_id_digest("e2")
    True
    """
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big")


def event_id_digest32(event_id: str) -> int:
    """The top 32 bits of `event_id_digest`: what a user state remembers of an event id.

    The top half, so that the 8-byte digests of version 1 states map onto the same values.

    >>> event_id_digest32("e1") == event_id_digest("e1") >> 32
    True
    """
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest()[:4], "big")


class EventIds:
    """The digests of the last `capacity` event ids learned: a ring of 4-byte integers.

    Bounded (4 bytes an id), kept in the user state so it survives restarts and moves with the
    user's partition: an event sent again after a worker restart, or read again after a crash,
    is not learned twice.

    >>> ids = EventIds(capacity=2)
    >>> for event_id in ("a", "b", "c"): ids.add(event_id)
    >>> "a" in ids, "b" in ids, "c" in ids
    (False, True, True)
    >>> EventIds.decode(ids.encode(), capacity=2).newest_first() == ids.newest_first()
    True
    >>> EventIds.from_digests(ids.oldest_first(), capacity=2).newest_first() == ids.newest_first()
    True
    """

    __slots__ = ("_next", "_ring", "capacity")

    def __init__(self, capacity: int = EVENT_IDS_KEPT) -> None:
        self.capacity = capacity
        self._ring = array("I")
        self._next = 0  # where the next digest goes once the ring is full

    def add(self, event_id: str) -> None:
        digest = event_id_digest32(event_id)
        if len(self._ring) < self.capacity:
            self._ring.append(digest)
        elif self.capacity:
            self._ring[self._next] = digest
            self._next = (self._next + 1) % self.capacity

    def __contains__(self, event_id: object) -> bool:
        return isinstance(event_id, str) and event_id_digest32(event_id) in self._ring

    def newest_first(self) -> list[int]:
        return list(reversed(self.oldest_first()))

    def oldest_first(self) -> array:
        """The digests, oldest first (a copy: `array('I')`)."""
        return self._ring[self._next:] + self._ring[: self._next]

    @classmethod
    def from_digests(cls, digests: Iterable[int], capacity: int = EVENT_IDS_KEPT) -> EventIds:
        """A ring holding `digests` (32-bit, oldest first; only the newest `capacity` kept)."""
        ids = cls(capacity)
        if capacity:
            ids._ring = array("I", digests)[-capacity:]
        return ids

    def encode(self) -> str:
        """Version 1's form: oldest first, big-endian 8-byte digests, base64 (the 4-byte digest
        in the top half, as `event_id_digest32` reads an 8-byte one)."""
        ordered = array("Q", (digest << 32 for digest in self.oldest_first()))
        if sys.byteorder == "little":
            ordered.byteswap()
        return base64.b64encode(ordered.tobytes()).decode("ascii")

    @classmethod
    def decode(cls, text: str, capacity: int = EVENT_IDS_KEPT) -> EventIds:
        """Read `encode`'s form, or version 1's 8-byte digests (kept: their top 4 bytes)."""
        raw = base64.b64decode(text, validate=True)
        if len(raw) % 8:
            raise ValueError("event id digests must be 8 bytes each")
        digests = array("Q")
        digests.frombytes(raw)
        if sys.byteorder == "little":
            digests.byteswap()
        return cls.from_digests((digest >> 32 for digest in digests), capacity)


class Interaction(NamedTuple):
    """One event as remembered in the user's recent sequence.

    A named tuple: a state holds `max_history` of these and a packed state makes them again for
    every micro-batch (0.13 µs each against 0.73 µs for a frozen dataclass). `event_id` is
    None once the state has been packed, except for the newest interaction: a packed state
    keeps 4-byte digests of the ids (`EventIds`), enough to learn each event once.
    """

    item_id: str
    type: str
    ts: float
    event_id: str | None


@dataclass(slots=True)
class StateParts:
    """A `UserState`'s contents as plain values: what a storage format writes and reads back."""

    recent: list[Interaction]  # oldest first
    consumed: list[str]  # consumed item ids, least recently consumed first
    event_digests: array  # `event_id_digest32` of the last ids learned, oldest first ('I')
    counts: dict[str, int]  # events per type
    gap_n: float  # River Mean / Var of the gaps between events: observations,
    gap_mean: float  # mean (s)
    gap_s: float  # and sum of squared deviations
    rates: dict[str, tuple[float, float | None]]  # per type: decayed mass, as of event time
    last_ts: float | None
    out_of_order: int
    served_version: str | None
    served: tuple[str, ...]


class _DecayedRate:
    """Events per second, exponentially decayed on event time (half-life `RATE_HALF_LIFE_S`)."""

    __slots__ = ("mass", "ts")

    def __init__(self, mass: float = 0.0, ts: float | None = None) -> None:
        self.mass = mass  # decayed event count as of `ts`
        self.ts = ts

    def update(self, ts: float) -> None:
        if self.ts is not None and ts > self.ts:
            self.mass *= math.pow(0.5, (ts - self.ts) / RATE_HALF_LIFE_S)
            self.ts = ts
        elif self.ts is None:
            self.ts = ts
        self.mass += 1.0

    def get(self) -> float:
        # A decayed count over an exponential window holds about half_life/ln2 seconds of events.
        return self.mass * math.log(2) / RATE_HALF_LIFE_S


class UserState:
    """A user's recent behaviour, updated incrementally (`learn`) and read purely."""

    def __init__(
        self, user_id: str, max_history: int = 50, max_consumed: int = 1_000, max_ids: int = EVENT_IDS_KEPT
    ) -> None:
        self.user_id = user_id
        self.max_history = max_history
        self.max_consumed = max_consumed
        self.max_ids = max_ids
        self._recent: deque[Interaction] = deque(maxlen=max_history)
        self._ids = EventIds(max_ids)  # the last `max_ids` event ids learned, past `recent` too
        self._consumed: OrderedDict[str, None] = OrderedDict()
        self._counts: dict[str, int] = {kind: 0 for kind in EVENT_TYPES}
        self._gap_mean = stats.Mean()
        self._gap_var = stats.Var()
        self._rates = {kind: _DecayedRate() for kind in EVENT_TYPES}
        self._last_ts: float | None = None
        self.out_of_order = 0
        self.served: tuple[str, ...] = ()  # item ids of the last list served to this user
        self.served_version: str | None = None  # the model version that ranked that list

    # --- learning ----------------------------------------------------------------------
    def learn(self, event: Event) -> bool:
        """Fold one event into the state; False (and no change) if it is in already.

        Idempotent for any event among the last `max_ids` learned: an event
        read again after a crash (its offset not yet committed, its state already in the
        changelog), forwarded twice or sent again by a producer does not count twice.
        """
        if self.has_learned(event.event_id):
            return False
        if self._last_ts is not None:
            gap = event.ts - self._last_ts
            if gap < 0:
                self.out_of_order += 1
            self._gap_mean.update(max(0.0, gap))
            self._gap_var.update(max(0.0, gap))
        self._last_ts = event.ts if self._last_ts is None else max(self._last_ts, event.ts)
        self._recent.append(Interaction(event.item_id, event.type, event.ts, event.event_id))
        self._ids.add(event.event_id)
        self._consumed[event.item_id] = None
        self._consumed.move_to_end(event.item_id)
        while len(self._consumed) > self.max_consumed:
            self._consumed.popitem(last=False)
        self._counts[event.type] = self._counts.get(event.type, 0) + 1
        self._rates[event.type].update(event.ts)
        return True

    def has_learned(self, event_id: str) -> bool:
        """Whether the event is among the last `max_ids` learned (by a 4-byte digest of its id:
        a new event is taken for one of those with odds `max_ids` / 2**32)."""
        return event_id in self._ids

    def serve(self, model_version: str, item_ids: Sequence[str]) -> None:
        """Remember the list just served, to check the user's next events against it."""
        self.served = tuple(item_ids)
        self.served_version = model_version

    # --- reading -----------------------------------------------------------------------
    @property
    def recent(self) -> list[Interaction]:
        """The last `max_history` interactions, oldest first."""
        return list(self._recent)

    @property
    def consumed(self) -> frozenset[str]:
        return frozenset(self._consumed)

    @property
    def consumed_ids(self) -> KeysView[str]:
        """The consumed item ids as a live read-only view (no copy: for membership tests)."""
        return self._consumed.keys()

    def has_consumed(self, item_id: str) -> bool:
        return item_id in self._consumed

    @property
    def n_consumed(self) -> int:
        return len(self._consumed)

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    @property
    def n_events(self) -> int:
        return sum(self._counts.values())

    @property
    def last_ts(self) -> float | None:
        return self._last_ts

    @property
    def last_event_id(self) -> str | None:
        return self._recent[-1].event_id if self._recent else None

    @property
    def is_cold(self) -> bool:
        return self.n_events == 0

    def snapshot(self) -> dict[str, float]:
        """Numeric features of the user, e.g. for a ranker or a dashboard."""
        features: dict[str, float] = {"n_events": float(self.n_events)}
        for kind in EVENT_TYPES:
            features[f"count_{kind}"] = float(self._counts[kind])
            features[f"rate_{kind}_per_s"] = self._rates[kind].get()
        features["gap_mean_s"] = float(self._gap_mean.get())
        features["gap_std_s"] = math.sqrt(max(0.0, float(self._gap_var.get())))
        return features

    # --- persistence -------------------------------------------------------------------
    def parts(self) -> StateParts:
        """The state's contents as plain values (what `packed_state.pack` writes)."""
        return StateParts(
            recent=list(self._recent),
            consumed=list(self._consumed),
            event_digests=self._ids.oldest_first(),
            counts=dict(self._counts),
            gap_n=float(self._gap_mean.n),
            gap_mean=float(self._gap_mean._mean),
            gap_s=float(self._gap_var._S),
            rates={kind: (rate.mass, rate.ts) for kind, rate in self._rates.items()},
            last_ts=self._last_ts,
            out_of_order=self.out_of_order,
            served_version=self.served_version,
            served=self.served,
        )

    @classmethod
    def from_parts(
        cls,
        user_id: str,
        parts: StateParts,
        max_history: int = 50,
        max_consumed: int = 1_000,
        max_ids: int = EVENT_IDS_KEPT,
    ) -> UserState:
        """A state holding `parts`, cut to the limits given (the oldest go first)."""
        state = cls(user_id, max_history=max_history, max_consumed=max_consumed, max_ids=max_ids)
        state._recent.extend(parts.recent)
        state._consumed = OrderedDict.fromkeys(parts.consumed[-max_consumed:] if max_consumed else ())
        state._ids = EventIds.from_digests(parts.event_digests, max_ids)
        state._counts.update(parts.counts)
        state._gap_mean.n, state._gap_mean._mean = parts.gap_n, parts.gap_mean
        state._gap_var.mean.n, state._gap_var.mean._mean, state._gap_var._S = parts.gap_n, parts.gap_mean, parts.gap_s
        for kind, (mass, ts) in parts.rates.items():
            state._rates[kind] = _DecayedRate(mass, ts)
        state._last_ts = parts.last_ts
        state.out_of_order = parts.out_of_order
        if parts.served_version is not None:
            state.serve(parts.served_version, parts.served)
        return state

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, versioned plain data (version 1: what the changelog held before the packed
        state; `from_dict` and `packed_state.from_record` read it)."""
        return {
            "v": DICT_VERSION,
            "user_id": self.user_id,
            "recent": [[i.item_id, i.type, i.ts, i.event_id] for i in self._recent],
            "consumed": list(self._consumed),
            "counts": dict(self._counts),
            "gap_mean": [self._gap_mean.n, self._gap_mean._mean],
            "gap_var": [self._gap_var.mean.n, self._gap_var.mean._mean, self._gap_var._S],
            "rates": {k: [r.mass, r.ts] for k, r in self._rates.items()},
            "last_ts": self._last_ts,
            "out_of_order": self.out_of_order,
            "served": [self.served_version, list(self.served)],
            "ids": self._ids.encode(),
        }

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], max_history: int = 50, max_consumed: int = 1_000, max_ids: int = EVENT_IDS_KEPT
    ) -> UserState:
        """Rebuild from `to_dict` output; ValueError on an unknown version or malformed data."""
        if not isinstance(data, dict) or data.get("v") != DICT_VERSION:
            version = data.get("v") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"unknown user state version {version!r} (expected {DICT_VERSION})")
        try:
            user_id = str(data["user_id"])
            recent = [
                Interaction(str(item_id), str(kind), float(ts), None if event_id is None else str(event_id))
                for item_id, kind, ts, event_id in data["recent"]
            ]
            gap_n, gap_mean = (float(x) for x in data["gap_mean"])
            _, _, gap_s = (float(x) for x in data["gap_var"])
            if "ids" in data:
                digests = EventIds.decode(str(data["ids"]), max_ids).oldest_first()
            else:  # (states written before it remember `recent` only)
                digests = array("I", (event_id_digest32(i.event_id) for i in recent if i.event_id is not None))
            served_version, served = data.get("served") or (None, [])
            parts = StateParts(
                recent=recent,
                consumed=[str(item_id) for item_id in data["consumed"]],
                event_digests=digests,
                counts={str(k): int(v) for k, v in data["counts"].items()},
                gap_n=gap_n,
                gap_mean=gap_mean,
                gap_s=gap_s,
                rates={
                    str(kind): (float(mass), None if ts is None else float(ts))
                    for kind, (mass, ts) in data["rates"].items()
                },
                last_ts=None if data["last_ts"] is None else float(data["last_ts"]),
                out_of_order=int(data.get("out_of_order", 0)),
                served_version=None if served_version is None else str(served_version),
                served=tuple(str(item_id) for item_id in served),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed user state: {exc!r}") from exc
        return cls.from_parts(user_id, parts, max_history, max_consumed, max_ids)
