"""Broadcast readers: a topic read whole by every process that opens it, without a group.

A consumer group splits a topic's partitions between its members; some topics must instead
reach every process: `model-updates` (every worker swaps to every version, the trainer
fine-tunes from the one served) and, for a worker with an embedded index, `items` (each
worker's index holds the whole catalogue). A broadcast reader assigns itself every
partition, starts at the beginning and never commits: a restarted process reads the whole
history again, as a new one does.

Used by the worker (`consumers/worker`) and the trainer (`consumers/trainer`) alike, so it
lives here, on the bus side, and neither imports the other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from streamrec.stream.settings import Settings

METADATA_TIMEOUT_S = 30.0  # a topic with no partitions after this long is an error (s)


async def open_broadcast_reader(settings: Settings, topics: Sequence[str]) -> tuple[Any, list[Any]]:
    """A started group-less consumer assigned every partition of `topics`, at the beginning,
    and those partitions: every process that opens one reads every message."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # imported here: tests replace it

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        **settings.kafka_client_options(),
    )
    await consumer.start()
    try:
        tps = [
            TopicPartition(topic, p) for topic in topics for p in await topic_partitions(consumer, topic)
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
    except BaseException:
        await consumer.stop()
        raise
    return consumer, tps


async def topic_partitions(consumer: Any, topic: str, timeout_s: float = METADATA_TIMEOUT_S) -> list[int]:
    """The topic's partitions, waiting for metadata (the worker creates the topic at start)."""
    deadline = time.monotonic() + timeout_s
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return sorted(partitions)
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic} has no partitions after {timeout_s:.0f} s")
        await consumer.topics()  # refreshes the cluster metadata
        await asyncio.sleep(0.5)


async def read_to_end(consumer: Any, tps: Sequence[Any]) -> list[Any]:
    """The records up to the end offsets seen now (a topic's history), in order per partition."""
    ends = await consumer.end_offsets(tps)
    records: list[Any] = []
    while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
        batch = await consumer.getmany(timeout_ms=500)
        for partition_records in batch.values():
            records.extend(partition_records)
    return records


async def broadcast_batches(
    settings: Settings, topic: str, max_records: int, wait_s: float
) -> AsyncIterator[list[Any]]:
    """Every record of `topic`, from the beginning, forever, in batches of at most
    `max_records` (each waited for at most `wait_s`); empty batches are not yielded."""
    consumer, _ = await open_broadcast_reader(settings, [topic])
    try:
        while True:
            fetched = await consumer.getmany(timeout_ms=int(wait_s * 1000), max_records=max_records)
            batch = [record for records in fetched.values() for record in records]
            if batch:
                yield batch
    finally:
        await consumer.stop()
