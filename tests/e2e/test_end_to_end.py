"""End to end: a real Tansu broker and a real Faust worker process, checked from the outside.

Produces a catalogue and a stream of events (bad messages and duplicates included), reads
`recommendations` and `events.dlq` with plain consumers, and checks the contract's promises.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

import jsonschema
import pytest

from streamrec.consumers.tools.feed import open_reader
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.stream.broker import free_port
from streamrec.stream.messages import DeadLetter, Event, Item, Recommendation
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics
from tests.helpers import confluent_read

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

SCHEMAS = Path(__file__).resolve().parents[2] / "stream" / "schemas"
WORKER_READY_S = 180.0
OUTPUT_WAIT_S = 120.0
MAX_MESSAGE_BYTES = 4096


def scrape(port: int) -> dict[str, float]:
    """The worker's /metrics as {'name{labels}': value}; empty while it is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            body = response.read().decode()
    except OSError:
        return {}
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def metric_sum(metrics: dict[str, float], prefix: str, contains: str = "") -> float:
    return sum(v for k, v in metrics.items() if k.startswith(prefix) and contains in k)


async def wait_until(condition, timeout_s: float, what: str, poll_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


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


async def group_offsets(settings: Settings) -> dict[str, tuple[int | None, int]]:
    """Committed offset vs end offset of the worker group, per input partition (diagnostics)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=settings.app_id)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in (settings.topics.events, settings.topics.events_by_user)
               for p in range(settings.partitions)]
        ends = await consumer.end_offsets(tps)
        return {f"{tp.topic}/{tp.partition}": (await consumer.committed(tp), ends[tp]) for tp in tps}
    finally:
        await consumer.stop()


async def index_catalogue(
    producer: EventProducer, settings: Settings, world: SyntheticWorld, process: subprocess.Popen, log_path: Path
) -> list[Item]:
    """Produce the world's catalogue and wait until the worker has indexed all of it."""
    items = world.items(ts=time.time())
    for item in items:
        await producer.send_item(item)
    await producer.flush()

    def ready() -> bool:
        assert process.poll() is None, log_path.read_text(errors="replace")[-4000:]
        return metric_sum(scrape(settings.metrics_port), "streamrec_items_indexed_total") >= len(items)

    await wait_until(ready, WORKER_READY_S, "the worker to index the catalogue")
    return items


def bad_messages(now: float) -> list[tuple[bytes, str]]:
    """(raw value, the DLQ reason it must get), each unique so it can be found in the DLQ."""
    good = {"user_id": "u-bad", "item_id": "i-bad", "type": "view", "ts": now}
    cases = [
        (b'{"event_id": "broken-json", ', "invalid_json"),
        (b"\xff\xfe\xfd binary-garbage", "invalid_json"),
        (b"[\"an\", \"array\"]", "not_an_object"),
        (json.dumps({**good, "event_id": "no-item", "item_id": None}).encode(), "schema"),
        (json.dumps({k: v for k, v in good.items() if k != "user_id"} | {"event_id": "no-user"}).encode(), "schema"),
        (json.dumps({**good, "event_id": "int-user", "user_id": 12345}).encode(), "schema"),
        (json.dumps({**good, "event_id": "liked", "type": "like"}).encode(), "unknown_type"),
        (json.dumps({**good, "event_id": "too-old", "ts": 86_400.0}).encode(), "absurd_timestamp"),
        (json.dumps({**good, "event_id": "too-new", "ts": now + 10 * 86_400}).encode(), "absurd_timestamp"),
        (json.dumps({**good, "event_id": "huge", "context": {"pad": "x" * MAX_MESSAGE_BYTES}}).encode(), "oversized"),
    ]
    return cases


@pytest.fixture
def e2e_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"metrics_port": free_port(), "max_message_bytes": MAX_MESSAGE_BYTES, "k": 5}
    )


def streamrec_env(settings: Settings) -> dict[str, str]:
    """The environment a `streamrec` subprocess needs to reach this test's broker and files."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "STREAMREC_BROKER": settings.broker,
        "STREAMREC_APP_ID": settings.app_id,
        "STREAMREC_TOPIC_PREFIX": settings.topic_prefix,
        "STREAMREC_PARTITIONS": str(settings.partitions),
        "STREAMREC_DATA_DIR": str(settings.data_dir),
        "STREAMREC_METRICS_PORT": str(settings.metrics_port),
        "STREAMREC_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
        "STREAMREC_K": str(settings.k),
    }


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen:
    env = streamrec_env(settings)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streamrec.consumers.cli", "worker"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )


@pytest.fixture
def worker(e2e_settings: Settings, tmp_path: Path):
    log_path = tmp_path / "worker.log"
    processes = [start_worker(e2e_settings, log_path)]
    yield processes, log_path
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def test_events_in_fresh_recommendations_out(e2e_settings: Settings, worker) -> None:
    settings = e2e_settings
    processes, log_path = worker
    process = processes[0]
    world = SyntheticWorld(seed=11, n_items=80, n_users=15, n_categories=4)
    await ensure_topics(settings)

    async with EventProducer(settings) as producer, \
            TopicCollector(settings, settings.topics.recommendations) as recs, \
            TopicCollector(settings, settings.topics.dlq) as dlq:
        items = await index_catalogue(producer, settings, world, process, log_path)

        # A live stream of valid events, interleaved with bad messages.
        now = time.time()
        events = [e.model_copy(update={"ts": now + i * 0.001}) for i, e in enumerate(world.events(150, start_ts=now))]
        bad = bad_messages(now)
        for i, event in enumerate(events):
            await producer.send_event(event)
            if i % 15 == 0 and i // 15 < len(bad):
                await producer.send_raw(settings.topics.events, bad[i // 15][0], key=b"u-bad")
        for raw, _ in bad[len(events) // 15 + 1:]:
            await producer.send_raw(settings.topics.events, raw, key=b"u-bad")
        await producer.flush()

        last_event = {}
        for event in events:
            last_event[event.user_id] = event.event_id

        def all_users_served() -> bool:
            assert process.poll() is None, log_path.read_text(errors="replace")[-4000:]
            triggers = {json.loads(v)["trigger_event_id"] for v in recs.values}
            return set(last_event.values()) <= triggers and len(dlq.values) >= len(bad)

        await wait_until(all_users_served, OUTPUT_WAIT_S, "a list per user and every bad message in the DLQ")

        # Duplicates: re-send a third of the valid events with their original ids.
        duplicates = events[::3]
        before = len(recs.values)
        for event in duplicates:
            await producer.send_event(event)
        await producer.flush()
        await wait_until(
            lambda: metric_sum(scrape(settings.metrics_port), "streamrec_events_total", 'outcome="duplicate"')
            >= len(duplicates),
            OUTPUT_WAIT_S,
            "the duplicates to be counted",
        )
        # A sentinel on the same user and partition as the last duplicate flushes the pipeline.
        sentinel = Event(event_id=f"sentinel-{uuid.uuid4().hex}", user_id=duplicates[-1].user_id,
                         item_id=items[0].item_id, type="view", ts=time.time())
        await producer.send_event(sentinel)
        await producer.flush()
        await wait_until(lambda: any(sentinel.event_id.encode() in v for v in recs.values), OUTPUT_WAIT_S, "the sentinel")
        after = len(recs.values)

    # --- the contract's promises ------------------------------------------------------
    schema = json.loads((SCHEMAS / "recommendations.schema.json").read_text())
    parsed = []
    for value in recs.values:
        jsonschema.validate(json.loads(value), schema)
        parsed.append(Recommendation.model_validate_json(value))

    served_users = {rec.user_id for rec in parsed}
    assert set(last_event) <= served_users, "every user with a valid event got a recommendation"

    by_id = {e.event_id: e for e in events + [sentinel]}
    history: dict[str, list[Event]] = defaultdict(list)
    for event in events + [sentinel]:
        history[event.user_id].append(event)
    for rec in parsed:
        trigger = by_id[rec.trigger_event_id]
        consumed = {e.item_id for e in history[rec.user_id] if e.ts <= trigger.ts}
        recommended = [item.item_id for item in rec.items]
        assert not consumed & set(recommended), f"{rec.user_id} was recommended items they consumed"
        assert len(recommended) == len(set(recommended))
        assert rec.model_version and rec.latency_ms >= 0 and rec.items

    letters = [DeadLetter.model_validate_json(v) for v in dlq.values]
    for raw, reason in bad:
        matches = [letter for letter in letters if letter.raw_bytes() == raw]
        assert matches, f"{raw[:40]!r} is not in the DLQ"
        assert matches[0].reason == reason, (raw[:40], matches[0].reason, matches[0].error)
        assert matches[0].topic == settings.topics.events and matches[0].error

    assert after == before + 1, "duplicates caused no output; only the sentinel did"

    # A librdkafka client (confluent-kafka) reads the same lists.
    theirs = await asyncio.to_thread(confluent_read, settings, settings.topics.recommendations, after)
    assert sorted(m.value() for m in theirs) == sorted(recs.values)
    assert all(m.key() == Recommendation.model_validate_json(m.value()).user_id.encode() for m in theirs)

    # Stops cleanly on SIGTERM.
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert "Traceback" not in log_path.read_text(errors="replace")

    # A new worker recovers user state from the table's changelog: after the restart, lists
    # still exclude everything the users consumed before it.
    restarted = start_worker(settings, log_path)
    processes.append(restarted)
    returning = sorted(history)[:5]
    later = [
        Event(event_id=f"after-{user}", user_id=user, item_id=history[user][0].item_id, type="click", ts=time.time())
        for user in returning
    ]
    async with EventProducer(settings) as producer, \
            TopicCollector(settings, settings.topics.recommendations) as recs_after:
        for event in later:
            await producer.send_event(event)
        await producer.flush()
        wanted = {e.event_id for e in later}

        def served_after_restart() -> bool:
            assert restarted.poll() is None, log_path.read_text(errors="replace")[-4000:]
            return wanted <= {json.loads(v)["trigger_event_id"] for v in recs_after.values}

        try:
            await wait_until(served_after_restart, WORKER_READY_S, "lists from the restarted worker")
        except AssertionError:
            metrics = scrape(settings.metrics_port)
            interesting = {k: v for k, v in metrics.items() if k.startswith(("streamrec_events", "streamrec_recomm", "streamrec_agent"))}
            offsets = await group_offsets(settings)
            raise AssertionError(
                f"restarted worker: {interesting}; got {len(recs_after.values)} lists; offsets {offsets}"
            ) from None
    for value in recs_after.values:
        rec = Recommendation.model_validate_json(value)
        if rec.trigger_event_id in wanted:
            consumed = {e.item_id for e in history[rec.user_id]}
            assert not consumed & {i.item_id for i in rec.items}, f"{rec.user_id}'s state was lost"
    os.killpg(restarted.pid, signal.SIGTERM)
    assert restarted.wait(timeout=60) == 0
