"""End to end: one hop for events keyed by user, the re-keying hop for the rest, counted.

A real Tansu broker and a real worker process. Events produced by the SDK (keyed by user id,
placed by Kafka's default murmur2 partitioner) are served by the ingest agent itself: never
written to `events.by-user`. Events with no key, with another key, or keyed by user but
placed by librdkafka's default partitioner (CRC32, a real confluent-kafka producer) on
another partition still get their lists, through `events.by-user`, each counted with its
reason. And when `events` has another partition count than the tables, the worker says so
once and serves every event in two hops.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import zlib
from pathlib import Path

import pytest
from confluent_kafka import Producer

from streamrec.consumers.worker.routing import partition_for
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.stream.messages import Event
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics
from tests.support.metrics import metric_sum, scrape
from tests.support.topics import TopicCollector, read_topic
from tests.support.waiting import OUTPUT_WAIT_S, wait_until
from tests.support.workers import Worker, index_catalogue, start_worker

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


def _events(world: SyntheticWorld, users: list[str], per_user: int = 3) -> list[Event]:
    now = time.time()
    items = [item.item_id for item in world.items(ts=now)]
    return [
        Event(event_id=f"{user}-{n}-{uuid.uuid4().hex[:6]}", user_id=user, item_id=items[(i * 7 + n) % len(items)],
              type="view", ts=now + i * 0.01 + n * 0.001)
        for i, user in enumerate(users) for n in range(per_user)
    ]


def _crc32_misplaced_users(prefix: str, n: int, partitions: int) -> list[str]:
    """Users whom librdkafka's default partitioner (CRC32) puts elsewhere than murmur2 does."""
    candidates = (f"{prefix}-{i}" for i in range(10_000))
    return [u for u in candidates
            if zlib.crc32(u.encode()) % partitions != partition_for(u.encode(), partitions)][:n]


def _produce_with_librdkafka(settings: Settings, events: list[Event]) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})  # partitioner: its default
    for event in events:
        producer.produce(settings.topics.events, event.to_bytes(), key=event.user_id.encode())
    assert producer.flush(30) == 0, "librdkafka could not deliver"


def _last_per_user(events: list[Event]) -> set[str]:
    return {event.event_id for event in {e.user_id: e for e in events}.values()}


async def test_keyed_events_take_one_hop_and_the_rest_are_re_keyed_and_counted(
    e2e_settings: Settings, worker: Worker
) -> None:
    settings = e2e_settings
    world = SyntheticWorld(seed=17, n_items=40, n_users=10, n_categories=3)
    await ensure_topics(settings)
    tag = uuid.uuid4().hex[:6]
    keyed = _events(world, [f"keyed-{tag}-{n}" for n in range(6)])
    unkeyed = _events(world, [f"unkeyed-{tag}-{n}" for n in range(3)])
    other_key = _events(world, [f"session-{tag}-{n}" for n in range(2)])
    misplaced = _events(world, _crc32_misplaced_users(f"crc-{tag}", 2, settings.partitions))

    async with EventProducer(settings) as producer, \
            TopicCollector(settings, settings.topics.recommendations) as recs:
        await index_catalogue(producer, world, worker)
        for event in keyed:
            await producer.send_event(event)
        for event in unkeyed:
            await producer.send_raw(settings.topics.events, event.to_bytes())
        for event in other_key:
            await producer.send_raw(settings.topics.events, event.to_bytes(), key=f"session-{event.event_id}".encode())
        await producer.flush()
        _produce_with_librdkafka(settings, misplaced)

        everyone = keyed + unkeyed + other_key + misplaced
        users = {e.user_id for e in everyone}

        def served() -> bool:
            # A list for each user, and each user's state has learned all 3 events. Not
            # necessarily answered in send order: events of one user that are not keyed by
            # user are spread over partitions, and re-keyed in the order they are read.
            worker.alive()
            return users <= {json.loads(v)["user_id"] for v in recs.values} and all(
                worker.get(f"/users/{user}")["n_events"] == 3 for user in users)

        try:
            await wait_until(served, OUTPUT_WAIT_S, "a list for every user, keyed or not")
        except AssertionError as timeout:
            answered = {json.loads(v)["user_id"] for v in recs.values}
            missing = {name: sorted({e.user_id for e in events} - answered) for name, events in
                       (("keyed", keyed), ("unkeyed", unkeyed), ("other_key", other_key), ("misplaced", misplaced))}
            counted = {k: v for k, v in scrape(settings.metrics_port).items()
                       if k.startswith(("streamrec_events_total", "streamrec_one_hop", "streamrec_rekeyed",
                                        "streamrec_recommendations_total", "streamrec_agent_errors"))}
            raise AssertionError(f"{timeout}: no list for {missing}; the worker counted {counted}") from None

    by_user = await asyncio.to_thread(read_topic, settings, settings.topics.events_by_user)
    rekeyed = {Event.model_validate_json(v).event_id for v in by_user}
    assert rekeyed == {e.event_id for e in unkeyed + other_key + misplaced}, "only events not keyed by user are re-keyed"

    metrics = scrape(settings.metrics_port)
    assert metrics["streamrec_one_hop"] == 1
    assert metrics["streamrec_one_hop_events_total"] == len(keyed)
    for reason, events in (("no_key", unkeyed), ("other_key", other_key), ("other_partition", misplaced)):
        assert metric_sum(metrics, "streamrec_rekeyed_events_total", f'reason="{reason}"') == len(events), reason
    for user in users:  # each user's state learned every event once
        state = worker.get(f"/users/{user}")
        mine = [e for e in everyone if e.user_id == user]  # (by item and type: ids are digests but the newest's)
        assert sorted((r["item_id"], r["type"]) for r in state["recent"]) == sorted((e.item_id, e.type) for e in mine), user
        assert state["n_events"] == len(mine), user
    in_order = _last_per_user(keyed)  # keyed by user: one partition, served in send order
    assert in_order <= {json.loads(v)["trigger_event_id"] for v in recs.values}
    worker.alive()


async def test_events_partitioned_unlike_the_tables_fall_back_to_two_hops(
    e2e_settings: Settings, tmp_path: Path, workers: list[Worker]
) -> None:
    settings = e2e_settings
    assert settings.partitions == 2
    await ensure_topics(settings, [settings.topics.events], partitions=1)  # made elsewhere, unlike ours
    await ensure_topics(settings)
    worker = start_worker(settings, tmp_path / "worker.log")
    workers.append(worker)
    world = SyntheticWorld(seed=19, n_items=30, n_users=5, n_categories=3)
    keyed = _events(world, [f"keyed-{uuid.uuid4().hex[:6]}-{n}" for n in range(4)])

    async with EventProducer(settings) as producer, \
            TopicCollector(settings, settings.topics.recommendations) as recs:
        await index_catalogue(producer, world, worker)
        for event in keyed:
            await producer.send_event(event)
        await producer.flush()
        wanted = _last_per_user(keyed)
        await wait_until(lambda: worker.alive() and wanted <= {json.loads(v)["trigger_event_id"] for v in recs.values},
                         OUTPUT_WAIT_S, "a list for every user, through the second hop")

    metrics = scrape(settings.metrics_port)
    assert metrics["streamrec_one_hop"] == 0
    assert metrics.get("streamrec_one_hop_events_total", 0) == 0
    assert metric_sum(metrics, "streamrec_rekeyed_events_total", 'reason="one_hop_off"') == len(keyed)
    warnings = worker.log_matching("one hop is off")
    assert len(warnings.splitlines()) == 1 and "1 partitions, the tables 2" in warnings, worker.log_tail()
