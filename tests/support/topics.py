"""Reading topics from the outside: a background collector, a read to the end, librdkafka,
and the worker group's committed offsets."""

from __future__ import annotations

import asyncio
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streamrec.consumers.tools.feed import open_reader
from streamrec.stream.offsets import log_end_offsets
from streamrec.stream.settings import Settings

READ_TIMEOUT_S = 30.0


class TopicCollector:
    """Reads a topic from the beginning in the background into a list."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings, self.topic = settings, topic
        self.values: list[bytes] = []

    async def __aenter__(self) -> TopicCollector:
        self.consumer = await open_reader(self.settings, self.topic, from_beginning=True)
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=200)
            for records in batches.values():
                self.values.extend(record.value for record in records)

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.consumer.stop()


def read_topic(settings: Settings, topic: str) -> list[bytes]:
    """Every value on `topic`, up to its end as it is now (per partition, in offset order)."""

    async def read() -> list[bytes]:
        consumer = await open_reader(settings, topic, from_beginning=True)
        try:
            tps = sorted(consumer.assignment())
            ends = await log_end_offsets(settings, await consumer.end_offsets(tps))
            values: dict[int, list[bytes]] = {tp.partition: [] for tp in tps}
            deadline = time.monotonic() + 60
            idle_since = time.monotonic()
            while [tp for tp in tps if await consumer.position(tp) < (ends[tp] or 0)] or time.monotonic() - idle_since < 2:
                assert time.monotonic() < deadline, f"could not read {topic} to its end"
                for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                    if records:
                        idle_since = time.monotonic()
                    values[tp.partition].extend(r.value for r in records)
            return [value for tp in tps for value in values[tp.partition]]
        finally:
            await consumer.stop()

    return asyncio.run(read())


def confluent_read(settings: Settings, topic: str, expected: int, timeout_s: float = READ_TIMEOUT_S) -> list:
    """Read `topic` from the beginning with librdkafka (no group join: manual assignment)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"reader-{topic}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)])
    messages = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                messages.append(message)
    finally:
        consumer.close()
    return messages


async def group_offsets(settings: Settings, topics: list[str] | None = None) -> dict[str, tuple[int | None, int]]:
    """{'topic/partition': (committed offset of the worker group or None, end offset)} of the
    input topics (`events`, `events.by-user`) or of `topics`; the end is the log's own."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka import TopicPartition as AioPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=settings.app_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        topics = topics or [settings.topics.events, settings.topics.events_by_user]
        tps = [AioPartition(topic, p) for topic in topics for p in range(settings.partitions)]
        ends = await log_end_offsets(settings, await consumer.end_offsets(tps))
        return {f"{tp.topic}/{tp.partition}": (await consumer.committed(tp), ends[tp] or 0) for tp in tps}
    finally:
        await consumer.stop()


def fully_committed(settings: Settings) -> bool:
    """Whether the worker group has committed every input message (all read, all processed)."""
    offsets = asyncio.run(group_offsets(settings))
    return all((committed or 0) >= end for committed, end in offsets.values())
