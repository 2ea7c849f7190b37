"""The bus plumbing against a real Tansu broker: launcher, topic creation, producer SDK, and a
librdkafka client (confluent-kafka) speaking the same contract."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiokafka import AIOKafkaConsumer
from confluent_kafka import Producer

from streamrec.consumers.tools.feed import open_reader
from streamrec.stream.broker import BrokerError, DevBroker, _kafka_answers
from streamrec.stream.messages import Event, Item
from streamrec.stream.offsets import log_end_offsets
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics
from tests.support.topics import confluent_read

pytestmark = pytest.mark.integration

READ_TIMEOUT_S = 30.0


async def read(settings: Settings, topic: str, expected: int) -> list:
    """Every record of `topic` from the beginning, until `expected` arrived or the deadline."""
    consumer: AIOKafkaConsumer = await open_reader(settings, topic, from_beginning=True)
    records: list = []
    deadline = time.monotonic() + READ_TIMEOUT_S
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


def test_dev_broker_starts_answers_and_stops(tmp_path) -> None:
    broker = DevBroker(port=0, log_path=tmp_path / "tansu.log")
    broker.start()
    try:
        assert broker.running
        assert _kafka_answers(broker.host, broker.port, 1.0)
        with pytest.raises(BrokerError, match="already listens"):
            DevBroker(port=broker.port).start()
    finally:
        process = broker.process
        broker.stop()
    assert process is not None and process.poll() is not None
    assert not broker.running
    assert not _kafka_answers(broker.host, broker.port, 0.5)


async def test_ensure_topics_creates_the_contract_once(settings: Settings) -> None:
    created = await ensure_topics(settings)
    assert sorted(created) == sorted(settings.topics.all())
    assert {"events", "items", "recommendations", "events.dlq", "model-updates"} <= {
        name.removeprefix(settings.topic_prefix) for name in created
    }
    assert await ensure_topics(settings) == []
    consumer = await open_reader(settings, settings.topics.events, from_beginning=True)
    try:
        assert len(consumer.partitions_for_topic(settings.topics.events)) == settings.partitions
    finally:
        await consumer.stop()


async def test_producer_sdk_keys_events_by_user(settings: Settings) -> None:
    await ensure_topics(settings)
    now = time.time()
    events = [
        Event(event_id=f"e{n}", user_id=f"u{n % 3}", item_id=f"i{n}", type="view", ts=now)
        for n in range(9)
    ]
    async with EventProducer(settings) as producer:
        assert await producer.send_events(events) == 9
        await producer.send_item(Item(item_id="i1", text="a red running shoe", ts=now))
    records = await read(settings, settings.topics.events, 9)
    assert sorted(Event.model_validate_json(r.value).event_id for r in records) == sorted(e.event_id for e in events)
    partition_of_user: dict[bytes, set[int]] = {}
    for record in records:
        assert record.key == Event.model_validate_json(record.value).user_id.encode()
        partition_of_user.setdefault(record.key, set()).add(record.partition)
    assert all(len(p) == 1 for p in partition_of_user.values()), "one user, one partition"
    [item] = await read(settings, settings.topics.items, 1)
    assert item.key == b"i1" and json.loads(item.value)["text"] == "a red running shoe"


def _confluent_config(settings: Settings) -> dict:
    return {"bootstrap.servers": settings.bootstrap_servers}


async def test_librdkafka_client_speaks_the_contract(settings: Settings) -> None:
    """confluent-kafka (librdkafka) produces events our models read, and reads ours."""
    await ensure_topics(settings)
    event = Event(event_id="ck-1", user_id="ck-user", item_id="i7", type="purchase", ts=time.time())

    def produce_with_librdkafka() -> None:
        producer = Producer(_confluent_config(settings))
        producer.produce(settings.topics.events, key=event.user_id.encode(), value=event.to_bytes())
        assert producer.flush(10) == 0

    await asyncio.to_thread(produce_with_librdkafka)
    [record] = await read(settings, settings.topics.events, 1)
    assert Event.model_validate_json(record.value) == event and record.key == b"ck-user"

    ours = Event(event_id="aio-1", user_id="aio-user", item_id="i8", type="click", ts=time.time())
    async with EventProducer(settings) as producer:
        await producer.send_event(ours)
    messages = await asyncio.to_thread(confluent_read, settings, settings.topics.events, 2)
    decoded = {Event.model_validate_json(m.value()).event_id: m.key() for m in messages}
    assert decoded == {"ck-1": b"ck-user", "aio-1": b"aio-user"}


async def test_log_end_offsets_count_every_record_of_the_last_batch(settings: Settings) -> None:
    """Faust's table recovery reads a changelog up to its end offset: it must be the real one."""
    from aiokafka import AIOKafkaProducer, TopicPartition

    topic = f"{settings.topic_prefix}ends"
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=50)
    await producer.start()
    try:
        for batch_size in (5, 3):  # two batches on partition 0; partition 1 left empty
            sent = [await producer.send(topic, b"x", partition=0) for _ in range(batch_size)]
            await asyncio.gather(*sent)
        await producer.send_and_wait(topic, b"y", partition=1)
        await producer.send_and_wait(topic, b"y", partition=1)
    finally:
        await producer.stop()
    reader: AIOKafkaConsumer = await open_reader(settings, topic, from_beginning=True)
    try:
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1), TopicPartition(topic, 2)]
        reported = await reader.end_offsets(tps[:2])
    finally:
        await reader.stop()
    reported[tps[2]] = None  # a partition with no figure is passed through
    ends = await log_end_offsets(settings, reported)
    assert ends == {tps[0]: 8, tps[1]: 2, tps[2]: None}, f"broker reported {reported}"
