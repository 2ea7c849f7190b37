"""End to end: a worker killed with SIGKILL mid-stream, and workers joining and leaving one.

Real Tansu broker, real worker processes. Events stream from a background thread while a
worker dies or the group rebalances; afterwards every user is checked against a reference
replay of exactly the events that were sent (DESIGN.md, "Delivery semantics"):

- no valid event lost: each user's state (recovered from the changelog where the user's
  partition moved) holds all their events, once each, with the same counts;
- each user's last list on `recommendations` (and through the API) was triggered by the
  last event their state learned: it reflects all their events;
- duplicates are bounded and idempotent: a list published twice carries the same
  `trigger_event_id` and user, and only events sent before the failure are ever repeated.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from streamrec.consumers.feed import open_reader
from streamrec.models.state import UserState
from streamrec.models.synthetic import SyntheticWorld
from streamrec.stream.broker import DevBroker, free_port
from streamrec.stream.messages import Event, Recommendation
from streamrec.stream.offsets import log_end_offsets
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics
from tests.e2e.test_end_to_end import metric_sum, scrape
from tests.e2e.workers import Worker, start_worker, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PARTITIONS = 4
READY_S = 240.0  # a worker start on a loaded 2-core machine: model load, group join, catalogue
SERVED_S = 180.0  # a dead member's session expires, the group rebalances, tables recover
RATE = 40.0  # events per second from the background sender
N_USERS = 24
HISTORY = 2_000  # events kept per user: more than a user gets here, so every one is checked


class Sender:
    """Sends a world's events at `RATE` from a background thread until stopped; keeps a ledger."""

    def __init__(self, settings: Settings, world: SyntheticWorld, stream: int) -> None:
        self.settings = settings
        now = time.time()
        self._queue = [e.model_copy(update={"ts": now + n * 1e-3})
                       for n, e in enumerate(world.events(20_000, start_ts=now, stream=stream))]
        self.sent: list[Event] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def send_now(self, n: int) -> list[Event]:
        """Send the next `n` events at once (no thread) and wait for their delivery."""
        batch, self._queue = self._queue[:n], self._queue[n:]

        async def produce() -> None:
            async with EventProducer(self.settings) as producer:
                await producer.send_events(batch)

        asyncio.run(produce())
        self.sent.extend(batch)
        return batch

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sender", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        async def produce() -> None:
            async with EventProducer(self.settings) as producer:
                started = time.monotonic()
                while not self._stop.is_set() and self._queue:
                    delay = started + len(self.sent) / RATE - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    event = self._queue.pop(0)
                    await producer.send_event(event)
                    self.sent.append(event)
                await producer.flush()

        try:
            asyncio.run(produce())
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def mark(self) -> int:
        """How many events are sent so far (a point in the stream)."""
        return len(self.sent)

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)
        assert self.error is None, f"the sender failed: {self.error!r}"

    def history(self) -> dict[str, list[Event]]:
        by_user: dict[str, list[Event]] = defaultdict(list)
        for event in self.sent:
            by_user[event.user_id].append(event)
        return by_user


@dataclass
class Run:
    settings: Settings
    tmp: Path
    world: SyntheticWorld
    n_items: int
    workers: list[Worker] = field(default_factory=list)

    def start(self, name: str) -> Worker:
        settings = self.settings.model_copy(update={"data_dir": self.tmp / name, "metrics_port": free_port()})
        # Histories long enough to hold every event a user gets here, so all can be checked.
        env = {"STREAMREC_HISTORY_LENGTH": str(settings.history_length)}
        worker = start_worker(settings, self.tmp / f"{name}.log", env)
        self.workers.append(worker)
        return worker

    def wait_ready(self, worker: Worker) -> None:
        def ready() -> bool:
            indexed = metric_sum(scrape(worker.settings.metrics_port), "streamrec_items_indexed_total")
            return worker.alive() and bool(worker.readiness().get("ready")) and indexed >= self.n_items

        wait_for(ready, READY_S, f"{worker.log_path.stem} ready with the catalogue indexed")


@pytest.fixture
def run(broker: DevBroker, tmp_path: Path) -> Iterator[Run]:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(broker=broker.url, app_id=f"failover-{tag}", topic_prefix=f"f{tag}.",
                        partitions=PARTITIONS, fetch_max_wait_ms=10, k=5, history_length=HISTORY)
    asyncio.run(ensure_topics(settings))
    world = SyntheticWorld(seed=31, n_items=50, n_users=N_USERS, n_categories=4)
    items = world.items(ts=time.time())

    async def catalogue() -> None:
        async with EventProducer(settings) as producer:
            for item in items:
                await producer.send_item(item)

    asyncio.run(catalogue())
    current = Run(settings=settings, tmp=tmp_path, world=world, n_items=len(items))
    try:
        yield current
    finally:
        for worker in current.workers:
            if worker.process.poll() is None:
                os.killpg(worker.process.pid, signal.SIGKILL)
                worker.process.wait()


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


def fully_committed(settings: Settings) -> bool:
    """Whether the worker group has committed every input message (all read, all processed)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def check() -> bool:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=settings.app_id,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for topic in (settings.topics.events, settings.topics.events_by_user)
                   for p in range(settings.partitions)]
            ends = await log_end_offsets(settings, await consumer.end_offsets(tps))
            committed = {tp: await consumer.committed(tp) or 0 for tp in tps}
            return all(committed[tp] >= (ends[tp] or 0) for tp in tps)
        finally:
            await consumer.stop()

    return asyncio.run(check())


def lists_triggered_by_last_events(worker: Worker, history: dict[str, list[Event]]) -> bool:
    worker.alive()
    for user, events in history.items():
        status, latest = worker.call(f"/users/{user}/recommendations")
        if status != 200 or latest.get("trigger_event_id") != events[-1].event_id:
            return False
    return True


def explain_state(run: Run, user: str, held: list[str], events: list[Event]) -> str:
    """Why a user's state differs from the reference: where its events went (for the failure)."""
    missing = [e.event_id for e in events if e.event_id not in held]
    triggers = {Recommendation.model_validate_json(v).trigger_event_id
                for v in read_topic(run.settings, run.settings.topics.recommendations)}
    changelog = f"{run.settings.app_id}-user-state-changelog"
    last_learned = [json.loads(v)["recent"][-1][3] for v in read_topic(run.settings, changelog)
                    if v and json.loads(v)["user_id"] == user]
    forwarded = Counter(Event.model_validate_json(v).event_id
                        for v in read_topic(run.settings, run.settings.topics.events_by_user))
    return (f"{user}: state holds {len(held)} of {len(events)} events; missing {missing}; "
            f"answered on the topic: {[m for m in missing if m in triggers]}; "
            f"times forwarded by ingest: {[forwarded[m] for m in missing]}; "
            f"changelog records (last event learned): {last_learned}")


def check_delivery(run: Run, worker: Worker, history: dict[str, list[Event]], before_failure: set[str]) -> dict:
    """The promises of DESIGN.md's "Delivery semantics", checked for every user; the figures."""
    learned_last: dict[str, str] = {}
    for user, events in history.items():
        reference = UserState(user, max_history=run.settings.history_length)
        for event in events:
            assert reference.learn(event), f"the test sent {event.event_id} twice"
        state = worker.get(f"/users/{user}")
        held = [r["event_id"] for r in reversed(state["recent"])]
        # Each event once. Not necessarily in send order: a message a worker skipped around
        # its restart is read again a commit interval later, after newer ones.
        assert sorted(held) == sorted(e.event_id for e in events), explain_state(run, user, held, events)
        assert state["counts"] == reference.counts and state["n_events"] == reference.n_events, user
        assert state["last_ts"] == reference.last_ts, user
        learned_last[user] = held[-1]

    lists = [Recommendation.model_validate_json(v) for v in read_topic(run.settings, run.settings.topics.recommendations)]
    last_list: dict[str, Recommendation] = {}
    for message in lists:  # keyed by user: one partition, in the order published
        last_list[message.user_id] = message
    event_user = {e.event_id: e.user_id for events in history.values() for e in events}
    for user, events in history.items():
        # The last list came after the user's last event, or after the last one their state
        # learned (a message skipped around a failover is learned late, out of order).
        fresh = {learned_last[user], events[-1].event_id}
        assert last_list[user].trigger_event_id in fresh, f"{user}'s last list is stale"
        assert worker.get(f"/users/{user}/recommendations")["trigger_event_id"] in fresh
    assert all(event_user[m.trigger_event_id] == m.user_id for m in lists), "a list triggered by another user's event"
    triggers = Counter(m.trigger_event_id for m in lists)
    repeated = {trigger for trigger, n in triggers.items() if n > 1}
    assert repeated <= before_failure, f"events sent after the failure were answered twice: {repeated - before_failure}"
    forwarded = Counter(Event.model_validate_json(v).event_id
                        for v in read_topic(run.settings, run.settings.topics.events_by_user))
    assert set(forwarded) == set(event_user), "every event was forwarded by ingest"
    assert read_topic(run.settings, run.settings.topics.dlq) == [], "a valid event was dead-lettered"
    figures = {
        "events": len(event_user),
        "users": len(history),
        "lost": 0,
        "lists": len(lists),
        "lists_repeated": sum(n - 1 for n in triggers.values() if n > 1),
        "events_forwarded_twice": sum(n - 1 for n in forwarded.values() if n > 1),
    }
    print(f"delivery figures: {figures}")
    return figures


def test_a_worker_killed_mid_stream_loses_nothing(run: Run) -> None:
    a = run.start("a")
    run.wait_ready(a)
    sender = Sender(run.settings, run.world, stream=1)
    # Phase 1: every user's first events, served and committed:
    # after the crash, these users' state can come only from the changelog.
    sender.send_now(3 * N_USERS)
    wait_for(lambda: lists_triggered_by_last_events(a, sender.history()), SERVED_S, "phase 1 served")
    wait_for(lambda: fully_committed(run.settings), SERVED_S, "phase 1 committed")
    # Phase 2: a steady stream; the worker dies in the middle of it, with batches in flight.
    sender.start()
    wait_for(lambda: sender.mark() >= 3 * N_USERS + 60, 60, "the stream to be under way")
    os.killpg(a.process.pid, signal.SIGKILL)
    assert a.process.wait(timeout=30) == -signal.SIGKILL
    killed_at = sender.mark()
    before_failure = {e.event_id for e in sender.sent[:killed_at]}
    a2 = run.start("a-restarted")  # same app id: the same consumer group, tables from changelogs
    run.wait_ready(a2)
    resumed_at = sender.mark()  # the stream goes on a little with the new worker up
    wait_for(lambda: sender.mark() >= resumed_at + 2 * RATE, 60, "events sent to the restarted worker")
    sender.stop()
    history = sender.history()
    print(f"killed after {killed_at} of {len(sender.sent)} events")
    wait_for(lambda: lists_triggered_by_last_events(a2, history), SERVED_S, "every user's last event served")
    wait_for(lambda: fully_committed(run.settings), SERVED_S, "every input message processed and committed")
    figures = check_delivery(run, a2, history, before_failure)
    assert figures["events"] > killed_at, "events were sent while the worker was down"


def test_workers_joining_and_leaving_mid_stream_lose_nothing(run: Run) -> None:
    a = run.start("a")
    run.wait_ready(a)
    sender = Sender(run.settings, run.world, stream=2)
    sender.send_now(2 * N_USERS)
    wait_for(lambda: lists_triggered_by_last_events(a, sender.history()), SERVED_S, "the first events served")
    sender.start()
    b = run.start("b")  # joins while the stream runs: the group rebalances, a hands partitions over
    run.wait_ready(b)
    wait_for(lambda: a.alive() and b.owned() and a.owned() and sorted(a.owned() + b.owned()) == list(range(PARTITIONS)),
             SERVED_S, "a and b to share the partitions")
    joined_at = sender.mark()
    time.sleep(3.0)  # b serves its share of the stream for a while
    assert metric_sum(scrape(b.settings.metrics_port), "streamrec_recommendations_total") > 0, "b served lists"
    os.killpg(b.process.pid, signal.SIGTERM)  # b leaves, mid-stream: its partitions go back to a
    assert b.process.wait(timeout=60) == 0, b.log_tail()
    left_at = sender.mark()
    wait_for(lambda: a.alive() and a.owned() == list(range(PARTITIONS)), SERVED_S, "a to own every partition")
    time.sleep(2.0)
    sender.stop()
    history = sender.history()
    print(f"b joined after {joined_at} and left after {left_at} of {len(sender.sent)} events")
    wait_for(lambda: lists_triggered_by_last_events(a, history), SERVED_S, "every user's last event served")
    wait_for(lambda: fully_committed(run.settings), SERVED_S, "every input message processed and committed")
    # Both moves of a partition are failures here: events sent before b left may be repeated.
    check_delivery(run, a, history, {e.event_id for e in sender.sent[:left_at]})
