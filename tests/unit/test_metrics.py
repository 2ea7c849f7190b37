"""The worker's metrics: consumer lag sampling, Faust's sensor behind our one /metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from faust.sensors.prometheus import PrometheusMonitor
from faust.types import TP

from streamrec.consumers.worker.app import create_app
from streamrec.consumers.worker.metrics import WorkerMetrics, sample_consumer_lag
from streamrec.models.core.pipeline import Pipeline
from streamrec.models.core.popularity import TrendingItems
from streamrec.models.core.recommender import Recommender, RecommenderConfig
from streamrec.models.core.scoring import ContentScorer
from streamrec.models.index.protocol import IndexedItem
from streamrec.stream.settings import Settings
from tests.support.fakes import BruteForceIndex


class FakeConsumer:
    """The offsets a Faust consumer would report (a broker's end offsets, its commits)."""

    def __init__(self, assigned: set[TP], ends: dict[TP, int], committed: dict[TP, int | None]) -> None:
        self.assigned, self.ends, self._committed_offset = assigned, ends, committed
        self.earliest_asked: list[TP] = []

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    async def highwaters(self, *partitions: TP) -> dict[TP, int]:
        return {tp: self.ends[tp] for tp in partitions}

    async def earliest_offsets(self, *partitions: TP) -> dict[TP, int]:
        self.earliest_asked.extend(partitions)
        return {tp: 3 for tp in partitions}


def _lag(metrics: WorkerMetrics, topic: str, partition: int) -> float | None:
    return metrics.registry.get_sample_value(
        "streamrec_consumer_lag", {"topic": topic, "partition": str(partition)}
    )


async def test_lag_is_end_minus_committed_on_input_partitions_only() -> None:
    events0, events1, changelog = TP("events", 0), TP("events", 1), TP("streamrec-user-state-changelog", 0)
    consumer = FakeConsumer(
        assigned={events0, events1, changelog},
        ends={events0: 120, events1: 10, changelog: 999},
        committed={events0: 100, events1: None, changelog: 0},
    )
    metrics = WorkerMetrics()
    await sample_consumer_lag(consumer, {"events"}, metrics)
    assert _lag(metrics, "events", 0) == 20
    assert _lag(metrics, "events", 1) == 7  # never committed: from the earliest offset (3)
    assert consumer.earliest_asked == [events1]
    assert _lag(metrics, changelog.topic, 0) is None  # not an input topic

    # a rebalance took partition 0 away: its series goes, the other one follows the offsets
    consumer.assigned = {events1}
    consumer._committed_offset[events1] = 10
    await sample_consumer_lag(consumer, {"events"}, metrics)
    assert _lag(metrics, "events", 0) is None
    assert _lag(metrics, "events", 1) == 0


def _pipeline() -> Pipeline:
    index = BruteForceIndex(dim=2)
    index.upsert([IndexedItem(item_id="i1", vector=np.array([1.0, 0.0], dtype=np.float32), title="one")])
    recommender = Recommender(index, ContentScorer(), TrendingItems(), RecommenderConfig(k=3))
    return Pipeline(index=index, catalog=None, recommender=recommender)  # type: ignore[arg-type]


async def test_faust_sensor_records_into_the_workers_one_metrics_page(tmp_path: Path) -> None:
    settings = Settings(app_id="metrics-test", data_dir=tmp_path)
    app = create_app(settings, pipeline=_pipeline())
    assert isinstance(app.monitor, PrometheusMonitor)
    metrics_pages = [path for path in app.web.views if path.rstrip("/").endswith("metrics")]
    assert metrics_pages == ["/metrics"]

    app.monitor.track_tp_end_offset(TP("events", 2), 42)
    response = await app.web.views["/metrics"].get(None)
    body = response.body.decode()
    assert 'faust_topic_partition_end_offset{partition="2",topic="events"} 42.0' in body
    assert 'streamrec_model_info{version="content-v1"} 1.0' in body


def test_trainer_records_a_refused_and_a_failed_cycle() -> None:
    from streamrec.consumers.trainer.sidecar import TrainerMetrics
    from streamrec.models.learning.continual import CycleOutcome
    from streamrec.models.learning.finetune import CycleReport

    metrics = TrainerMetrics()

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    # every outcome is exported at 0 from the start, so increase() sees the first of each
    assert sample("streamrec_trainer_cycles_total", outcome="failed") == 0
    assert sample("streamrec_trainer_last_cycle_timestamp_seconds") == 0
    report = CycleReport(steps=12, seconds=2.0, steps_per_s=6.0, loss=3.5, candidate={"hr@10": 0.2}, serving={"hr@10": 0.3})
    metrics.record(CycleOutcome(report, manifest=None, closed_at=100.0), published_at=None)
    assert sample("streamrec_trainer_cycles_total", outcome="refused") == 1
    assert sample("streamrec_trainer_steps_total") == 12
    assert sample("streamrec_trainer_loss") == 3.5
    assert sample("streamrec_trainer_holdout_metric", model="serving", metric="hr@10") == 0.3
    refused_at = sample("streamrec_trainer_last_cycle_timestamp_seconds")
    assert refused_at and refused_at > 1e9
    metrics.record_failure()
    assert sample("streamrec_trainer_cycles_total", outcome="failed") == 1
    assert sample("streamrec_trainer_last_cycle_timestamp_seconds") >= refused_at


def test_candidate_recall_is_exported_from_the_cores_counts_at_scrape_time() -> None:
    from types import SimpleNamespace

    import numpy as np

    from streamrec.models.core.blend import ServedCandidates
    from streamrec.models.core.candidate_batch import Source
    from streamrec.models.core.candidate_recall import CandidateRecall

    recall = CandidateRecall()
    metrics = WorkerMetrics()
    metrics.watch_candidate_recall(SimpleNamespace(candidate_recall=recall))  # type: ignore[arg-type]
    served = ServedCandidates(["a", "b"], np.zeros((2, 1)), sources=np.array([Source.NEXT.code, Source.COVISIT.code]))
    for consumed in ("a", "a", "b", "z"):
        recall.observe(served, consumed)
    text = metrics.exposition().decode()
    assert 'streamrec_candidate_next_items_total{outcome="held",source="next"} 2.0' in text
    assert 'streamrec_candidate_next_items_total{outcome="held",source="covisit"} 1.0' in text
    assert 'streamrec_candidate_next_items_total{outcome="missed",source="none"} 1.0' in text
