"""The HTTP API's pure parts: POST /events validates like the topic; the OpenAPI description
names exactly the routes a worker registers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from openapi_spec_validator import validate

from streamrec.consumers.worker.app import create_app
from streamrec.consumers.worker.views import ApiError, parse_event_body
from streamrec.models.core.pipeline import Pipeline
from streamrec.models.core.popularity import TrendingItems
from streamrec.models.core.recommender import Recommender
from streamrec.models.core.scoring import ContentScorer
from streamrec.stream.settings import Settings
from streamrec.stream.validation import EventValidator
from tests.support.events import MAX_MESSAGE_BYTES, bad_messages, event_fields
from tests.support.fakes import BruteForceIndex

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


def _validator() -> EventValidator:
    settings = Settings(max_message_bytes=MAX_MESSAGE_BYTES)
    return EventValidator(settings.max_message_bytes, settings.min_event_ts, settings.max_future_skew_s)


def _refusal(body: bytes, max_events: int = 10) -> ApiError:
    with pytest.raises(ApiError) as refused:
        parse_event_body(body, _validator(), time.time(), max_events)
    assert refused.value.error and refused.value.body()["reason"] == refused.value.reason
    return refused.value


def test_one_event_or_an_array_of_them() -> None:
    one = parse_event_body(json.dumps(event_fields(n=1)).encode(), _validator(), time.time(), 10)
    many = parse_event_body(json.dumps([event_fields(n=n) for n in range(3)]).encode(), _validator(), time.time(), 10)
    assert [e.event_id for e in one] == ["u1-1"]
    assert [e.item_id for e in many] == ["i0", "i1", "i2"]


def test_each_bad_event_is_refused_with_the_reason_the_dead_letter_queue_would_give() -> None:
    """The very cases the e2e test sends to the topic: same validator, same reasons."""
    now = time.time()
    for raw, reason in bad_messages(now):
        batch = b"[" + json.dumps(event_fields(n=0)).encode() + b"," + raw + b"]"
        refused = None
        try:
            parse_event_body(batch, _validator(), now, 10)
        except ApiError as exc:
            refused = exc
        assert refused is not None, raw[:40]
        if reason == "invalid_json":  # the array itself is then not JSON
            assert (refused.status, refused.reason) == (400, "invalid_json")
        else:
            assert (refused.status, refused.reason) == (422, "invalid_events"), raw[:40]
            assert [(p["index"], p["reason"]) for p in refused.extra["problems"]] == [(1, reason)], raw[:40]


def test_single_event_refusals_say_why() -> None:
    assert (_refusal(b"{not json").status, _refusal(b"{not json").reason) == (400, "invalid_json")
    huge = json.dumps(event_fields(n=1, context={"pad": "x" * MAX_MESSAGE_BYTES})).encode()
    assert (_refusal(huge).status, _refusal(huge).reason) == (413, "oversized")
    unknown = _refusal(json.dumps(event_fields(n=1, type="like")).encode())
    assert unknown.status == 422 and unknown.extra["problems"][0]["reason"] == "unknown_type"
    assert _refusal(b'{"event_id": "e", "ts": NaN}').reason == "invalid_json"


def test_batch_limits() -> None:
    assert (_refusal(b"[]").status, _refusal(b"[]").reason) == (400, "empty")
    too_many = json.dumps([event_fields(n=n) for n in range(11)]).encode()
    assert (_refusal(too_many).status, _refusal(too_many).reason) == (413, "too_many_events")
    assert _refusal(b"[1, NaN]").reason == "invalid_json"


def test_all_or_nothing() -> None:
    body = json.dumps([event_fields(n=0), event_fields(n=1, ts=1.0), event_fields(n=2, user_id=7)]).encode()
    problems = _refusal(body).extra["problems"]
    assert [(p["index"], p["reason"]) for p in problems] == [(1, "absurd_timestamp"), (2, "schema")]


def _spec() -> dict:
    spec = yaml.safe_load(SPEC.read_text())
    validate(spec)  # a valid OpenAPI 3.1 document
    return spec


def test_the_openapi_description_names_exactly_the_registered_routes(tmp_path: Path) -> None:
    index = BruteForceIndex(dim=4)
    recommender = Recommender(index=index, scorer=ContentScorer(), trending=TrendingItems())
    pipeline = Pipeline(index=index, catalog=None, recommender=recommender)  # type: ignore[arg-type]
    app = create_app(Settings(data_dir=tmp_path), pipeline=pipeline)
    app.web.init_server()  # applies Faust's own blueprints too: none may be left
    registered = {
        (route.resource.canonical, route.method.lower())
        for route in app.web.web_app.router.routes()
        if route.method.lower() in HTTP_METHODS
    }
    described = {
        (path, method)
        for path, operations in _spec()["paths"].items()
        for method in operations
        if method in HTTP_METHODS
    }
    assert registered == described
