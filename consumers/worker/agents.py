"""The worker's Faust agents and tasks: each decodes at the edge, calls a handler, produces.

`register_agents` builds one `WorkerContext` (topics, tables, handlers, model swapper) and
registers, in this order:

=================  ==========================================================================
model_updates      task: follow `model-updates` (a broadcast) and hot-swap model versions
signal_feed        task: `events` (a broadcast) -> every user's collaborative signals
sample_gauges      timer: consumer lag of the input partitions and the catalogue size
ingest             agent: `events` -> validated, de-duplicated; keyed by user: user state ->
                   `recommendations` (one hop); otherwise re-keyed by user -> `events.by-user`
recommend          agent: `events.by-user` micro-batches -> user state -> `recommendations`
catalog            task (edge index) or agent (server index): `items` -> the item index
=================  ==========================================================================

One hop or two: an event keyed by its user id, on the partition Kafka's default partitioner
gives that key (the producer SDK, `POST /events`), is served by the ingest agent itself, with
the same `serve` as the recommend agent's; any other event takes the second hop through
`events.by-user` (`routing.py` decides, `streamrec_rekeyed_events_total` counts). The worker
runs two hops for every event when `STREAMREC_ONE_HOP=false` or when `events` has another
partition count than the tables (`hops_of`, decided once, logged, `streamrec_one_hop`).

and the HTTP API (`views.py`). What goes wrong at the edges is handled by the named callbacks
of `edges.py`; waits after a failure by `retry.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
from faust.exceptions import ConsumerNotStarted

from streamrec.consumers.worker.catalogue import follow_catalogue, index_partitions
from streamrec.consumers.worker.context import (
    LATEST_LISTS_TABLE,
    RECENT_EVENTS,
    USER_STATE_TABLE,
    WorkerContext,
    origin_of,
)
from streamrec.consumers.worker.edges import on_bad_input, on_processing_error, on_produce_error
from streamrec.consumers.worker.handlers import dead_letter
from streamrec.consumers.worker.metrics import SAMPLE_S, WorkerMetrics, sample_consumer_lag
from streamrec.consumers.worker.model_updates import follow_model_updates
from streamrec.consumers.worker.retry import LeavingBatch, retry_forever
from streamrec.consumers.worker.routing import ONE_HOP_OFF, HopMode, hop_mode, rekey_reason
from streamrec.consumers.worker.signal_feed import attach_signal_feed, follow_signal_feed
from streamrec.consumers.worker.views import register_views
from streamrec.models.core.pipeline import Pipeline
from streamrec.stream.messages import DeadLetter, Event, Recommendation
from streamrec.stream.settings import Settings
from streamrec.stream.validation import Rejection

__all__ = [  # the table names and the size of the latest-events buffer: for tools and tests
    "LATEST_LISTS_TABLE",
    "RECENT_EVENTS",
    "USER_STATE_TABLE",
    "LeavingBatch",
    "register_agents",
]

log = logging.getLogger(__name__)

METADATA_TIMEOUT_S = 30.0  # asking the broker for the partition count of events, at most (s)

Read = list[tuple[Event, Any]]  # valid events of a batch: (parsed, the Faust event as read)


def register_agents(app: faust.App, settings: Settings, pipeline: Pipeline, metrics: WorkerMetrics) -> None:
    """Build the worker's context on `app` and register its tasks, agents and views."""
    context = WorkerContext.build(app, settings, pipeline, metrics)
    topics = context.topics

    @app.task
    async def model_updates() -> None:
        await follow_models(context)

    feed = attach_signal_feed(settings, pipeline.recommender)
    if feed is not None:

        @app.task
        async def signal_feed() -> None:
            await follow_signal_feed(settings, feed, metrics)

    @app.timer(SAMPLE_S)
    async def sample_gauges() -> None:
        await sample(context)

    @app.agent(topics.events, name="ingest")
    async def ingest_agent(stream: faust.StreamT) -> None:
        await ingest(context, stream)

    @app.agent(topics.events_by_user, name="recommend")
    async def recommend_agent(stream: faust.StreamT) -> None:
        await recommend(context, stream)

    if settings.index_mode == "edge":

        @app.task
        async def catalog_task() -> None:
            await follow_catalogue(context)

    else:

        @app.agent(topics.items, name="catalog")
        async def catalog_agent(stream: faust.StreamT) -> None:
            await index_partitions(context, stream)

    register_views(context)


async def follow_models(context: WorkerContext) -> None:
    """`model-updates` (a broadcast: every worker reads every message) -> hot swaps; a
    broker away or a missing topic is tried again while the worker serves on."""
    await retry_forever(
        lambda: follow_model_updates(context.settings, context.swapper), "following model-updates failed"
    )


async def sample(context: WorkerContext) -> None:
    """Consumer lag of the input partitions and the catalogue size, for /metrics."""
    topics, pipeline, metrics = context.settings.topics, context.pipeline, context.metrics
    try:
        await sample_consumer_lag(
            context.app.consumer, (topics.events, topics.events_by_user, topics.items), metrics
        )
        if pipeline.recommender.index_health.available:  # else: the last count stays
            async with context.swapper.catalog_lock:  # counted between two catalogue writes
                metrics.catalogue_items.set(await asyncio.to_thread(pipeline.index.count))
    except ConsumerNotStarted:
        pass  # starting or rebalancing: sampled next time
    except Exception as exc:  # a slow broker or index: keep the last figures
        log.warning("sampling consumer lag / catalogue size failed: %r", exc)


async def ingest(context: WorkerContext, stream: faust.StreamT) -> None:
    """events -> validated, de-duplicated -> served here when keyed by user (one hop), else
    re-keyed by user -> events.by-user; bad input -> the DLQ. Everything a batch causes is
    delivered before it is acked, and its ids count as seen only then."""
    settings, handler, metrics = context.settings, context.ingest, context.metrics
    mode = await hops_of(context)
    # One hop: this batch is the recommend micro-batch, so it waits as long as that one.
    wait_s = settings.batch_wait_s if mode.one_hop else settings.ingest_wait_s
    async for batch in stream.take_events(settings.batch_size, within=wait_s):
        accepted: dict[str, Event] = {}
        here: Read = []  # keyed by user: served in this agent
        letters: list[DeadLetter] = []
        forwards: list[tuple[Event, str]] = []  # (event, why it is re-keyed)
        now = time.time()
        for event in batch:
            outcome = handler.handle(event.value, origin_of(event), now, accepted)
            if isinstance(outcome, DeadLetter):
                letters.append(outcome)
            elif outcome is not None:
                accepted[outcome.event_id] = outcome
                reason = _rekey_reason(event, outcome, settings.partitions) if mode.one_hop else ONE_HOP_OFF
                if reason is None:
                    here.append((outcome, event))
                else:
                    forwards.append((outcome, reason))
        if here:  # first: if it fails, nothing else of the batch was sent (it is read again)
            await serve(context, here)
            metrics.one_hop_events.inc(len(here))
        deliveries = [await on_bad_input(context, letter) for letter in letters]
        for outcome, reason in forwards:
            metrics.rekeyed_events.labels(reason=reason).inc()
            deliveries.append(
                await context.topics.events_by_user.send(key=outcome.user_id.encode(), value=outcome.to_bytes())
            )
        # Acked (and so committed) only after this returns: wait until all are delivered.
        await asyncio.gather(*deliveries)
        handler.confirm(accepted)


def _rekey_reason(event: Any, parsed: Event, partitions: int) -> str | None:
    message = event.message
    return rekey_reason(message.key, message.partition, parsed.user_id, partitions)


async def hops_of(context: WorkerContext) -> HopMode:
    """One hop or two for this worker, decided once (the first time ingest starts): one hop
    needs `events` to have the tables' partition count, else a worker reading events
    partition p would write state of a table partition it does not own."""
    if context.hops is not None:
        return context.hops
    settings = context.settings
    topic = settings.topics.events
    partitions = None
    if settings.one_hop:
        try:
            producer = context.app.producer._ensure_producer()  # Faust's aiokafka producer
            found = await asyncio.wait_for(producer.partitions_for(topic), METADATA_TIMEOUT_S)
            partitions = len(found) if found else None
        except Exception as exc:  # a broker away at start: two hops, always correct
            log.warning("could not read the partition count of %s: %r", topic, exc)
    mode = hop_mode(settings.one_hop, partitions, settings.partitions, topic)
    if settings.one_hop and not mode.one_hop:
        log.warning("one hop is off, every event is re-keyed through %s: %s",
                    settings.topics.events_by_user, mode.why)
    else:
        log.info("ingest runs %s: %s", mode.name, mode.why)
    context.metrics.one_hop.set(1 if mode.one_hop else 0)
    context.hops = mode
    return mode


async def recommend(context: WorkerContext, stream: faust.StreamT) -> None:
    """Micro-batches of events -> user state -> one fresh list per user -> recommendations."""
    settings = context.settings
    async for batch in stream.take_events(settings.batch_size, within=settings.batch_wait_s):
        read = await _decode(context, batch)
        if read:
            await serve(context, read)


async def serve(context: WorkerContext, read: Read) -> None:
    """`publish_recommendations`, with the failure handling both agents share: a failed
    batch is counted, waited after, and raised (Faust's supervisor restarts the agent and
    its unacked offsets are read again)."""
    try:
        await publish_recommendations(context, read)
        context.recommend_backoff.succeeded()
    except Exception as error:
        await on_produce_error(context, error, len(read))
        raise


async def _decode(context: WorkerContext, batch: list[Any]) -> Read:
    """The batch's valid events; written by ingest, so valid, but checked anyway at this edge."""
    read: Read = []
    for event in batch:
        parsed = context.ingest.validator.parse(event.value, now=time.time())
        if isinstance(parsed, Rejection):
            await on_bad_input(context, dead_letter(parsed, event.value, origin_of(event)))
        else:
            read.append((parsed, event))
    return read


async def publish_recommendations(context: WorkerContext, read: Read) -> None:
    """Learn the batch, produce one list per user, store states and lists: all delivered
    before the agent acks the batch."""
    user_states, latest_lists, handler = context.user_states, context.latest_lists, context.recommend
    events = [parsed for parsed, _ in read]
    states = {
        user_id: context.restore(user_id, user_states.get(user_id.encode()))
        for user_id in {event.user_id for event in events}
    }
    messages, new_states, failed = handler.handle_isolating(events, states)
    if failed:  # a poison event: aside with the reason, so the rest of the stream goes on
        await on_processing_error(context, read, failed)
        events = [event for event in events if event.user_id not in failed]
    for user_id, state in new_states.items():
        user_states[user_id.encode()] = context.pack(state)
    started = time.perf_counter()
    pending = [
        await context.topics.recommendations.send(key=m.user_id.encode(), value=m.to_bytes())
        for m in messages
    ]
    # The batch's offsets are acked only after the agent body returns: wait for delivery
    # of the lists and of the new states (a crash then re-reads only unfinished batches).
    await asyncio.gather(*pending, user_states.changelog_delivered())
    context.metrics.stage_latency.labels(stage="publish").observe(time.perf_counter() - started)
    handler.observe_published(messages)
    for message in messages:  # only once on the topic: the API never shows an unsent list
        key = message.user_id.encode()
        if message.is_newer_than(_stored_list(latest_lists.get(key))):  # the contract's order rule
            latest_lists[key] = message.model_dump(exclude_none=True)
    await latest_lists.changelog_delivered()
    context.recent_events.extend(events)


def _stored_list(stored: Any) -> Recommendation | None:
    """A list of the latest-lists table (None: none, or unreadable: replaced by the next)."""
    if stored is None:
        return None
    try:
        return Recommendation.model_validate(stored)
    except ValueError:
        return None
