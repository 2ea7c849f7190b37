"""End to end: with two workers, each one's collaborative signals reflect every user's events.

Real Tansu broker, two real worker processes in one group on a 2-partition topic set. A
co-visitation pattern is planted only through users whose partition worker A owns; a
newcomer whose partition worker B owns takes the pattern's first item and must be offered
the second with its reason: B learned A's users' events through its broadcast read of
`events` (`consumers/worker/signal_feed.py`), though its agents never
handled one of them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner

from streamrec.models.core.catalog import title_of
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.stream.broker import free_port
from streamrec.stream.messages import Event, Item
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics
from tests.support.metrics import metric_sum, scrape
from tests.support.waiting import wait_for
from tests.support.workers import WORKER_READY_S, Worker, start_worker

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

CROWD = 8  # users who take item A, then item B
SERVED_S = 60.0  # a few events through a ready worker (generous for a loaded machine)


def partition_of(user_id: str, partitions: int) -> int:
    """The partition of a user's events: the ingest agent's producer keys by user id and
    partitions as Kafka's default does (murmur2)."""
    every = list(range(partitions))
    return DefaultPartitioner()(user_id.encode(), every, every)


def users_on(partitions: list[int], n: int, prefix: str, total: int) -> list[str]:
    """`n` user ids whose events land on one of `partitions`."""
    candidates = (f"{prefix}-{k}" for k in range(10_000))
    return [user for user in candidates if partition_of(user, total) in partitions][:n]


def produce(settings: Settings, events: Sequence[Event] = (), items: Sequence[Item] = ()) -> None:
    """Send `items` to `items` and `events` to `events`, and wait until the broker has them."""

    async def send() -> None:
        async with EventProducer(settings) as producer:
            for item in items:
                await producer.send_item(item)
            await producer.send_events(events)

    asyncio.run(send())


def feed_events(worker: Worker, outcome: str) -> float:
    return metric_sum(scrape(worker.settings.metrics_port), "streamrec_signal_feed_events_total",
                      f'outcome="{outcome}"')


def assert_counted(worker: Worker, learned: int, duplicates: int) -> None:
    """Wait until the worker's feed has learned `learned` events and skipped `duplicates`."""
    def counts() -> tuple[float, float]:
        return feed_events(worker, "learned"), feed_events(worker, "duplicate")

    try:
        wait_for(lambda: counts() == (learned, duplicates), SERVED_S, "the feed's counts")
    except AssertionError:
        raise AssertionError(f"{worker.log_path.stem}'s feed (learned, duplicate): {counts()},"
                             f" expected {(learned, duplicates)}") from None


def served(worker: Worker, user: str, event_id: str) -> dict | None:
    """The user's latest list on `worker` if it was triggered by `event_id`."""
    worker.alive()
    status, latest = worker.call(f"/users/{user}/recommendations")
    return latest if status == 200 and latest.get("trigger_event_id") == event_id else None


def test_a_pattern_seen_only_by_worker_a_is_recommended_by_worker_b(
    settings: Settings, tmp_path: Path, workers: list[Worker]
) -> None:
    settings = settings.model_copy(update={"k": 5})
    world = SyntheticWorld(seed=11, n_items=40, n_users=5, n_categories=4)
    items = world.items(ts=time.time())
    asyncio.run(ensure_topics(settings))
    produce(settings, items=items)
    a, b = (start_worker(settings.model_copy(update={"data_dir": tmp_path / name, "metrics_port": free_port()}),
                         tmp_path / f"{name}.log") for name in ("a", "b"))
    workers.extend([a, b])
    started = time.monotonic()
    every = list(range(settings.partitions))

    def ready(worker: Worker) -> bool:
        return worker.alive() and bool(worker.readiness().get("ready")) and worker.items_indexed() >= len(items)

    wait_for(lambda: ready(a) and ready(b) and a.owned() and b.owned() and sorted(a.owned() + b.owned()) == every,
             WORKER_READY_S, "a and b ready, each owning a partition")
    print(f"both workers ready in {time.monotonic() - started:.1f} s; a owns {a.owned()}, b owns {b.owned()}")
    started = time.monotonic()

    # The pattern: a crowd on a's partitions takes A, then B of another category (no text links them).
    planted_a = items[0]
    planted_b = next(i for i in items if world.category_of(i.item_id) != world.category_of(planted_a.item_id))
    now = time.time()
    crowd = [
        Event(event_id=f"crowd-{uuid.uuid4().hex}", user_id=user, item_id=item.item_id, type="click",
              ts=now + n * 0.01 + step * 0.001)
        for n, user in enumerate(users_on(a.owned(), CROWD, "crowd", settings.partitions))
        for step, item in enumerate((planted_a, planted_b))
    ]
    produce(settings, crowd)
    wait_for(lambda: all(served(a, e.user_id, e.event_id) for e in crowd[1::2]), SERVED_S, "a to serve its crowd")
    assert metric_sum(scrape(b.settings.metrics_port), "streamrec_recommendations_total") == 0, \
        "b's recommend agent handled none of the crowd"
    wait_for(lambda: feed_events(b, "learned") >= len(crowd), SERVED_S, "b's feed to learn a's users' events")

    [newcomer] = users_on(b.owned(), 1, f"newcomer-{uuid.uuid4().hex[:6]}", settings.partitions)
    probe = Event(event_id=f"probe-{uuid.uuid4().hex}", user_id=newcomer, item_id=planted_a.item_id,
                  type="view", ts=time.time())
    produce(settings, [probe])
    latest = wait_for(lambda: served(b, newcomer, probe.event_id), SERVED_S, "b to serve the newcomer")
    offered = {item["item_id"]: item.get("reason") for item in latest["items"]}
    title_a = title_of(planted_a)
    assert planted_b.item_id in offered, f"b did not recommend the pattern planted through a's users: {offered}"
    assert offered[planted_b.item_id] in {f"often viewed with {title_a}", f"often next after {title_a}"}, offered

    # Each event counted once per worker: a's agent learned its own users' events before
    # ranking and its reader skipped them (or the other way round); b's, the probe.
    assert_counted(a, learned=len(crowd) + 1, duplicates=len(crowd))
    assert_counted(b, learned=len(crowd) + 1, duplicates=1)
    print(f"pattern through a -> recommended by b in {time.monotonic() - started:.1f} s")
