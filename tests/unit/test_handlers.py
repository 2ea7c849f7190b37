"""The agents' decisions, driven without a broker: DLQ routing, de-duplication, coalescing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamrec.consumers.worker.handlers import (
    DLQ_RAW_LIMIT_BYTES,
    MAX_ATTEMPTS,
    IngestHandler,
    Origin,
    RecommendHandler,
    dead_letter,
)
from streamrec.consumers.worker.metrics import WorkerMetrics
from streamrec.models.core.pipeline import Pipeline
from streamrec.models.core.popularity import TrendingItems
from streamrec.models.core.recommender import Recommender, RecommenderConfig
from streamrec.models.core.scoring import ContentScorer
from streamrec.models.index.protocol import IndexedItem
from streamrec.stream.messages import DeadLetter, Event
from streamrec.stream.settings import Settings
from streamrec.stream.validation import Rejection
from tests.support.fakes import BruteForceIndex

NOW = 1_750_000_000.0
ORIGIN = Origin(topic="events", partition=1, offset=42)


def _raw(event_id: str, user: str = "u1", item: str = "i1") -> bytes:
    return json.dumps({"event_id": event_id, "user_id": user, "item_id": item, "type": "view", "ts": NOW}).encode()


def _count(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_ingest_routes_bad_input_to_dead_letters_and_drops_duplicates() -> None:
    metrics = WorkerMetrics()
    handler = IngestHandler(Settings(dedup_capacity=100), metrics)
    first = handler.handle(_raw("e1"), ORIGIN, NOW)
    assert isinstance(first, Event)
    assert handler.handle(_raw("e1"), ORIGIN, NOW, pending={"e1"}) is None  # same batch
    handler.confirm(["e1"])
    assert handler.handle(_raw("e1"), ORIGIN, NOW) is None  # duplicate once forwarded
    letter = handler.handle(b"\x00not json", ORIGIN, NOW)
    assert isinstance(letter, DeadLetter)
    assert (letter.reason, letter.topic, letter.partition, letter.offset) == ("invalid_json", "events", 1, 42)
    assert letter.raw_bytes() == b"\x00not json"
    assert _count(metrics, "streamrec_events_total", type="view", outcome="accepted") == 1
    assert _count(metrics, "streamrec_events_total", type="view", outcome="duplicate") == 2
    assert _count(metrics, "streamrec_dead_letters_total", topic="events", reason="invalid_json") == 1


def test_an_event_whose_forward_was_not_confirmed_is_not_a_duplicate() -> None:
    handler = IngestHandler(Settings(), WorkerMetrics())
    assert isinstance(handler.handle(_raw("e7"), ORIGIN, NOW), Event)
    # the forward was lost (no confirm): the re-read copy is processed again
    assert isinstance(handler.handle(_raw("e7"), ORIGIN, NOW), Event)


def test_dead_letter_keeps_binary_and_caps_huge_payloads() -> None:
    huge = b"\xff" * (DLQ_RAW_LIMIT_BYTES + 10)
    letter = dead_letter(Rejection("oversized", "too big"), huge, ORIGIN)
    assert letter.raw_encoding == "base64"
    assert letter.raw_bytes() == huge[:DLQ_RAW_LIMIT_BYTES]
    assert "truncated" in letter.error


def _recommend_handler(metrics: WorkerMetrics | None = None) -> RecommendHandler:
    index = BruteForceIndex(2)
    for n, angle in enumerate(np.linspace(0, np.pi / 2, 6)):
        vector = np.array([np.cos(angle), np.sin(angle)], dtype=np.float32)
        index.upsert([IndexedItem(item_id=f"i{n}", vector=vector, title=f"item {n}")])
    recommender = Recommender(index, ContentScorer(), TrendingItems(), RecommenderConfig(k=3))
    pipeline = Pipeline(index=index, catalog=None, recommender=recommender)  # type: ignore[arg-type]
    return RecommendHandler(Settings(), pipeline, metrics or WorkerMetrics())


def _events(users: list[str]) -> list[Event]:
    return [
        Event(event_id=f"e{n}", user_id=user, item_id=f"i{n}", type="view", ts=NOW + n)
        for n, user in enumerate(users)
    ]


def _poison_user(handler: RecommendHandler, user_id: str) -> None:
    """Ranking fails whenever `user_id` is in the batch (a bug only their data reaches)."""
    recommender = handler.pipeline.recommender
    rank = recommender.recommend

    def recommend(states):  # type: ignore[no-untyped-def]
        if any(state.user_id == user_id for state in states):
            raise ValueError(f"cannot rank for {user_id}")
        return rank(states)

    recommender.recommend = recommend  # type: ignore[method-assign]


def test_recommend_coalesces_a_users_events_into_one_list() -> None:
    handler = _recommend_handler()
    events = _events(["a", "b", "a", "a"])
    messages, states = handler.handle(events, {"a": None, "b": None})
    assert [m.user_id for m in messages] == ["a", "b"]
    assert {m.user_id: m.trigger_event_id for m in messages} == {"a": "e3", "b": "e1"}
    assert states["a"].n_events == 3 and states["b"].n_events == 1
    a = messages[0]
    assert {i.item_id for i in a.items}.isdisjoint({"i0", "i2", "i3"})
    assert a.model_version == "content-v1" and a.latency_ms >= 0


def test_a_poison_user_is_set_aside_and_the_rest_of_the_batch_goes_on() -> None:
    handler = _recommend_handler()
    _poison_user(handler, "p")
    events = _events(["a", "p", "b", "a", "p"])
    messages, states, failed = handler.handle_isolating(events, {"a": None, "b": None, "p": None})
    assert {m.user_id: m.trigger_event_id for m in messages} == {"a": "e3", "b": "e2"}
    assert set(states) == {"a", "b"} and list(failed) == ["p"]  # p's stored state is not replaced
    assert isinstance(failed["p"], ValueError) and "cannot rank for p" in str(failed["p"])
    # The first, failed try had learned a's events already: each still counts once.
    assert states["a"].n_events == 2 and states["b"].n_events == 1


def test_a_batch_that_fails_for_every_user_is_raised_not_set_aside() -> None:
    handler = _recommend_handler()
    _poison_user(handler, "a")
    _poison_user(handler, "b")
    for users in (["a", "b", "a"], ["a", "a"]):  # nothing singles a user out: read again
        with pytest.raises(ValueError, match="cannot rank"):
            handler.handle_isolating(_events(users), {})


def test_a_batch_failing_alone_is_set_aside_after_max_attempts() -> None:
    """A poison event with nothing else to read (a quiet stream) does not loop for ever."""
    handler = _recommend_handler()
    _poison_user(handler, "p")
    events = _events(["p", "p"])
    for _ in range(MAX_ATTEMPTS - 1):
        with pytest.raises(ValueError):
            handler.handle_isolating(events, {})
    messages, states, failed = handler.handle_isolating(events, {})
    assert (messages, states, list(failed)) == ([], {}, ["p"])
    assert not handler.attempts.counts, "set-aside events are forgotten"
