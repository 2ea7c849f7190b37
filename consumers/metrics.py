"""Prometheus metrics of one worker, on a registry of its own (no module-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
STAGE_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)

# aiohttp wants the charset apart from the content type
CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"


class WorkerMetrics:
    """Every metric a worker exports; names follow Prometheus conventions."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "streamrec_events_total",
            "Events consumed, by type and outcome (accepted, duplicate, dead_letter).",
            ["type", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "streamrec_dead_letters_total",
            "Messages routed to the dead-letter topic, by source topic and reason.",
            ["topic", "reason"],
            registry=r,
        )
        self.recommendations = Counter(
            "streamrec_recommendations_total", "Recommendation lists produced.", registry=r
        )
        self.items_indexed = Counter(
            "streamrec_items_indexed_total", "Catalogue items embedded and upserted.", registry=r
        )
        self.end_to_end_latency = Histogram(
            "streamrec_end_to_end_latency_seconds",
            "Event ts -> its recommendation produced.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.stage_latency = Histogram(
            "streamrec_stage_latency_seconds",
            "Time spent per pipeline stage (state, rank, publish, embed, upsert).",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "streamrec_batch_size",
            "Events per micro-batch, by agent.",
            ["agent"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "streamrec_model_info",
            "The serving model version (value 1 on the current version's label).",
            ["version"],
            registry=r,
        )
        self.agent_errors = Counter(
            "streamrec_agent_errors_total",
            "Unexpected errors in an agent (it is restarted; its batch is re-read).",
            ["agent"],
            registry=r,
        )
        self.model_updates = Counter(
            "streamrec_model_updates_total",
            "Messages read from model-updates, by action and outcome (swapped, unchanged, refused)"
            " and, when refused, the reason.",
            ["action", "outcome", "reason"],
            registry=r,
        )
        self.model_swaps = Counter(
            "streamrec_model_swaps_total", "Model versions swapped in while serving.", registry=r
        )
        self.model_swap_seconds = Histogram(
            "streamrec_model_swap_seconds",
            "Loading, verifying and building retrieval vectors for a new version (off the serving path).",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.model_update_delay = Histogram(
            "streamrec_model_update_delay_seconds",
            "A version's creation (created_at) -> serving in this worker.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.model_created = Gauge(
            "streamrec_model_created_timestamp_seconds",
            "When the serving version was created (its age is time() minus this).",
            registry=r,
        )
        self.online_events = Counter(
            "streamrec_online_events_total",
            "Events of users who had been served a list, by the version that ranked it.",
            ["model_version", "arm"],
            registry=r,
        )
        self.online_hits = Counter(
            "streamrec_online_hits_total",
            "Those events whose item was in that list (hit-rate@K = hits / events).",
            ["model_version", "arm"],
            registry=r,
        )
        self.dedup_size = Gauge(
            "streamrec_dedup_ids", "Event ids remembered for de-duplication.", registry=r
        )

    def set_model_version(self, version: str, created_at: float | None = None) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)
        if created_at is not None:
            self.model_created.set(created_at)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
