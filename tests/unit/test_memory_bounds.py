"""Every per-worker structure that grows with traffic has a limit (what the soak relies on).

Covered elsewhere: `RecentIds` eviction (test_validation), a user's history and consumed items
(test_state), trending capacity (test_popularity), the item-index cache (test_index_contract).
Here: the limits on the worker's own paths, and the metric labels.
"""

from __future__ import annotations

import json

from streamrec.consumers.worker.handlers import IngestHandler, Origin
from streamrec.consumers.worker.metrics import WorkerMetrics
from streamrec.models.core.state import UserState
from streamrec.stream.messages import Event
from streamrec.stream.settings import Settings

NOW = 1_750_000_000.0
ORIGIN = Origin(topic="events", partition=0, offset=0)

# Every label a worker metric has, and why its values are few: no label may take a value per
# user, item or event (one series each would grow with the traffic).
BOUNDED_LABELS = {
    "type": "an event type (view, click, purchase) or unknown",
    "outcome": "accepted, duplicate, dead_letter; swapped, unchanged, refused",
    "topic": "an input topic of the worker",
    "reason": "a rejection or refusal reason from a fixed list",
    "stage": "a pipeline stage",
    "agent": "a Faust agent",
    "partition": "a partition this worker owns",
    "action": "a model-updates action",
    "version": "the serving model version (one series, cleared on a swap)",
    "model_version": "a version that ranked a list: grows with the versions served, not with traffic",
    "arm": "main or canary",
    "source": "a candidate source (neighbour, model, next, covisit, peers, trending) or none",
}


def _raw(event_id: str) -> bytes:
    return json.dumps({"event_id": event_id, "user_id": f"u{event_id}", "item_id": "i1", "type": "view",
                       "ts": NOW}).encode()


def test_the_ingest_dedupe_holds_at_most_its_capacity_and_reports_it() -> None:
    metrics = WorkerMetrics()
    handler = IngestHandler(Settings(dedup_capacity=50), metrics)
    for batch in range(10):
        accepted = [f"e{batch}-{n}" for n in range(20)]
        for event_id in accepted:
            assert handler.handle(_raw(event_id), ORIGIN, NOW) is not None
        handler.confirm(accepted)
        assert len(handler.seen) <= 50
    assert len(handler.seen) == 50
    assert metrics.registry.get_sample_value("streamrec_dedup_ids") == 50
    assert "e9-19" in handler.seen and "e0-0" not in handler.seen  # the oldest ids went first


def test_a_restored_state_is_cut_to_the_limits_in_force() -> None:
    """A state stored under larger limits (or hand-edited) does not bring them back."""
    big = UserState("u", max_history=500, max_consumed=5_000)
    for n in range(2_000):
        big.learn(Event(event_id=f"e{n}", user_id="u", item_id=f"i{n}", type="view", ts=NOW + n))
    restored = UserState.from_dict(big.to_dict(), max_history=50, max_consumed=100)
    assert len(restored.recent) == 50 and restored.recent[-1].item_id == "i1999"
    assert restored.n_consumed == 100 and restored.has_consumed("i1999") and not restored.has_consumed("i0")


def test_no_worker_metric_is_labelled_per_user_item_or_event() -> None:
    metrics = WorkerMetrics()
    labels = {
        name: set(collector._labelnames)
        for name, collector in metrics.registry._names_to_collectors.items()
        if name.startswith("streamrec_")
    }
    assert labels, "no streamrec_ metrics found"
    unbounded = {name: names - BOUNDED_LABELS.keys() for name, names in labels.items() if names - BOUNDED_LABELS.keys()}
    assert not unbounded, f"labels whose values are not known to be few: {unbounded}"
