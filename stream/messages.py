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
    """A fresh top-K list for one user (`recommendations` topic, key = user id)."""

    user_id: str
    items: list[RecommendedItem]
    model_version: str = Field(description="version of the scorer that ranked this list")
    trigger_event_id: str = Field(description="the newest event that caused this list")
    generated_at: float = Field(description="unix seconds when the list was produced")
    latency_ms: float = Field(description="generated_at - trigger event ts, in milliseconds")


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
