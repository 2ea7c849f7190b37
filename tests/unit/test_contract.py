"""The JSON Schema files in stream/schemas/ are generated from the pydantic models and agree."""

import json
from pathlib import Path

import jsonschema
import pytest

from streamrec.stream.messages import CONTRACT, DeadLetter, Event, Recommendation, json_schemas

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "stream" / "schemas"


@pytest.mark.parametrize("name", sorted(json_schemas()))
def test_schema_file_matches_the_model(name: str) -> None:
    path = SCHEMA_DIR / name
    assert path.is_file(), f"{path} missing: run `make schemas`"
    assert path.read_text() == json_schemas()[name], f"{name} is stale: run `make schemas`"


def test_every_topic_of_the_contract_has_a_schema() -> None:
    assert set(CONTRACT) == {"events", "items", "recommendations", "model-updates", "events.dlq"}
    assert {f"{t}.schema.json" for t in CONTRACT} == {p.name for p in SCHEMA_DIR.glob("*.json")}


def _schema(topic: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{topic}.schema.json").read_text())


def test_model_output_validates_against_the_published_schema() -> None:
    event = Event(event_id="e1", user_id="u1", item_id="i1", type="purchase", ts=1.7e9, context={"page": "home"})
    jsonschema.validate(json.loads(event.to_bytes()), _schema("events"))
    rec = Recommendation(
        user_id="u1", items=[{"item_id": "i2", "score": 0.5, "reason": "trending"}],
        model_version="content-v1", trigger_event_id="e1", generated_at=1.7e9, latency_ms=3.0,
    )
    jsonschema.validate(json.loads(rec.to_bytes()), _schema("recommendations"))
    text, encoding = DeadLetter.encode_raw(b"\xff\x00 not utf-8")
    letter = DeadLetter(reason="invalid_json", error="x", raw=text, raw_encoding=encoding,
                        topic="events", partition=0, offset=3, received_at=1.7e9)
    assert letter.raw_bytes() == b"\xff\x00 not utf-8"
    jsonschema.validate(json.loads(letter.to_bytes()), _schema("events.dlq"))


@pytest.mark.parametrize(
    "bad",
    [
        {"user_id": "u", "item_id": "i", "type": "view", "ts": 1.7e9},  # no event_id
        {"event_id": "e", "user_id": 5, "item_id": "i", "type": "view", "ts": 1.7e9},
        {"event_id": "e", "user_id": "u", "item_id": "i", "type": "like", "ts": 1.7e9},
        {"event_id": "e", "user_id": "u", "item_id": "i", "type": "view", "ts": "yesterday"},
    ],
)
def test_schema_and_model_both_refuse_bad_events(bad: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _schema("events"))
    with pytest.raises(ValueError):
        Event.model_validate(bad)
