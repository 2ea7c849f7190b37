"""Edge validation: every bad input becomes a Rejection with the right reason; nothing raises."""

import json

import pytest

from streamrec.stream.messages import Event
from streamrec.stream.validation import EventValidator, RecentIds, Rejection, parse_item

NOW = 1_750_000_000.0
VALID = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "click", "ts": NOW - 5}


@pytest.fixture
def validator() -> EventValidator:
    return EventValidator(max_bytes=1024, min_ts=631_152_000.0, max_future_skew_s=3600.0)


def _raw(**changes) -> bytes:
    return json.dumps({**VALID, **changes}).encode()


def test_valid_event_is_accepted(validator: EventValidator) -> None:
    event = validator.parse(_raw(), NOW)
    assert isinstance(event, Event) and event.user_id == "u1" and event.type == "click"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (None, "empty"),
        (b"{not json", "invalid_json"),
        (b"\xff\xfe\x00garbage", "invalid_json"),
        (b'{"ts": NaN}', "invalid_json"),
        (b"[1, 2, 3]", "not_an_object"),
        (b'"just a string"', "not_an_object"),
        (json.dumps({k: v for k, v in VALID.items() if k != "item_id"}).encode(), "schema"),
        (_raw(user_id=42), "schema"),
        (_raw(ts="2024-01-01"), "schema"),
        (_raw(user_id=""), "schema"),
        (_raw(type="like"), "unknown_type"),
        (_raw(ts=100.0), "absurd_timestamp"),
        (_raw(ts=NOW + 86_400), "absurd_timestamp"),
        (b'{"pad": "' + b"x" * 2000 + b'"}', "oversized"),
    ],
)
def test_bad_input_is_rejected_with_its_reason(validator: EventValidator, raw, reason: str) -> None:
    result = validator.parse(raw, NOW)
    assert isinstance(result, Rejection)
    assert result.reason == reason, result.error
    assert result.error


def test_item_validation() -> None:
    ok = parse_item(b'{"item_id": "i1", "text": "red running shoe", "ts": 1.0}', 1024)
    assert not isinstance(ok, Rejection) and ok.text == "red running shoe"
    bad = parse_item(b'{"item_id": "i1", "ts": 1.0}', 1024)
    assert isinstance(bad, Rejection) and bad.reason == "schema" and "text" in bad.error


def test_recent_ids_is_bounded_and_forgets_the_oldest() -> None:
    seen = RecentIds(capacity=3)
    assert [seen.check_and_add(x) for x in "abc"] == [False, False, False]
    assert seen.check_and_add("d") is False  # evicts "a"
    assert len(seen) == 3
    assert seen.check_and_add("a") is False  # forgotten
    assert seen.check_and_add("d") is True
