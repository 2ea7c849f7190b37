"""The messages of the five public topics: the single source of truth of the contract.

The JSON Schema files in `stream/schemas/` are generated from these models
(`streamrec schema --write`) and a test checks that they match.

>>> e = Event.model_validate_json(
...     b'{"event_id": "e1", "user_id": "u1", "item_id": "i9", "type": "click", "ts": 1.7e9}')
>>> e.type, e.ts
('click', 1700000000.0)
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EventType = Literal["view", "click", "purchase"]
EVENT_TYPES: tuple[str, ...] = ("view", "click", "purchase")

_Id = Field(min_length=1, max_length=256)
#: A model version names a directory of the model store and is written to logs: at most a file
#: name's 255 characters, no control characters (a newline would forge a log line).
VERSION_MAX_CHARS = 255
_VERSION_RULES: dict[str, Any] = {
    "min_length": 1, "max_length": VERSION_MAX_CHARS, "pattern": r"^[^\x00-\x1f\x7f-\x9f]+$",
}


class _Message(BaseModel):
    """Base of every message: JSON on the wire, strict types, unknown fields ignored."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore", allow_inf_nan=False)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class Event(_Message):
    """A user touched an item (`events` topic, key = user id)."""

    event_id: str = Field(min_length=1, max_length=256, description="unique id; duplicates dropped")
    user_id: str = Field(min_length=1, max_length=256)
    item_id: str = Field(min_length=1, max_length=256)
    type: EventType = Field(description="view | click | purchase")
    ts: float = Field(description="event time, unix seconds")
    context: dict[str, Any] | None = Field(None, description="free-form context (device, page...)")


class Item(_Message):
    """A catalogue entry (`items` topic, key = item id): its text is embedded into the index."""

    item_id: str = Field(min_length=1, max_length=256)
    text: str = Field(min_length=1, max_length=20_000, description="title, category, description")
    attributes: dict[str, Any] | None = None
    vector: list[float] | None = Field(
        None, description="optional precomputed embedding, fused with the text vector"
    )
    ts: float = Field(description="update time, unix seconds")


class RecommendedItem(_Message):
    item_id: str
    score: float
    reason: str | None = Field(None, description='e.g. "similar to <title>", "trending"')


class Recommendation(_Message):
    """A fresh top-K list for one user (`recommendations` topic, key = user id).

    The order rule: delivery is at least once, so after a restart or a rebalance a list can
    arrive twice, or an older list after a newer one. A consumer that keeps one list per user
    keeps the one with the greatest order key (`sequence`, then `trigger_ts`) and replaces it
    only by a list with a strictly greater key; lists with the same `list_id` are the same
    list. A list without `sequence` (published before it existed) orders before every list
    that has one, and among such lists the greater `generated_at` wins.
    """

    user_id: str
    items: list[RecommendedItem]
    model_version: str = Field(description="version of the scorer that ranked this list")
    trigger_event_id: str = Field(description="the newest event that caused this list")
    generated_at: float = Field(description="unix seconds when the list was produced")
    latency_ms: float = Field(description="generated_at - trigger event ts, in milliseconds")
    list_id: str | None = Field(
        None,
        description="deterministic id of the list, from the user and the trigger event (32 hex "
        "digits: BLAKE2b-128 of the UTF-8 user_id and trigger_event_id, each after its length as "
        "4 big-endian bytes); a list published again (after a restart or a rebalance) has the same id",
    )
    sequence: int | None = Field(
        None,
        ge=0,
        description="order key, first part: how many events the user's state had learned when "
        "the list was made (it grows with every new event of the user, across restarts and "
        "rebalances); keep the list with the greatest (sequence, trigger_ts), never replace it "
        "by one with a smaller or equal key",
    )
    trigger_ts: float | None = Field(
        None, description="order key, second part: the trigger event's time (unix seconds)"
    )

    @staticmethod
    def make_list_id(user_id: str, trigger_event_id: str) -> str:
        """32 hex digits: blake2b of the user id and the trigger event id (stable everywhere)."""
        digest = hashlib.blake2b(digest_size=16)
        for part in (user_id, trigger_event_id):
            encoded = part.encode()
            digest.update(len(encoded).to_bytes(4, "big") + encoded)
        return digest.hexdigest()

    def order_key(self) -> tuple[int, float]:
        """(sequence, trigger_ts); (-1, generated_at) for a list without a sequence."""
        if self.sequence is None:
            return (-1, self.generated_at)
        return (self.sequence, self.trigger_ts if self.trigger_ts is not None else 0.0)

    def is_newer_than(self, other: Recommendation | None) -> bool:
        """Whether this list replaces `other` (the same user's list held so far) by the rule.

        >>> def made(sequence, trigger):
        ...     return Recommendation(user_id="u1", items=[], model_version="v1", trigger_event_id=trigger,
        ...                           generated_at=1.0, latency_ms=0.0, sequence=sequence,
        ...                           trigger_ts=10.0 * sequence, list_id=Recommendation.make_list_id("u1", trigger))
        >>> newer, older = made(8, "e8"), made(7, "e7")
        >>> newer.is_newer_than(older), older.is_newer_than(newer), newer.is_newer_than(made(8, "e8"))
        (True, False, False)
        >>> newer.list_id == Recommendation.make_list_id("u1", "e8") != older.list_id
        True
        """
        return other is None or self.order_key() > other.order_key()


ModelAction = Literal["publish", "pin", "unpin", "rollback", "canary", "promote"]


class ModelUpdate(_Message):
    """A model version to serve (`model-updates` topic; every worker reads every message).

    `action` says why: `publish` (a new version, served unless a version is pinned), `pin` and
    `rollback` (serve this version until `unpin`), `unpin` (serve the newest again; `version`
    names it), `canary` (serve this version to a share of users first), `promote` (the canary
    becomes the version everyone gets). Every message names a whole, verifiable version.
    """

    version: str = Field(description="the version served: 1-255 characters, no control characters",
                         **_VERSION_RULES)
    uri: str = Field(description="where the checkpoint lives, e.g. file:///models/<version>")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="of the safetensors weights file")
    parent_version: str | None = Field(None, **_VERSION_RULES)
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: float = Field(description="unix seconds when the version was created")
    action: ModelAction = "publish"


class DeadLetter(_Message):
    """A message that could not be processed (`events.dlq`), with the reason and the original."""

    reason: str = Field(description="machine-readable reason, e.g. invalid_json, schema, oversized")
    error: str = Field(description="human-readable detail")
    raw: str = Field(description="the original bytes: UTF-8 text, or base64 (see raw_encoding)")
    raw_encoding: Literal["text", "base64"] = "text"
    topic: str
    partition: int
    offset: int
    received_at: float

    def raw_bytes(self) -> bytes:
        return base64.b64decode(self.raw) if self.raw_encoding == "base64" else self.raw.encode()

    @staticmethod
    def encode_raw(raw: bytes) -> tuple[str, Literal["text", "base64"]]:
        """Keep readable UTF-8 as text, anything else as base64; nothing is lost."""
        try:
            return raw.decode("utf-8"), "text"
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii"), "base64"


#: topic role -> message model, in the order of the contract.
CONTRACT: dict[str, type[_Message]] = {
    "events": Event,
    "items": Item,
    "recommendations": Recommendation,
    "model-updates": ModelUpdate,
    "events.dlq": DeadLetter,
}


def json_schemas() -> dict[str, str]:
    """File name -> JSON Schema text for every topic of the contract."""
    out = {}
    for topic, model in CONTRACT.items():
        schema = model.model_json_schema(mode="validation")
        schema["$id"] = f"https://streamrec.dev/schemas/{topic}.schema.json"
        schema["x-topic"] = topic
        out[f"{topic}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out
