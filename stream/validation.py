"""Edge validation: raw bytes from a topic become a contract message or a `Rejection` with a reason.

Nothing here raises on bad input: every failure is a value the caller routes to the DLQ.

>>> v = EventValidator(max_bytes=1024, min_ts=0.0, max_future_skew_s=60.0)
>>> v.parse(b'{"event_id":"e1","user_id":"u","item_id":"i","type":"view","ts":100}', now=120.0).item_id
'i'
>>> v.parse(b'{"event_id":"e1","user_id":"u","item_id":"i","type":"like","ts":100}', now=120.0).reason
'unknown_type'
>>> seen = RecentIds(capacity=2)
>>> [seen.check_and_add(x) for x in ("a", "b", "a", "c", "a")]
[False, False, True, False, True]
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from streamrec.stream.messages import EVENT_TYPES, Event, Item

M = TypeVar("M", bound=BaseModel)

#: Every reason a message can be rejected with (the `reason` field of `events.dlq`).
REASONS = (
    "empty",
    "oversized",
    "invalid_json",
    "not_an_object",
    "schema",
    "unknown_type",
    "absurd_timestamp",
)
_MAX_ERROR_CHARS = 500
#: JSON nested deeper than this is refused (`schema`): pydantic cannot serialize much deeper
#: values (about 255 levels) and Python's parser raises past about 1,000 (`invalid_json`).
MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class Rejection:
    """Why a message was refused: a machine-readable reason and a readable detail."""

    reason: str
    error: str


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999: valid JSON syntax, but no finite number
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _deeper_than(obj: object, limit: int) -> bool:
    """True when lists/objects in `obj` nest more than `limit` levels (iterative: no recursion)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def decode(model: type[M], raw: bytes | None, max_bytes: int) -> M | Rejection:
    """Parse `raw` as one JSON object of `model`, or say why not."""
    if not raw:
        return Rejection("empty", "message has no value")
    if len(raw) > max_bytes:
        return Rejection("oversized", f"{len(raw)} bytes > limit of {max_bytes}")
    try:
        obj = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        return Rejection("invalid_json", str(exc)[:_MAX_ERROR_CHARS])
    except RecursionError:
        return Rejection("invalid_json", "JSON nested too deeply to parse")
    if not isinstance(obj, dict):
        return Rejection("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    if _deeper_than(obj, MAX_JSON_DEPTH):
        return Rejection("schema", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        return Rejection("schema", detail[:_MAX_ERROR_CHARS])


class EventValidator:
    """Turns raw `events` values into `Event`s, refusing absurd ones with a reason."""

    def __init__(self, max_bytes: int, min_ts: float, max_future_skew_s: float) -> None:
        self.max_bytes = max_bytes
        self.min_ts = min_ts
        self.max_future_skew_s = max_future_skew_s

    def parse(self, raw: bytes | None, now: float) -> Event | Rejection:
        """`now` is the receive time (unix s) that bounds how far in the future `ts` may be."""
        result = decode(Event, raw, self.max_bytes)
        if isinstance(result, Rejection):
            if result.reason == "schema" and _has_unknown_type(raw):
                return Rejection("unknown_type", f"type must be one of {list(EVENT_TYPES)}")
            return result
        if result.ts < self.min_ts:
            return Rejection("absurd_timestamp", f"ts {result.ts} is before {self.min_ts}")
        if result.ts > now + self.max_future_skew_s:
            return Rejection(
                "absurd_timestamp",
                f"ts {result.ts} is more than {self.max_future_skew_s}s after receive time {now}",
            )
        # The agents forward `to_bytes()`, which is validated again downstream: it must exist
        # and fit the limit too (an int `ts` comes out as a float, a few bytes longer).
        try:
            size = len(result.to_bytes())
        except ValueError as exc:  # PydanticSerializationError
            return Rejection("schema", f"cannot be serialised: {exc}"[:_MAX_ERROR_CHARS])
        if size > self.max_bytes:
            return Rejection("oversized", f"{size} bytes once serialised > limit of {self.max_bytes}")
        return result


def parse_item(raw: bytes | None, max_bytes: int) -> Item | Rejection:
    """Turns a raw `items` value into an `Item` or a `Rejection`."""
    return decode(Item, raw, max_bytes)


def _has_unknown_type(raw: bytes | None) -> bool:
    try:
        obj = json.loads(raw or b"")
    except (ValueError, RecursionError):
        return False
    kind = obj.get("type") if isinstance(obj, dict) else None
    return isinstance(kind, str) and kind not in EVENT_TYPES


class RecentIds:
    """A bounded set of recently seen ids (least recently seen evicted first)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def check_and_add(self, item: str) -> bool:
        """True when `item` was seen before (a duplicate); remembers it either way."""
        if item in self._ids:
            self._ids.move_to_end(item)
            return True
        self._ids[item] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def add(self, item: str) -> None:
        self.check_and_add(item)

    def __len__(self) -> int:
        return len(self._ids)
