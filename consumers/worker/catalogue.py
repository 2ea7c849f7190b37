"""The catalogue: `items` -> embedded by the text encoder -> upserted into the item index.

Two modes, after the index (`Settings.index_mode`):

- **edge** (each worker embeds its own index): each worker's index must hold the whole
  catalogue, not the items of its partitions, so `follow_catalogue` reads `items` as a
  broadcast (every partition, from the start, re-embedded at each start). A bad item is
  dead-lettered by every worker.
- **server** (one shared Qdrant): the workers of the group split the catalogue between them;
  `index_partitions` is an agent over this worker's partitions.

A batch is acked only once stored: while the index is away it waits (`retry_forever`) and a
stop or a rebalance meanwhile leaves it unacked, to be read again (tests/e2e/test_dependencies.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import faust

from streamrec.consumers.worker.batching import release_unacked
from streamrec.consumers.worker.context import WorkerContext, origin_of
from streamrec.consumers.worker.edges import on_bad_input
from streamrec.consumers.worker.handlers import Origin
from streamrec.consumers.worker.retry import LeavingBatch, retry_forever, wait_unless_leaving
from streamrec.models.index.protocol import IndexedItem, IndexUnavailableError
from streamrec.stream.messages import DeadLetter
from streamrec.stream.readers import broadcast_batches

log = logging.getLogger(__name__)

CATALOG_BATCH = 64  # items embedded per encoder pass
CATALOG_WAIT_S = 0.5  # wait at most this long to fill a catalogue batch (s)

RawItems = list[tuple[bytes | None, Origin]]  # raw `items` values and where each was read


async def index_items(context: WorkerContext, batches: AsyncIterator[RawItems]) -> None:
    """Batches of raw `items` values -> embedded by the encoder -> upserted into the index."""
    pipeline, metrics = context.pipeline, context.metrics
    async for batch in batches:
        items = []
        for raw, origin in batch:
            parsed = context.catalog.parse(raw, origin)
            if isinstance(parsed, DeadLetter):
                await on_bad_input(context, parsed)
            else:
                items.append(parsed)
        if not items:
            continue
        started = time.perf_counter()
        indexed = await asyncio.to_thread(pipeline.catalog.embed, items)
        embedded = time.perf_counter()
        await retry_forever(  # acked only once stored: a Qdrant outage loses no item
            functools.partial(_store_items, context, indexed),
            f"{len(indexed)} catalogue items wait for the item index",
            retry_on=IndexUnavailableError,
            wait=lambda delay: wait_unless_leaving(context.app, delay),
        )
        metrics.stage_latency.labels(stage="embed").observe(embedded - started)
        metrics.stage_latency.labels(stage="upsert").observe(time.perf_counter() - embedded)
        metrics.batch_size.labels(agent="catalog").observe(len(items))
        metrics.items_indexed.inc(len(indexed))


async def _store_items(context: WorkerContext, indexed: Sequence[IndexedItem]) -> None:
    """Write embedded items to the index (and its HNSW graph), between two version loads."""
    pipeline = context.pipeline
    async with context.swapper.catalog_lock:  # not while a version's vectors are built
        pipeline.store_items(indexed)
        await asyncio.to_thread(pipeline.optimize_index)  # HNSW for what is new


async def follow_catalogue(context: WorkerContext) -> None:
    """Edge mode: `items` (all partitions, from the start) -> this worker's embedded index."""
    await retry_forever(
        lambda: index_items(context, _broadcast_items(context)), "following items failed"
    )


async def index_partitions(context: WorkerContext, stream: faust.StreamT) -> None:
    """Server mode: `items` (this worker's partitions) -> the shared item index."""
    current: list[Any] = []  # the events of the batch being written

    async def batches() -> AsyncIterator[RawItems]:
        async for batch in stream.take_events(CATALOG_BATCH, within=CATALOG_WAIT_S):
            current[:] = batch
            yield [(event.value, origin_of(event)) for event in batch]

    try:
        await index_items(context, batches())
    except LeavingBatch as leaving:
        # The index is away and the worker stops or rebalances: let go of the batch
        # unwritten and unacked (so uncommitted: read again from the committed offset).
        release_unacked(context.app.consumer, current)
        log.info("%d catalogue items left unwritten, read again later", len(current))
        if not leaving.stopping:  # a rebalance: Faust restarts the agent
            raise asyncio.CancelledError from None


async def _broadcast_items(context: WorkerContext) -> AsyncIterator[RawItems]:
    topic = context.settings.topics.items
    async for records in broadcast_batches(context.settings, topic, CATALOG_BATCH, CATALOG_WAIT_S):
        yield [(record.value, Origin(record.topic, record.partition, record.offset)) for record in records]
