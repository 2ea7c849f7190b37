"""End to end: a real worker when a dependency fails, and after it comes back.

- The broker goes away for a while and comes back (a real Tansu on persistent storage, S3
  on moto's server): the worker waits, does not exit or restart an agent, and every event,
  produced before the outage or after it, gets its list.
- The Qdrant server (client mode) does not answer: a real qdrant-client against a port where
  nothing listens. The worker starts anyway, serves trending lists that say so, counts them,
  and holds the catalogue back (not acked) instead of losing it. No Qdrant server can run
  here (no Docker, no PyPI package ships one), so its return is tested one level down
  (tests/integration/test_index_outage.py).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.models.index.health import FALLBACK_VERSION, INDEX_UNAVAILABLE_REASON
from streamrec.stream.broker import DevBroker, free_port, stop_process_group
from streamrec.stream.messages import Event, Recommendation
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics
from tests.support.metrics import metric_sum, scrape
from tests.support.topics import TopicCollector, group_offsets, read_topic
from tests.support.waiting import OUTPUT_WAIT_S, wait_until
from tests.support.workers import WORKER_READY_S, Worker, index_catalogue, start_worker

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

BROKER_DOWN_S = 15.0  # how long the broker stays away
S3_BUCKET = "tansu"


@pytest.fixture
def s3_endpoint(tmp_path: Path) -> Iterator[str]:
    """An S3 endpoint on this machine (moto's server), with the broker's bucket made."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "s3.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                request = urllib.request.Request(f"{url}/{S3_BUCKET}", method="PUT")
                urllib.request.urlopen(request, timeout=2).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "no S3 server"
                time.sleep(0.2)
        yield url
    finally:
        stop_process_group(process)


def persistent_broker(s3_url: str, log_path: Path) -> DevBroker:
    """A Tansu broker whose topics, offsets and groups survive a stop (S3 storage)."""
    return DevBroker(
        port=free_port(),
        log_path=log_path,
        storage=f"s3://{S3_BUCKET}/",
        env={
            "AWS_ENDPOINT": s3_url,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "streamrec",
            "AWS_SECRET_ACCESS_KEY": "streamrec",
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    )


def _round(
    world: SyntheticWorld, tag: str, n: int, stream: int, user_suffix: str = ""
) -> list[Event]:
    """n fresh events of the world's users (renamed `<user><user_suffix>`), ids `<tag>-<i>`."""
    now = time.time()
    return [
        e.model_copy(
            update={"ts": now + i * 0.001, "event_id": f"{tag}-{i}", "user_id": e.user_id + user_suffix}
        )
        for i, e in enumerate(world.events(n, start_ts=now, stream=stream))
    ]


async def _send(settings: Settings, events: list[Event]) -> None:
    async with EventProducer(settings) as producer:
        for event in events:
            await producer.send_event(event)
        await producer.flush()


async def _wait_for_lists(
    settings: Settings, unserved: Callable[[], set[str]], timeout_s: float, what: str
) -> None:
    """Wait until `unserved()` (trigger event ids without a list yet) is empty; if it never
    is, fail saying where each missing event got to (on `events`, on `events.by-user`) and
    what the worker counted, so that a failure in CI tells a lost record from a slow worker."""
    try:
        await wait_until(lambda: not unserved(), timeout_s, what)
    except AssertionError as timeout:
        missing = sorted(unserved())
        found = {}
        for topic in (settings.topics.events, settings.topics.events_by_user):
            values = await asyncio.to_thread(read_topic, settings, topic)
            found[topic] = [i for i in missing if any(f'"{i}"'.encode() in value for value in values)]
        counters = {name: value for name, value in scrape(settings.metrics_port).items()
                    if name.startswith(("streamrec_events", "streamrec_recommendations", "streamrec_consumer_lag",
                                                 "streamrec_agent_errors"))}
        raise AssertionError(f"{timeout}: no list for {missing}; of those, on each topic: {found}; "
                             f"the worker counted {counters}") from None


async def test_broker_down_and_back(
    settings: Settings, s3_endpoint: str, tmp_path: Path
) -> None:
    broker = persistent_broker(s3_endpoint, tmp_path / "tansu.log")
    broker.start()
    settings = settings.model_copy(
        # Every fetch of Tansu's S3 storage lists the partition's objects on moto's one-thread
        # server, and Tansu answers a fetch only when its wait runs out: at the suite's 10 ms,
        # the worker's eight readers kept moto so busy that a hop took seconds to minutes
        # (measured: ~50 listings a second, the lists after the outage not all out in 240 s).
        update={"broker": broker.url, "metrics_port": free_port(), "k": 5, "fetch_max_wait_ms": 200}
    )
    world = SyntheticWorld(seed=8, n_items=40, n_users=8, n_categories=3)
    log_path = tmp_path / "worker.log"
    worker: Worker | None = None
    try:
        await ensure_topics(settings)
        worker = start_worker(settings, log_path)
        async with EventProducer(settings) as producer:
            await index_catalogue(producer, world, worker)
        before = _round(world, "before", 30, stream=1)
        await _send(settings, before)
        async with TopicCollector(settings, settings.topics.recommendations) as recs:
            served = lambda: {  # noqa: E731
                Recommendation.model_validate_json(v).trigger_event_id for v in recs.values
            }
            last = {e.user_id: e.event_id for e in before}
            await _wait_for_lists(settings, lambda: set(last.values()) - served(),
                                  OUTPUT_WAIT_S, "lists before")

        # Events sent, then the broker goes away at once: some may not be processed yet.
        pending = _round(world, "pending", 30, stream=2, user_suffix="-p")
        await _send(settings, pending)
        broker.stop()
        down_until = time.monotonic() + BROKER_DOWN_S
        while time.monotonic() < down_until:
            worker.alive()
            await asyncio.sleep(0.5)
        broker.start()

        after = _round(world, "after", 30, stream=3)
        await _send(settings, after)
        async with TopicCollector(settings, settings.topics.recommendations) as recs:
            served = lambda: {  # noqa: E731
                Recommendation.model_validate_json(v).trigger_event_id for v in recs.values
            }
            # Each user's last event of either round gets its list (the pending round's users
            # are others than the later round's, so no micro-batch merges the two).
            wanted = {e.user_id: e.event_id for e in pending} | {e.user_id: e.event_id for e in after}

            def unserved() -> set[str]:
                assert worker is not None and worker.alive()
                return set(wanted.values()) - served()

            await _wait_for_lists(settings, unserved, OUTPUT_WAIT_S * 2,
                                  "lists after the broker returned")
            # The users' state outlived the outage: later lists leave out what they consumed.
            by_id = {e.event_id: e for e in before + pending + after}
            for value in recs.values:
                rec = Recommendation.model_validate_json(value)
                trigger = by_id[rec.trigger_event_id]
                consumed = {e.item_id for e in before + pending + after
                            if e.user_id == rec.user_id and e.ts <= trigger.ts}
                assert not consumed & {item.item_id for item in rec.items}, rec.user_id
        # No agent was restarted (a crash loop would count here), and it still stops cleanly.
        assert metric_sum(scrape(settings.metrics_port), "streamrec_agent_errors_total") == 0
        assert worker.terminate() == 0
    finally:
        if worker is not None:
            worker.kill()
        broker.stop()
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]
    # The outage did reach the worker. Which connection error comes first depends on timing
    # (refused at connect, or closed under a fetch), and repeats of one message template are
    # held back (`log_filters.RepeatedErrorLimiter`), so any of them, with the broker hint.
    assert re.search(r"(Connect call failed|KafkaConnectionError|Unable connect to node).*is the broker at", log), log[-4000:]


async def test_qdrant_unreachable_serves_trending_and_holds_the_catalogue(
    settings: Settings, tmp_path: Path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: connections are refused
    settings = settings.model_copy(update={"metrics_port": free_port(), "k": 5, "index_mode": "client",
                                           "qdrant_url": nowhere, "index_retry_s": 1.0})
    await ensure_topics(settings)
    log_path = tmp_path / "worker.log"
    worker = start_worker(settings, log_path)
    world = SyntheticWorld(seed=4, n_items=20, n_users=6, n_categories=2)
    port = settings.metrics_port
    try:
        def up() -> bool:
            return worker.alive() and "streamrec_index_available" in scrape(port)

        await wait_until(up, WORKER_READY_S, "the worker to start without Qdrant")
        items = world.items(ts=time.time())
        events = _round(world, "outage", 40, stream=1)
        async with EventProducer(settings) as producer:
            for item in items:
                await producer.send_item(item)
            for event in events:
                await producer.send_event(event)
            await producer.flush()
        async with TopicCollector(settings, settings.topics.recommendations) as recs:
            last = {e.user_id: e.event_id for e in events}

            def served() -> bool:
                worker.alive()
                triggers = {Recommendation.model_validate_json(v).trigger_event_id for v in recs.values}
                return set(last.values()) <= triggers

            await wait_until(served, OUTPUT_WAIT_S, "a list per user without Qdrant")
            lists = [Recommendation.model_validate_json(v) for v in recs.values]
        assert {r.model_version for r in lists} == {FALLBACK_VERSION}
        assert {i.reason for r in lists for i in r.items} == {INDEX_UNAVAILABLE_REASON}
        by_id = {e.event_id: e for e in events}
        for rec in lists:  # trending, minus what the user had consumed by then
            trigger = by_id[rec.trigger_event_id]
            consumed = {e.item_id for e in events if e.user_id == rec.user_id and e.ts <= trigger.ts}
            assert not consumed & {i.item_id for i in rec.items}, rec.user_id
        assert any(rec.items for rec in lists)

        # The catalogue is held back, not lost: no item indexed, none of its offsets committed.
        item_lag = lambda: metric_sum(scrape(port), "streamrec_consumer_lag", settings.topics.items)  # noqa: E731
        # The gauge takes the broker's end offsets, which Tansu reports short by up to a
        # batch (the last batch's base + 1): at least part of the catalogue shows as lag;
        # that none of it was committed is checked exactly below.
        await wait_until(lambda: 0 < item_lag() <= len(items), OUTPUT_WAIT_S, "the items' lag sampled")
        metrics = scrape(port)
        assert metrics["streamrec_index_available"] == 0.0
        assert metrics['streamrec_fallback_lists_total{reason="index_unavailable"}'] >= len(last)
        assert metric_sum(metrics, "streamrec_items_indexed_total") == 0
        assert metric_sum(metrics, "streamrec_agent_errors_total") == 0
        status, body = worker.call(f"/items/{items[0].item_id}/similar")
        assert (status, body["reason"]) == (503, "index_unavailable")
        status, body = worker.call("/readyz")
        assert body["checks"]["index"]["degraded"] is True and body["checks"]["index"]["ok"]

        assert worker.terminate() == 0  # while the catalogue waits for Qdrant
        committed = await group_offsets(settings, [settings.topics.items])
        assert [offset for offset, _ in committed.values()] == [None] * settings.partitions
    finally:
        worker.kill()
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]
    assert "catalogue items wait for the item index" in log
