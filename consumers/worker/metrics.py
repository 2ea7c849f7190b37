"""Prometheus metrics of one worker, on a registry of its own (no module-global state).

The registry also holds Faust's own sensor (`faust_*`), so the worker's one `/metrics`
serves both. README.md ("Metrics") lists every name; `tests/unit/test_observability.py`
checks the Grafana dashboard and the alert rules against the names registered here.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from streamrec.models.core.recommender import Recommender

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
STAGE_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)

# aiohttp wants the charset apart from the content type
CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"
FAUST_PREFIX = "faust"  # Faust's sensor names: faust_messages_received_total, ... (not the app id)
SAMPLE_S = 5.0  # consumer lag and catalogue size are sampled this often (s)


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
        self.one_hop = Gauge(
            "streamrec_one_hop",
            "1 while events keyed by user id are served by the agent that reads them (one hop);"
            " 0 while every event is re-keyed through events.by-user first (STREAMREC_ONE_HOP=false,"
            " or events has another partition count than the tables).",
            registry=r,
        )
        self.one_hop_events = Counter(
            "streamrec_one_hop_events_total",
            "Valid, first-seen events served where they were read (keyed by user id, on that"
            " key's partition of events): one hop, no re-keying.",
            registry=r,
        )
        self.rekeyed_events = Counter(
            "streamrec_rekeyed_events_total",
            "Valid, first-seen events re-keyed by user id to events.by-user (the second hop), by"
            " reason: no_key, other_key (the key is not the user id), other_partition (keyed by"
            " user, placed by another partitioner than Kafka's default murmur2), one_hop_off.",
            ["reason"],
            registry=r,
        )
        self.dedup_size = Gauge(
            "streamrec_dedup_ids", "Event ids remembered for de-duplication.", registry=r
        )
        self.consumer_lag = Gauge(
            "streamrec_consumer_lag",
            "Messages not yet committed on each input partition this worker owns"
            " (end offset - committed offset), sampled every few seconds.",
            ["topic", "partition"],
            registry=r,
        )
        self.catalogue_items = Gauge(
            "streamrec_catalogue_items",
            "Items in the text index this worker recommends from (sampled).",
            registry=r,
        )
        self._candidate_recall = _CandidateRecallCollector(None)  # counts once a recommender is watched
        r.register(self._candidate_recall)
        self.index_available = Gauge(
            "streamrec_index_available",
            "1 while the item index (Qdrant) answers; 0 from a failed call until one succeeds.",
            registry=r,
        )
        self.index_available.set(1)
        self.fallback_lists = Counter(
            "streamrec_fallback_lists_total",
            "Lists served without the normal pipeline, by reason (index_unavailable: trending).",
            ["reason"],
            registry=r,
        )
        self.signal_feed_events = Counter(
            "streamrec_signal_feed_events_total",
            "Events handed to the collaborative-signal feed (every partition's of events, by its"
            " broadcast reader; this worker's own, by the agent that ranks them too), by outcome"
            " (learned, duplicate: learned already by the other path, or produced twice, invalid:"
            " refused by the contract, as ingest does, failed: skipped after an error).",
            ["outcome"],
            registry=r,
        )
        self.signal_feed_lag = Gauge(
            "streamrec_signal_feed_lag",
            "events messages (all partitions) not yet learned by this worker's"
            " collaborative-signal feed, as of its last fetch.",
            registry=r,
        )
        # Faust's own sensor, on this registry: served by the same /metrics.
        self.faust = FaustMetrics.create(r, FAUST_PREFIX)

    def install_faust_sensor(self, app: Any) -> None:
        """Make Faust's Prometheus sensor the app's monitor, recording into this registry.

        What `faust.sensors.prometheus.setup_prometheus_sensors` does, minus the `/metrics`
        page it would mount: the worker keeps its one `/metrics` view. Call before the app
        starts (Faust adds its monitor to the sensors at start-up).
        """
        app.monitor = PrometheusMonitor(metrics=self.faust)

    def watch_index(self, recommender: Recommender) -> None:
        """Export the recommender's item-index health and count the lists it falls back on."""
        health = recommender.index_health
        self.index_available.set_function(lambda: float(health.available))
        recommender.on_fallback = lambda reason, lists: self.fallback_lists.labels(reason=reason).inc(lists)

    def watch_candidate_recall(self, recommender: Recommender) -> None:
        """Export whether each user's next item was among the candidates of their last list
        (`streamrec_candidate_next_items_total`), read from the core's counts at scrape time."""
        self._candidate_recall.recommender = recommender

    def record_consumer_lag(self, lags: Mapping[TP, int]) -> None:
        """Replace the lag series: partitions no longer assigned here disappear."""
        self.consumer_lag.clear()
        for tp, lag in lags.items():
            self.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)

    def set_model_version(self, version: str, created_at: float | None = None) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)
        if created_at is not None:
            self.model_created.set(created_at)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class OffsetSource(Protocol):
    """The part of a Faust consumer the lag sampler reads."""

    _committed_offset: Mapping[TP, int | None]

    def assignment(self) -> set[TP]: ...

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]: ...

    async def earliest_offsets(self, *partitions: TP) -> Mapping[TP, int]: ...


def partition_lags(
    ends: Mapping[TP, int], committed: Mapping[TP, int | None], earliest: Mapping[TP, int]
) -> dict[TP, int]:
    """Messages behind per partition: end offset minus the committed one (Kafka's meaning:
    the next offset to read). Never committed (None): from the earliest offset, where a
    group without offsets starts here (`auto_offset_reset=earliest`).

    >>> events0, events1 = TP("events", 0), TP("events", 1)
    >>> partition_lags({events0: 120, events1: 7}, {events0: 100, events1: None}, {events1: 2})
    {TP(topic='events', partition=0): 20, TP(topic='events', partition=1): 5}
    """
    lags = {}
    for tp, end in ends.items():
        start = committed.get(tp)
        if start is None:
            start = earliest.get(tp, 0)
        lags[tp] = max(0, end - start)
    return lags


async def sample_consumer_lag(
    consumer: OffsetSource, topics: Collection[str], metrics: WorkerMetrics
) -> None:
    """Ask the broker for the end offsets of the `topics` partitions assigned to this
    worker and record their lag behind Faust's committed offsets.

    End offsets come from the broker (ListOffsets), not from the last fetch, so the lag
    keeps growing while an agent is stuck and fetches nothing.
    """
    tps = sorted(tp for tp in consumer.assignment() if tp.topic in topics)
    if not tps:
        metrics.record_consumer_lag({})
        return
    ends = await consumer.highwaters(*tps)
    # Faust keeps the committed offsets it read at assignment and those it committed since.
    committed = {tp: consumer._committed_offset.get(tp) for tp in tps}
    never = [tp for tp, offset in committed.items() if offset is None]
    earliest = await consumer.earliest_offsets(*never) if never else {}
    metrics.record_consumer_lag(partition_lags(ends, committed, earliest))


class _CandidateRecallCollector(Collector):
    """`streamrec_candidate_next_items_total{outcome, source}` from `Recommender.candidate_recall`:
    held (by the source that found the item first) or missed. Recall over a window is
    `sum(rate(...{outcome="held"}[5m])) / sum(rate(...[5m]))`."""

    _labelnames = ("outcome", "source")  # as a labelled Counter names them

    def __init__(self, recommender: Recommender | None) -> None:
        self.recommender = recommender

    def describe(self) -> list[CounterMetricFamily]:
        return [self._family()]

    def collect(self) -> list[CounterMetricFamily]:
        family = self._family()
        if self.recommender is None:
            return [family]
        recall = self.recommender.candidate_recall
        for source, n in sorted(recall.held_by_source.items()):
            family.add_metric(["held", source], n)
        family.add_metric(["missed", "none"], recall.judged - recall.held)
        return [family]

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "streamrec_candidate_next_items",
            "Users' next items judged against the candidates of their last list (warm users): "
            "held, by the source that found the item first, or missed.",
            labels=list(_CandidateRecallCollector._labelnames),
        )
