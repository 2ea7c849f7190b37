"""Property-based tests of the edge validator: whatever bytes arrive, the answer is a valid
`Event` or a `Rejection` with a documented reason, never an exception; an accepted event
survives the trip the ingest agent gives it (serialised, forwarded, validated again)."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamrec.consumers.worker.views import ApiError, parse_event_body
from streamrec.stream.messages import DeadLetter, Event
from streamrec.stream.validation import MAX_JSON_DEPTH, REASONS, EventValidator, Rejection
from tests.support.events import event_fields
from tests.support.fuzz_inputs import MAX_SKEW_S, MIN_TS, Fuzzed, inputs

NOW = 1_750_000_000.0
MAX_BYTES = 4096  # the e2e tests' limit: small enough that oversized inputs stay cheap
VALIDATOR = EventValidator(max_bytes=MAX_BYTES, min_ts=MIN_TS, max_future_skew_s=MAX_SKEW_S)
README_REASONS = {"empty", "oversized", "invalid_json", "not_an_object", "schema", "unknown_type", "absurd_timestamp"}
FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def outcome(result: Event | Rejection) -> str:
    return "valid" if isinstance(result, Event) else result.reason


def test_the_reasons_are_the_documented_ones() -> None:
    assert set(REASONS) == README_REASONS


@FUZZ
@given(inputs(NOW, MAX_BYTES))
def test_any_input_is_an_event_or_a_documented_rejection(fuzzed: Fuzzed) -> None:
    result = VALIDATOR.parse(fuzzed.raw, NOW)
    assert isinstance(result, Event | Rejection)
    assert outcome(result) in fuzzed.expected, (fuzzed.kind, result)
    if isinstance(result, Rejection):
        assert result.reason in REASONS and 0 < len(result.error) <= 500
        # Its dead letter keeps the very bytes (text or base64).
        text, encoding = DeadLetter.encode_raw(fuzzed.raw)
        letter = DeadLetter(reason=result.reason, error=result.error, raw=text, raw_encoding=encoding,
                            topic="events", partition=0, offset=0, received_at=NOW)
        assert DeadLetter.model_validate_json(letter.to_bytes()).raw_bytes() == fuzzed.raw
        return
    assert MIN_TS <= result.ts <= NOW + MAX_SKEW_S
    assert result.event_id and result.user_id and result.item_id
    # What ingest forwards to events.by-user is accepted again by the recommend agent.
    forwarded = result.to_bytes()
    result.user_id.encode()  # the key
    assert VALIDATOR.parse(forwarded, NOW + 1) == result


@FUZZ
@given(st.lists(inputs(NOW, MAX_BYTES), min_size=1, max_size=5))
def test_post_events_refuses_with_a_status_or_accepts_all(batch: list[Fuzzed]) -> None:
    """The HTTP body parser over arrays of fuzzed events: 400/413/422 or every event, never a crash."""
    elements = []
    for fuzzed in batch:
        try:
            elements.append(json.loads(fuzzed.raw))
        except (ValueError, RecursionError):
            elements.append(fuzzed.raw.decode("utf-8", "replace"))  # a string: not an object
    body = json.dumps(elements).encode()
    try:
        events = parse_event_body(body, VALIDATOR, NOW, max_events=10)
    except ApiError as refused:
        assert refused.status in (400, 413, 422) and refused.reason and refused.error
        return
    assert len(events) == len(batch) and all(isinstance(e, Event) for e in events)


# --- regressions the fuzzing found -----------------------------------------------------
def test_json_too_deep_for_the_parser_is_refused_not_raised() -> None:
    """json.loads raises RecursionError (not a ValueError) past ~1,000 levels."""
    for raw in (b"[" * 2000 + b"]" * 2000, json.dumps(event_fields(ts=NOW)).encode()[:-1] + b', "context": ' + b"[" * 1500 + b"]" * 1500 + b"}"):
        result = VALIDATOR.parse(raw, NOW)
        assert isinstance(result, Rejection) and result.reason == "invalid_json", result


def test_json_too_deep_to_forward_is_refused() -> None:
    """Between ~255 and ~1,000 levels pydantic validated the event but could not serialise
    it: the ingest agent raised while forwarding it (no list, no dead letter)."""
    validator = EventValidator(max_bytes=65_536, min_ts=MIN_TS, max_future_skew_s=MAX_SKEW_S)
    for depth in (MAX_JSON_DEPTH, 300, 900):
        deep: object = 1
        for _ in range(depth):
            deep = {"a": deep}
        result = validator.parse(json.dumps(event_fields(ts=NOW, context=deep)).encode(), NOW)
        assert isinstance(result, Rejection) and result.reason == "schema" and "nested" in result.error
    shallow = validator.parse(json.dumps(event_fields(ts=NOW, context={"a": {"b": [1, [2]]}})).encode(), NOW)
    assert isinstance(shallow, Event) and shallow.context == {"a": {"b": [1, [2]]}}


@pytest.mark.parametrize("number", [b"1e999", b"-1e999", b"1E400"])
def test_a_number_beyond_float_range_is_refused_like_nan(number: bytes) -> None:
    """`1e999` parsed to inf: in `context` it was accepted (and forwarded as null)."""
    raw = json.dumps(event_fields(ts=NOW, context={"x": "N"})).encode().replace(b'"N"', number)
    result = VALIDATOR.parse(raw, NOW)
    assert isinstance(result, Rejection) and result.reason == "invalid_json", result


def test_an_event_that_would_outgrow_the_limit_once_forwarded_is_refused_at_the_edge() -> None:
    """Compact JSON with an int `ts` 1 byte under the limit was accepted, then forwarded as
    `"ts":1750000000.0`, 2 bytes over it: the recommend agent dead-lettered an event already
    counted as accepted (and POST /events answered 202 for an event ingest then refused)."""
    event = event_fields(ts=int(NOW), context={"p": ""})
    pad = MAX_BYTES - 1 - len(json.dumps(event, separators=(",", ":")))
    raw = json.dumps(event_fields(ts=int(NOW), context={"p": "x" * pad}), separators=(",", ":")).encode()
    assert len(raw) == MAX_BYTES - 1
    result = VALIDATOR.parse(raw, NOW)
    assert isinstance(result, Rejection) and result.reason == "oversized" and "serialised" in result.error
    fits = VALIDATOR.parse(raw.replace(b"xxx", b"", 1), NOW)
    assert isinstance(fits, Event) and VALIDATOR.parse(fits.to_bytes(), NOW) == fits


def test_post_events_array_too_deep_is_a_400() -> None:
    with pytest.raises(ApiError) as refused:
        parse_event_body(b"[" * 3000 + b"]" * 3000, VALIDATOR, time.time(), 10)
    assert (refused.value.status, refused.value.reason) == (400, "invalid_json")
