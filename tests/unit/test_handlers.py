"""The agents' decisions, driven without a broker: DLQ routing, de-duplication, coalescing."""

from __future__ import annotations

import json

import numpy as np

from streamrec.consumers.handlers import (
    DLQ_RAW_LIMIT_BYTES,
    IngestHandler,
    Origin,
    RecommendHandler,
    dead_letter,
)
from streamrec.consumers.metrics import WorkerMetrics
from streamrec.models.index import IndexedItem
from streamrec.models.pipeline import Pipeline
from streamrec.models.popularity import TrendingItems
from streamrec.models.recommender import Recommender, RecommenderConfig
from streamrec.models.scoring import ContentScorer
from streamrec.stream.messages import DeadLetter, Event
from streamrec.stream.settings import Settings
from streamrec.stream.validation import Rejection
from tests.fakes import BruteForceIndex

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


def test_recommend_coalesces_a_users_events_into_one_list() -> None:
    index = BruteForceIndex(2)
    for n, angle in enumerate(np.linspace(0, np.pi / 2, 6)):
        vector = np.array([np.cos(angle), np.sin(angle)], dtype=np.float32)
        index.upsert([IndexedItem(item_id=f"i{n}", vector=vector, title=f"item {n}")])
    recommender = Recommender(index, ContentScorer(), TrendingItems(), RecommenderConfig(k=3))
    pipeline = Pipeline(index=index, catalog=None, recommender=recommender)  # type: ignore[arg-type]
    handler = RecommendHandler(Settings(), pipeline, WorkerMetrics())
    events = [
        Event(event_id=f"e{n}", user_id=user, item_id=f"i{n}", type="view", ts=NOW + n)
        for n, user in enumerate(["a", "b", "a", "a"])
    ]
    messages, states = handler.handle(events, {"a": None, "b": None})
    assert [m.user_id for m in messages] == ["a", "b"]
    assert {m.user_id: m.trigger_event_id for m in messages} == {"a": "e3", "b": "e1"}
    assert states["a"].n_events == 3 and states["b"].n_events == 1
    a = messages[0]
    assert {i.item_id for i in a.items}.isdisjoint({"i0", "i2", "i3"})
    assert a.model_version == "content-v1" and a.latency_ms >= 0
