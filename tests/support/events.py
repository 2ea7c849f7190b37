"""The one event factory of the tests, and the bad inputs the contract routes to the DLQ."""

from __future__ import annotations

import json
from typing import Any

from streamrec.stream.messages import Event

T0 = 1_750_000_000.0  # event time of event 0 (2025-06-15): well inside the validator's range
MAX_MESSAGE_BYTES = 4096  # the e2e workers' STREAMREC_MAX_MESSAGE_BYTES (so `oversized` stays small)


def event_fields(
    user: str = "u1", item: str | None = None, n: int = 0, kind: str = "view", ts: float | None = None,
    event_id: str | None = None, **extra: Any,
) -> dict[str, Any]:
    """Event `n` of `user` as a JSON object: id `<user>-<n>`, item `i<n>`, at `T0 + n`; each
    can be given, and `extra` adds or replaces keys with anything (also invalid values).

    >>> event_fields("u7", n=3)
    {'event_id': 'u7-3', 'user_id': 'u7', 'item_id': 'i3', 'type': 'view', 'ts': 1750000003.0}
    >>> event_fields(user_id=12345)["user_id"]
    12345
    """
    fields = {"event_id": f"{user}-{n}" if event_id is None else event_id, "user_id": user,
              "item_id": f"i{n}" if item is None else item, "type": kind, "ts": T0 + n if ts is None else ts}
    return fields | extra


def event(
    user: str = "u1", item: str | None = None, n: int = 0, kind: str = "view", ts: float | None = None,
    event_id: str | None = None, **extra: Any,
) -> Event:
    """`event_fields` as an `Event`.

    >>> event("u2", "i9", n=1, kind="click").event_id
    'u2-1'
    """
    return Event(**event_fields(user, item, n, kind, ts, event_id, **extra))


def bad_messages(now: float) -> list[tuple[bytes, str]]:
    """(raw value, the DLQ reason it must get), each unique so it can be found in the DLQ."""
    good = {"user_id": "u-bad", "item_id": "i-bad", "type": "view", "ts": now}
    cases = [
        (b'{"event_id": "broken-json", ', "invalid_json"),
        (b"\xff\xfe\xfd binary-garbage", "invalid_json"),
        (b"[\"an\", \"array\"]", "not_an_object"),
        (json.dumps({**good, "event_id": "no-item", "item_id": None}).encode(), "schema"),
        (json.dumps({k: v for k, v in good.items() if k != "user_id"} | {"event_id": "no-user"}).encode(), "schema"),
        (json.dumps({**good, "event_id": "int-user", "user_id": 12345}).encode(), "schema"),
        (json.dumps({**good, "event_id": "liked", "type": "like"}).encode(), "unknown_type"),
        (json.dumps({**good, "event_id": "too-old", "ts": 86_400.0}).encode(), "absurd_timestamp"),
        (json.dumps({**good, "event_id": "too-new", "ts": now + 10 * 86_400}).encode(), "absurd_timestamp"),
        (json.dumps({**good, "event_id": "huge", "context": {"pad": "x" * MAX_MESSAGE_BYTES}}).encode(), "oversized"),
    ]
    return cases


def assert_recent_items(state: dict[str, Any], events: list[Event]) -> None:
    """`GET /users/{id}`'s recent items are `events`, newest first, each once: item and type
    per item, and the newest's full event id (a packed state keeps only digests of the others,
    so the API shows their `event_id` as null)."""
    recent = state["recent"]
    assert [(r["item_id"], r["type"]) for r in recent] == [(e.item_id, e.type) for e in reversed(events)], (
        state.get("user_id"), recent)
    assert [r["event_id"] for r in recent[:1]] == [e.event_id for e in events[-1:]], state.get("user_id")
    assert all(r["event_id"] is None for r in recent[1:]), state.get("user_id")
