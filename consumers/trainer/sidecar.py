"""`streamrec trainer`: the sidecar that keeps the model fresh while the stream runs.

It reads `events` in its own consumer group (its own offsets, so it neither steals events
from the workers nor slows them down), the whole `items` topic for the catalogue, and
`model-updates` to know which version is being served. Whenever a cycle is due, it
fine-tunes in a thread (consumption goes on), and publishes accepted versions: checkpoint to
the model store first, then a `publish` message every worker reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from streamrec.models.core.catalog import embed_items
from streamrec.models.core.device import select_device
from streamrec.models.core.encoder import TextEncoder
from streamrec.models.learning.continual import ContinualConfig, ContinualTrainer, CycleOutcome
from streamrec.models.learning.control import ModelControl
from streamrec.models.learning.store import DirectoryModelStore
from streamrec.stream.messages import Item, ModelUpdate
from streamrec.stream.model_updates import update_for
from streamrec.stream.producer import EventProducer
from streamrec.stream.readers import open_broadcast_reader
from streamrec.stream.settings import Settings
from streamrec.stream.validation import EventValidator, RecentIds, Rejection, parse_item

log = logging.getLogger(__name__)

CYCLE_BUCKETS_S = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
# Window closed -> published: the buckets of the workers' latency histograms
# (`consumers.worker.metrics.LATENCY_BUCKETS_S`), so the two delays read on one scale.
PUBLISH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
POLL_S = 0.5  # how often the trainer checks whether a cycle is due


class TrainerMetrics:
    """What the trainer exports (its own registry and port)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.events = Counter(
            "streamrec_trainer_events_total", "Events read, by outcome (windowed, invalid, duplicate).",
            ["outcome"], registry=r,
        )
        self.window_events = Gauge("streamrec_trainer_window_events", "Events in the sliding window.", registry=r)
        self.items = Gauge("streamrec_trainer_items", "Catalogue items the trainer knows.", registry=r)
        self.steps = Counter("streamrec_trainer_steps_total", "Optimiser steps taken.", registry=r)
        self.loss = Gauge("streamrec_trainer_loss", "Mean training loss of the last cycle.", registry=r)
        self.steps_per_second = Gauge(
            "streamrec_trainer_steps_per_second", "Training speed of the last cycle.", registry=r
        )
        self.holdout_metric = Gauge(
            "streamrec_trainer_holdout_metric",
            "The last cycle's figures on the newest slice, by model (candidate, serving) and metric.",
            ["model", "metric"], registry=r,
        )
        self.cycles = Counter(
            "streamrec_trainer_cycles_total", "Fine-tuning cycles, by outcome (published, refused, failed).",
            ["outcome"], registry=r,
        )
        self.cycle_seconds = Histogram(
            "streamrec_trainer_cycle_seconds", "Time of one cycle (train + evaluate + save).",
            buckets=CYCLE_BUCKETS_S, registry=r,
        )
        self.window_to_published = Histogram(
            "streamrec_trainer_window_to_published_seconds",
            "Window closed -> new version on model-updates (workers add their swap time).",
            buckets=PUBLISH_BUCKETS_S, registry=r,
        )
        self.serving = Gauge(
            "streamrec_trainer_serving_info", "The version the trainer fine-tunes from (value 1).",
            ["version"], registry=r,
        )
        self.last_cycle = Gauge(
            "streamrec_trainer_last_cycle_timestamp_seconds",
            "When the last cycle ended, whatever its outcome (0: none yet).", registry=r,
        )
        for cycle_outcome in ("published", "refused", "failed"):  # exported from the start at 0,
            self.cycles.labels(outcome=cycle_outcome)  # so increase() sees the first of each

    def record_failure(self) -> None:
        self.cycles.labels(outcome="failed").inc()
        self.last_cycle.set(time.time())

    def record(self, outcome: CycleOutcome, published_at: float | None) -> None:
        report = outcome.report
        self.steps.inc(report.steps)
        if report.loss is not None:
            self.loss.set(report.loss)
        self.steps_per_second.set(report.steps_per_s)
        for model, figures in (("candidate", report.candidate), ("serving", report.serving)):
            for metric, value in figures.items():
                self.holdout_metric.labels(model=model, metric=metric).set(value)
        self.cycles.labels(outcome="published" if outcome.manifest else "refused").inc()
        self.cycle_seconds.observe(report.seconds)
        if published_at is not None:
            self.window_to_published.observe(published_at - outcome.closed_at)
        self.last_cycle.set(time.time())


class TrainerService:
    """The topics <-> `ContinualTrainer` glue."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        if settings.trainer_threads:  # a sidecar must not starve the workers beside it
            torch.set_num_threads(settings.trainer_threads)
        self.device = select_device(settings.device)
        self.encoder = TextEncoder(settings.encoder_path, device=str(self.device), batch_size=settings.encoder_batch_size)
        self.store = DirectoryModelStore(settings.resolved_model_dir)
        self.core = ContinualTrainer(self.store, ContinualConfig.from_settings(settings), self.device)
        self.control = ModelControl.pinned_to(settings.model_version, canaries=settings.canary_fraction > 0)
        self.metrics = TrainerMetrics()
        self.validator = EventValidator(settings.max_message_bytes, settings.min_event_ts, settings.max_future_skew_s)
        self.seen = RecentIds(settings.dedup_capacity)

    async def run(self, stop: asyncio.Event) -> None:
        from aiokafka import AIOKafkaConsumer

        settings = self.settings
        if settings.trainer_metrics_port:
            start_http_server(settings.trainer_metrics_port, addr=settings.metrics_host, registry=self.metrics.registry)
        options: dict[str, Any] = dict(
            bootstrap_servers=settings.bootstrap_servers,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            **settings.kafka_client_options(),
        )
        events = AIOKafkaConsumer(
            settings.topics.events, group_id=settings.resolved_trainer_group,
            auto_offset_reset="earliest", enable_auto_commit=True, **options,
        )
        async with EventProducer(settings) as producer:
            await events.start()
            try:
                # The catalogue and the control messages: the whole history, no group (like a worker).
                side, _ = await open_broadcast_reader(settings, [settings.topics.items, settings.topics.model_updates])
            except BaseException:
                await events.stop()
                raise
            try:
                tasks = [
                    asyncio.ensure_future(self._read_events(events)),
                    asyncio.ensure_future(self._read_side(side)),
                    asyncio.ensure_future(self._cycles(producer)),
                ]
                done, _ = await asyncio.wait([*tasks, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
                for task in tasks:
                    task.cancel()
                for task in done:
                    if task not in tasks:
                        continue
                    task.result()  # surface a crash of a reader
            finally:
                await events.stop()
                await side.stop()

    async def _read_events(self, consumer: Any) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=1000, max_records=2000)
            accepted = []
            now = time.time()
            for records in batch.values():
                for record in records:
                    parsed = self.validator.parse(record.value, now=now)
                    if isinstance(parsed, Rejection):
                        self.metrics.events.labels(outcome="invalid").inc()
                    elif self.seen.check_and_add(parsed.event_id):
                        self.metrics.events.labels(outcome="duplicate").inc()
                    else:
                        accepted.append(parsed)
            if accepted:
                self.core.add_events(accepted)
                self.metrics.events.labels(outcome="windowed").inc(len(accepted))
                self.metrics.window_events.set(len(self.core.window))

    async def _read_side(self, consumer: Any) -> None:
        topics = self.settings.topics
        while True:
            batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
            items: list[Item] = []
            for tp, records in batch.items():
                for record in records:
                    if tp.topic == topics.items:
                        item = parse_item(record.value, self.settings.max_message_bytes)
                        if not isinstance(item, Rejection):
                            items.append(item)
                    else:
                        self._on_update(record.value)
            if items:
                indexed = await asyncio.to_thread(embed_items, self.encoder, items)
                self.core.add_items(indexed)
                self.metrics.items.set(len(self.core.vectors))

    def _on_update(self, raw: bytes | None) -> None:
        try:
            update = ModelUpdate.model_validate_json(raw or b"")
        except ValueError:
            log.warning("ignoring an unreadable model-updates message")
            return
        main = self.control.apply(update).main
        self.core.serving_version = main.version if main is not None else None
        self.metrics.serving.clear()
        if main is not None:
            self.metrics.serving.labels(version=main.version).set(1)

    async def _cycles(self, producer: EventProducer) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            now = time.time()
            if not self.core.vectors or not self.core.due(now):
                continue
            cycle = self.core.cut(now)
            try:
                outcome = await asyncio.to_thread(self.core.run, cycle)
            except Exception:  # a failed cycle must not stop the sidecar
                log.exception("fine-tuning cycle failed")
                self.metrics.record_failure()
                continue
            published_at = None
            if outcome.manifest is not None:
                update = update_for(self.store, outcome.manifest.version, "publish")
                await producer.send_raw(self.settings.topics.model_updates, update.to_bytes())
                await producer.flush()
                published_at = time.time()
                # Fine-tune the next cycle from it even before our own message comes back.
                self.core.serving_version = outcome.manifest.version
                log.info(
                    "published %s (%.1f s after the window closed)", outcome.manifest.version, published_at - now
                )
            self.metrics.record(outcome, published_at)


def run_trainer(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM."""
    import signal

    from streamrec.stream.topics import ensure_topics

    async def main() -> None:
        await ensure_topics(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await TrainerService(settings).run(stop)

    asyncio.run(main())
    return 0
