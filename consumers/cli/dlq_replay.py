"""`streamrec dlq replay`: dead letters sent back to the topic they were read from.

Once the cause of a rejection is gone (a limit raised, a bug in the worker fixed, a clock
set right), an operator replays the dead letters it produced: each one's original bytes go
back to `events` (the ingest stage reads them again) or, for a `processing_failed` letter,
whose event ingest already accepted (and remembers by id), to `events.by-user`, keyed by
user, where the recommend agent serves it: whether the worker failed on it there (two hops)
or on `events` (one hop, `consumers/worker/agents.py`). Letters of other topics (`items`)
are not events and are left alone.

Idempotent through the event ids: a run replays each event id at most once (the newest of
its letters), and every replayed message carries a header naming each dead letter it stands
for (`streamrec-dlq`), so a second run finds what the first sent and skips those letters. A
replayed event that fails again is a new dead letter: the next run may replay it. A letter whose
raw bytes hold no event id (not JSON, cut short) cannot be replayed idempotently, and would
fail again the same way: it is skipped and counted.

>>> letter = DeadLetter(reason="schema", error="x", raw='{"event_id": "e1", "user_id": "u1"}',
...                     topic="events", partition=0, offset=3, received_at=100.0)
>>> topics = Topics.with_prefix("")
>>> plan = plan_replay([(Mark("events.dlq", 0, 7), letter)], ReplayFilter(), topics, replayed=set())
>>> [(r.topic, r.key, r.event_id) for r in plan.replays], dict(plan.skipped)
([('events', b'u1', 'e1')], {})
>>> plan_replay([(Mark("events.dlq", 0, 7), letter)], ReplayFilter(), topics, {"events.dlq:0:7"}).skipped
Counter({'already_replayed': 1})
>>> failed = letter.model_copy(update={"reason": PROCESSING_FAILED})  # read on events, one hop
>>> [r.topic for r in plan_replay([(Mark("events.dlq", 0, 8), failed)], ReplayFilter(), topics, set()).replays]
['events.by-user']
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from streamrec.stream.messages import DeadLetter
from streamrec.stream.settings import Topics

PROCESSING_FAILED = "processing_failed"  # the worker's reason for a valid event it failed on (handlers.py)
MARK_HEADER = "streamrec-dlq"  # on every replayed message: the dead letter it came from
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Mark(NamedTuple):
    """Where a dead letter sits on the dead-letter topic: its identity for idempotency."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from `1717000000`, ISO 8601 (`2024-05-29T16:00`, UTC unless it says) or a
    duration ago (`90s`, `30m`, `2h`, `7d`); ValueError otherwise.

    >>> parse_time("2h", now=10_000.0), parse_time("1717000000")
    (2800.0, 1717000000.0)
    >>> parse_time("2024-05-29T16:26:40")
    1717000000.0
    """
    text = text.strip()
    match = _DURATION.match(text)
    if match:
        now = time.time() if now is None else now
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use unix seconds, ISO 8601 (2024-05-29T16:00) or a duration ago (30m, 2h, 7d)"
        ) from None
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(frozen=True)
class ReplayFilter:
    """Which dead letters to replay: reasons (None: all) and a `received_at` range (unix s)."""

    reasons: frozenset[str] | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, letter: DeadLetter) -> bool:
        if self.reasons is not None and letter.reason not in self.reasons:
            return False
        if self.since is not None and letter.received_at < self.since:
            return False
        return self.until is None or letter.received_at <= self.until


@dataclass(frozen=True)
class Replay:
    """One message to send back."""

    topic: str
    key: bytes | None
    value: bytes
    event_id: str
    marks: tuple[Mark, ...]  # the dead letters it stands for (the same event id, read again)


@dataclass
class ReplayPlan:
    """What a run would send, and what it leaves, counted by reason."""

    read: int = 0  # dead letters on the topic (readable or not)
    selected: Counter[str] = field(default_factory=Counter)  # matching the filter, by reason
    skipped: Counter[str] = field(default_factory=Counter)  # why a selected letter is not sent
    replays: list[Replay] = field(default_factory=list)

    def by_topic(self) -> Counter[str]:
        return Counter(replay.topic for replay in self.replays)


def _event_identity(raw: bytes) -> tuple[str, str] | None:
    """(event id, user id) of a dead letter's raw bytes, or None when they hold none."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    event_id, user_id = obj.get("event_id"), obj.get("user_id")
    if not isinstance(event_id, str) or not event_id:
        return None
    return event_id, user_id if isinstance(user_id, str) else ""


def plan_replay(
    letters: Iterable[tuple[Mark, DeadLetter | None]],
    wanted: ReplayFilter,
    topics: Topics,
    replayed: set[str],
) -> ReplayPlan:
    """Decide, letter by letter (oldest first), what to send where; pure, nothing is sent.

    `replayed`: the marks (`str(Mark)`) found on the target topics, sent by earlier runs.
    """
    targets = {topics.events: topics.events, topics.events_by_user: topics.events_by_user}
    plan = ReplayPlan()
    chosen: dict[str, Replay] = {}  # event id -> its newest letter's replay
    for mark, letter in letters:
        plan.read += 1
        if letter is None:
            plan.skipped["unreadable_letter"] += 1
            continue
        if not wanted.matches(letter):
            continue
        plan.selected[letter.reason] += 1
        target = targets.get(letter.topic)
        if target is not None and letter.reason == PROCESSING_FAILED:
            target = topics.events_by_user  # accepted by ingest already: past its de-duplication
        if target is None:
            plan.skipped["not_an_event_topic"] += 1
            continue
        if str(mark) in replayed:
            plan.skipped["already_replayed"] += 1
            continue
        raw = letter.raw_bytes()
        identity = _event_identity(raw)
        if identity is None:
            plan.skipped["no_event_id"] += 1
            continue
        event_id, user_id = identity
        earlier = chosen.get(event_id)
        if earlier is not None:
            plan.skipped["duplicate_event_id"] += 1
        marks = (earlier.marks if earlier is not None else ()) + (mark,)
        chosen[event_id] = Replay(target, user_id.encode() or None, raw, event_id, marks)
    plan.replays = list(chosen.values())
    return plan


def marks_of(records: Sequence[Any]) -> set[str]:
    """The dead-letter marks carried by replayed records (their `streamrec-dlq` header)."""
    found = set()
    for record in records:
        for name, value in record.headers or ():
            if name == MARK_HEADER and value:
                found.add(value.decode("utf-8", "replace"))
    return found


def decode_letter(value: bytes | None) -> DeadLetter | None:
    """A dead letter, or None when the bytes on the dead-letter topic are not one."""
    try:
        return DeadLetter.model_validate_json(value or b"")
    except ValueError:
        return None
