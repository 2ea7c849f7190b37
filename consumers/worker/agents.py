"""The three thin Faust agents and the HTTP views: decode at the edge, call a handler, produce."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import faust
from faust.exceptions import ConsumerNotStarted
from faust.web import Request, Response, View

from streamrec.consumers.worker.batching import release_unacked
from streamrec.consumers.worker.handlers import (
    PROCESSING_FAILED,
    CatalogHandler,
    IngestHandler,
    Origin,
    RecommendHandler,
    dead_letter,
)
from streamrec.consumers.worker.metrics import (
    CONTENT_TYPE,
    SAMPLE_S,
    WorkerMetrics,
    sample_consumer_lag,
)
from streamrec.consumers.worker.model_updates import (
    ModelSwapper,
    follow_model_updates,
    open_broadcast_reader,
)
from streamrec.consumers.worker.views import WorkerApi, register_views
from streamrec.models.core.pipeline import Pipeline
from streamrec.models.core.state import UserState
from streamrec.models.index.protocol import IndexUnavailableError
from streamrec.stream.messages import DeadLetter, Event, ModelUpdate
from streamrec.stream.settings import Settings
from streamrec.stream.validation import Rejection

log = logging.getLogger(__name__)

USER_STATE_TABLE = "user-state"
LATEST_LISTS_TABLE = "latest-recommendations"
RECENT_EVENTS = 200  # the latest events kept for the HTTP API and the live page
CATALOG_BATCH = 64  # items embedded per encoder pass
CATALOG_WAIT_S = 0.5  # wait at most this long to fill a catalogue batch
RETRY_S = 1.0  # first wait before a failed batch is tried again (an index away, an error) (s)
RETRY_MAX_S = 30.0  # longest wait between two tries (s)


def _origin(event: Any) -> Origin:
    message = event.message
    return Origin(topic=message.topic, partition=message.partition, offset=message.offset)


def register_agents(
    app: faust.App, settings: Settings, pipeline: Pipeline, metrics: WorkerMetrics
) -> None:
    topics = settings.topics

    def raw_topic(name: str) -> Any:
        return app.topic(name, key_serializer="raw", value_serializer="raw")

    events_topic = raw_topic(topics.events)
    by_user_topic = raw_topic(topics.events_by_user)
    items_topic = raw_topic(topics.items)
    recommendations_topic = raw_topic(topics.recommendations)
    dlq_topic = raw_topic(topics.dlq)
    model_updates_topic = raw_topic(topics.model_updates)

    # use_partitioner=True: writes inside stream.take() go to the key's partition
    # (faust-streaming issue 497); keys are user ids, as on events.by-user; values are
    # UserState.to_dict() plain data.
    user_states = app.Table(
        USER_STATE_TABLE,
        default=None,
        partitions=settings.partitions,
        key_type=bytes,  # raw user-id keys; values are JSON (the changelog uses the same)
        use_partitioner=True,
    )
    # The last list published per user (Recommendation as plain data), for GET
    # /users/{id}/recommendations; co-partitioned with user-state, so one worker owns both.
    latest_lists = app.Table(
        LATEST_LISTS_TABLE,
        default=None,
        partitions=settings.partitions,
        key_type=bytes,
        use_partitioner=True,
    )
    recent_events: deque[Event] = deque(maxlen=RECENT_EVENTS)

    ingest_handler = IngestHandler(settings, metrics)
    validator = ingest_handler.validator
    recommend_handler = RecommendHandler(settings, pipeline, metrics)
    catalog_handler = CatalogHandler(settings, metrics)

    async def publish_model_update(update: ModelUpdate) -> None:
        await model_updates_topic.send(value=update.to_bytes())

    swapper = ModelSwapper(settings, pipeline, metrics, publish=publish_model_update)
    recommend_handler.on_outcomes = swapper.observe
    metrics.watch_index(pipeline.recommender)  # streamrec_index_available, fallback lists

    @app.task
    async def model_updates() -> None:
        """Follow `model-updates` (a broadcast: every worker reads every message)."""
        delay = 1.0
        while True:
            try:
                await follow_model_updates(settings, swapper)
            except asyncio.CancelledError:
                raise
            except Exception:  # broker away, topic missing: keep serving, try again
                log.exception("following model-updates failed; retrying in %.0f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    input_topics = (topics.events, topics.events_by_user, topics.items)

    @app.timer(SAMPLE_S)
    async def sample_gauges() -> None:
        """Consumer lag of the input partitions and the catalogue size, for /metrics."""
        try:
            await sample_consumer_lag(app.consumer, input_topics, metrics)
            if pipeline.recommender.index_health.available:  # else: the last count stays
                async with swapper.catalog_lock:  # counted between two catalogue writes
                    metrics.catalogue_items.set(await asyncio.to_thread(pipeline.index.count))
        except ConsumerNotStarted:
            pass  # starting or rebalancing: sampled next time
        except Exception as exc:  # a slow broker or index: keep the last figures
            log.warning("sampling consumer lag / catalogue size failed: %r", exc)

    async def send_dead_letter(letter: DeadLetter) -> None:
        await dlq_topic.send(value=letter.to_bytes())

    @app.agent(events_topic, name="ingest")
    async def ingest(stream: faust.StreamT) -> None:
        """events -> validated, de-duplicated, re-keyed by user -> events.by-user (or the DLQ)."""
        async for batch in stream.take_events(settings.batch_size, within=settings.ingest_wait_s):
            accepted: dict[str, Event] = {}
            deliveries = []
            now = time.time()
            for event in batch:
                outcome = ingest_handler.handle(event.value, _origin(event), now, accepted)
                if isinstance(outcome, DeadLetter):
                    deliveries.append(await dlq_topic.send(value=outcome.to_bytes()))
                elif outcome is not None:
                    accepted[outcome.event_id] = outcome
                    deliveries.append(
                        await by_user_topic.send(key=outcome.user_id.encode(), value=outcome.to_bytes())
                    )
            # Acked (and so committed) only after this returns: wait until all are delivered.
            await asyncio.gather(*deliveries)
            ingest_handler.confirm(accepted)

    failures_in_a_row = 0  # of the recommend agent, across its restarts

    @app.agent(by_user_topic, name="recommend")
    async def recommend(stream: faust.StreamT) -> None:
        """Micro-batches of events -> user state -> one fresh list per user -> recommendations."""
        nonlocal failures_in_a_row
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_wait_s):
            events: list[tuple[Event, Any]] = []  # (parsed, as read)
            for event in batch:  # written by ingest, so valid; checked anyway at this edge
                parsed = validator.parse(event.value, now=time.time())
                if isinstance(parsed, Rejection):
                    await send_dead_letter(dead_letter(parsed, event.value, _origin(event)))
                else:
                    events.append((parsed, event))
            if events:
                try:
                    await publish_recommendations(events)
                    failures_in_a_row = 0
                except Exception:
                    # Faust's supervisor restarts the agent; unacked offsets are read again,
                    # after a pause that grows while the failures go on (no hot crash loop).
                    metrics.agent_errors.labels(agent="recommend").inc()
                    failures_in_a_row += 1
                    delay = min(RETRY_S * 2 ** (failures_in_a_row - 1), RETRY_MAX_S)
                    log.exception("recommend failed on a batch of %d events; reading it again in %.0f s",
                                  len(events), delay)
                    with contextlib.suppress(LeavingBatch):
                        await wait_unless_leaving(delay)
                    raise

    async def publish_recommendations(read: list[tuple[Event, Any]]) -> None:
        events = [parsed for parsed, _ in read]
        states = {
            user_id: _restore(user_states.get(user_id.encode()), settings)
            for user_id in {event.user_id for event in events}
        }
        messages, new_states, failed = recommend_handler.handle_isolating(events, states)
        if failed:  # a poison event: aside with the reason, so the rest of the stream goes on
            metrics.agent_errors.labels(agent="recommend").inc()
            for parsed, event in read:
                if parsed.user_id in failed:
                    error = failed[parsed.user_id]
                    letter = dead_letter(
                        Rejection(PROCESSING_FAILED, f"{type(error).__name__}: {error}"[:500]),
                        event.value, _origin(event),
                    )
                    metrics.dead_letters.labels(topic=letter.topic, reason=letter.reason).inc()
                    await (await dlq_topic.send(value=letter.to_bytes()))  # delivered before the ack
            events = [event for event in events if event.user_id not in failed]
        for user_id, state in new_states.items():
            user_states[user_id.encode()] = state.to_dict()
        started = time.perf_counter()
        pending = [
            await recommendations_topic.send(key=m.user_id.encode(), value=m.to_bytes())
            for m in messages
        ]
        # The batch's offsets are acked only after the agent body returns: wait for delivery
        # of the lists and of the new states (a crash then re-reads only unfinished batches).
        await asyncio.gather(*pending, user_states.changelog_delivered())
        metrics.stage_latency.labels(stage="publish").observe(time.perf_counter() - started)
        recommend_handler.observe_published(messages)
        for message in messages:  # only once on the topic: the API never shows an unsent list
            latest_lists[message.user_id.encode()] = message.model_dump(exclude_none=True)
        await latest_lists.changelog_delivered()
        recent_events.extend(events)

    async def index_items(batches: AsyncIterator[list[tuple[bytes | None, Origin]]]) -> None:
        """Batches of raw `items` values -> embedded by the encoder -> upserted into the index."""
        async for batch in batches:
            items = []
            for raw, origin in batch:
                parsed = catalog_handler.parse(raw, origin)
                if isinstance(parsed, DeadLetter):
                    await send_dead_letter(parsed)
                else:
                    items.append(parsed)
            if not items:
                continue
            started = time.perf_counter()
            indexed = await asyncio.to_thread(pipeline.catalog.embed, items)
            embedded = time.perf_counter()
            delay = RETRY_S
            while True:  # the batch is acked only once stored: a Qdrant outage loses no item
                try:
                    async with swapper.catalog_lock:  # not while a version's vectors are built
                        pipeline.store_items(indexed)
                        await asyncio.to_thread(pipeline.optimize_index)  # HNSW for what is new
                    break
                except IndexUnavailableError as exc:
                    log.warning("%d catalogue items wait for the item index (retry in %.0f s): %s",
                                len(indexed), delay, exc)
                    await wait_unless_leaving(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
            metrics.stage_latency.labels(stage="embed").observe(embedded - started)
            metrics.stage_latency.labels(stage="upsert").observe(time.perf_counter() - embedded)
            metrics.batch_size.labels(agent="catalog").observe(len(items))
            metrics.items_indexed.inc(len(indexed))

    async def wait_unless_leaving(delay_s: float) -> None:
        """Sleep `delay_s`, but not past a stop or a rebalance (`LeavingBatch`): Faust waits
        for every message in flight before either."""
        deadline = time.monotonic() + delay_s
        while True:
            if app.should_stop or getattr(app, "rebalancing", False):
                raise LeavingBatch(stopping=bool(app.should_stop))
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, RETRY_S))

    if settings.index_mode == "edge":
        # Each worker's embedded index must hold the whole catalogue, not the items of its
        # partitions: read `items` as a broadcast (every worker, every partition, from the
        # start; re-embedded at each start). A bad item is dead-lettered by every worker.
        @app.task
        async def catalog() -> None:
            """items (all partitions) -> this worker's embedded item index."""
            delay = 1.0
            while True:
                try:
                    await index_items(_broadcast_batches(settings, topics.items))
                except asyncio.CancelledError:
                    raise
                except Exception:  # broker away: keep serving, read the catalogue again
                    log.exception("following items failed; retrying in %.0f s", delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)

    else:
        # A shared Qdrant server: the workers of the group split the catalogue between them.
        @app.agent(items_topic, name="catalog")
        async def catalog(stream: faust.StreamT) -> None:
            """items (this worker's partitions) -> the shared item index."""
            current: list[Any] = []  # the events of the batch being written

            async def batches() -> AsyncIterator[list[tuple[bytes | None, Origin]]]:
                async for batch in stream.take_events(CATALOG_BATCH, within=CATALOG_WAIT_S):
                    current[:] = batch
                    yield [(event.value, _origin(event)) for event in batch]

            try:
                await index_items(batches())
            except LeavingBatch as leaving:
                # The index is away and the worker stops or rebalances: let go of the batch
                # unwritten and unacked (so uncommitted: read again from the committed offset).
                release_unacked(app.consumer, current)
                log.info("%d catalogue items left unwritten, read again later", len(current))
                if not leaving.stopping:  # a rebalance: Faust restarts the agent
                    raise asyncio.CancelledError from None

    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(metrics.exposition(), content_type=CONTENT_TYPE)

    class HealthView(View):
        async def get(self, request: Request) -> Response:
            canary = pipeline.recommender.canary
            return self.json(
                {
                    "status": "ok",
                    "model_version": pipeline.recommender.model_version,
                    "canary_version": canary.scorer.version if canary is not None else None,
                }
            )

    app.page("/metrics")(MetricsView)
    app.page("/healthz")(HealthView)
    register_views(
        app,
        WorkerApi(
            app=app,
            settings=settings,
            pipeline=pipeline,
            user_states=user_states,
            latest_lists=latest_lists,
            events_topic=events_topic,
            validator=validator,
            recent_events=recent_events,
            restore=lambda stored: _restore(stored, settings),
            owner_table=USER_STATE_TABLE,
        ),
    )


class LeavingBatch(Exception):
    """A batch that cannot be finished now is given up because the worker stops or
    rebalances (`stopping` says which)."""

    def __init__(self, stopping: bool) -> None:
        super().__init__("stopping" if stopping else "rebalancing")
        self.stopping = stopping


async def _broadcast_batches(
    settings: Settings, topic: str
) -> AsyncIterator[list[tuple[bytes | None, Origin]]]:
    """Every message of `topic`, from the beginning, in batches, without a consumer group."""
    consumer, _ = await open_broadcast_reader(settings, [topic])
    try:
        while True:
            fetched = await consumer.getmany(
                timeout_ms=int(CATALOG_WAIT_S * 1000), max_records=CATALOG_BATCH
            )
            batch = [
                (record.value, Origin(record.topic, record.partition, record.offset))
                for records in fetched.values()
                for record in records
            ]
            if batch:
                yield batch
    finally:
        await consumer.stop()


def _restore(stored: Any, settings: Settings) -> UserState | None:
    """The table's plain-data state back into a `UserState`; unreadable state starts afresh."""
    if stored is None:
        return None
    try:
        return UserState.from_dict(stored, max_history=settings.history_length)
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("dropping unreadable user state, starting afresh: %s", exc)
        return None
