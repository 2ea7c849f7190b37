"""The output contract's order rule and de-duplication across restarts, without a broker.

Every list carries a deterministic `list_id` (user + trigger event) and an order key
(`sequence`, `trigger_ts`); the worker publishes a list only for the newest event a user's
state has learned, and the state remembers event ids past its history, in its stored form.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from types import SimpleNamespace

import numpy as np

from streamrec.consumers.cli.main import print_newest_lists
from streamrec.consumers.worker.handlers import RecommendHandler
from streamrec.consumers.worker.metrics import WorkerMetrics
from streamrec.models.core.interner import Interner
from streamrec.models.core.packed_state import from_record, pack, to_record, unpack
from streamrec.models.core.pipeline import Pipeline
from streamrec.models.core.popularity import TrendingItems
from streamrec.models.core.recommender import Recommender, RecommenderConfig
from streamrec.models.core.scoring import ContentScorer
from streamrec.models.core.state import UserState
from streamrec.models.index.protocol import IndexedItem
from streamrec.stream.messages import Event, Recommendation, json_schemas
from streamrec.stream.readers import LatestLists
from streamrec.stream.settings import Settings
from tests.support.fakes import BruteForceIndex

NOW = 1_750_000_000.0
HISTORY = 2  # events a state keeps: duplicates of older ones need the id memory


def recommend_handler() -> RecommendHandler:
    index = BruteForceIndex(2)
    for n, angle in enumerate(np.linspace(0, np.pi / 2, 8)):
        vector = np.array([np.cos(angle), np.sin(angle)], dtype=np.float32)
        index.upsert([IndexedItem(item_id=f"i{n}", vector=vector, title=f"item {n}")])
    recommender = Recommender(index, ContentScorer(), TrendingItems(),
                              RecommenderConfig(k=3, history_length=HISTORY))
    pipeline = Pipeline(index=index, catalog=None, recommender=recommender)  # type: ignore[arg-type]
    return RecommendHandler(Settings(history_length=HISTORY), pipeline, WorkerMetrics())


def event(n: int, user: str = "a") -> Event:
    return Event(event_id=f"e{n}", user_id=user, item_id=f"i{n}", type="view", ts=NOW + n)


def restarted(state: UserState) -> UserState:
    """The state as a restarted worker reads it back: packed, through its changelog record,
    into another process's item codes."""
    here, there = Interner(), Interner()
    record = to_record(pack(state, here), here)
    return unpack(from_record(record, there), state.user_id, there, max_history=HISTORY)


def test_every_list_has_a_deterministic_id_and_a_growing_order_key() -> None:
    handler = recommend_handler()
    (first,), states = handler.handle([event(0), event(1)], {"a": None})
    (second,), states = handler.handle([event(2)], {"a": states["a"]})
    assert (first.sequence, first.trigger_event_id, first.trigger_ts) == (2, "e1", NOW + 1)
    assert (second.sequence, second.trigger_event_id) == (3, "e2")
    assert first.list_id == Recommendation.make_list_id("a", "e1") != second.list_id
    assert second.is_newer_than(first) and not first.is_newer_than(second)


def test_the_newest_event_read_again_gives_the_same_list_and_older_ones_none() -> None:
    handler = recommend_handler()
    (original,), states = handler.handle([event(0), event(1), event(2)], {"a": None})
    state = restarted(states["a"])  # a crash before the batch's offsets were committed
    (again,), states = handler.handle([event(0), event(1), event(2)], {"a": state})
    assert (again.list_id, again.sequence, again.trigger_ts) == (original.list_id, 3, original.trigger_ts)
    messages, states = handler.handle([event(0), event(1)], {"a": restarted(states["a"])})
    assert messages == [] and states["a"].n_events == 3  # older than the newest: dropped, no list


def test_duplicates_past_the_history_are_dropped_after_a_restart() -> None:
    handler = recommend_handler()
    _, states = handler.handle([event(n) for n in range(6)], {"a": None})
    state = restarted(states["a"])
    assert [i.event_id for i in state.recent] == [None, "e5"]  # the others only in the id memory
    (message,), states = handler.handle([event(1), event(3), event(6)], {"a": state})
    assert states["a"].n_events == 7 and states["a"].counts["view"] == 7
    assert (message.trigger_event_id, message.sequence) == ("e6", 7)


def test_a_state_stored_before_the_id_memory_still_drops_its_recent_events() -> None:
    state = UserState("a", max_history=HISTORY)
    for n in range(3):
        state.learn(event(n))
    stored = state.to_dict()
    del stored["ids"]
    old = UserState.from_dict(stored, max_history=HISTORY)
    assert not old.learn(event(2)) and old.learn(event(0)) is True  # e0 had left `recent`


def test_lists_from_before_the_order_key_parse_and_order_first() -> None:
    legacy = Recommendation.model_validate_json(
        b'{"user_id": "a", "items": [], "model_version": "v", "trigger_event_id": "e9",'
        b' "generated_at": 5.0, "latency_ms": 1.0}')
    assert legacy.list_id is None and legacy.sequence is None and legacy.order_key() == (-1, 5.0)
    keyed = legacy.model_copy(update={"sequence": 0, "trigger_ts": 1.0})
    assert keyed.is_newer_than(legacy) and not legacy.is_newer_than(keyed)


def test_the_schema_documents_the_rule_and_keeps_old_fields_required() -> None:
    schema = json.loads(json_schemas()["recommendations.schema.json"])
    assert {"list_id", "sequence", "trigger_ts"} <= set(schema["properties"])
    assert set(schema["required"]) == {"user_id", "items", "model_version", "trigger_event_id",
                                       "generated_at", "latency_ms"}
    assert "order rule" in schema["description"] and "sequence" in schema["properties"]["sequence"]["description"]


def test_latest_lists_and_tail_skip_repeated_and_older_lists() -> None:
    handler = recommend_handler()
    (older,), states = handler.handle([event(0)], {"a": None})
    (newer,), _ = handler.handle([event(1)], {"a": states["a"]})
    arrivals = [older, newer, older, newer]  # a re-read after a failover: both again, late
    latest = LatestLists()
    assert [latest.offer(m) for m in arrivals] == [True, True, False, False]
    assert latest["a"] == newer and (latest.stale, latest.repeated) == (1, 1)
    out = io.StringIO()
    on_message = print_newest_lists(LatestLists())
    with redirect_stdout(out):
        for message in arrivals:
            on_message(SimpleNamespace(value=message.to_bytes()))
        on_message(SimpleNamespace(value=b"\x1b[2Jnot a list"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1] == "\\x1b[2Jnot a list"  # escaped, not sent to the terminal
