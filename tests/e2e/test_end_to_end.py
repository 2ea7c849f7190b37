"""End to end: a real Tansu broker and a real Faust worker process, checked from the outside.

Produces a catalogue and a stream of events (bad messages and duplicates included), reads
`recommendations` and `events.dlq` with plain consumers, and checks the contract's promises.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from pathlib import Path

import jsonschema
import pytest

from streamrec.models.core.catalog import title_of
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.stream.messages import DeadLetter, Event, Recommendation
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics
from tests.support.events import bad_messages
from tests.support.metrics import metric_sum, scrape
from tests.support.topics import TopicCollector, confluent_read, group_offsets
from tests.support.waiting import OUTPUT_WAIT_S, wait_until
from tests.support.workers import WORKER_READY_S, Worker, index_catalogue, start_worker

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

SCHEMAS = Path(__file__).resolve().parents[2] / "stream" / "schemas"


async def test_events_in_fresh_recommendations_out(
    e2e_settings: Settings, worker: Worker, workers: list[Worker]
) -> None:
    settings = e2e_settings
    world = SyntheticWorld(seed=11, n_items=80, n_users=15, n_categories=4)
    await ensure_topics(settings)

    async with EventProducer(settings) as producer, \
            TopicCollector(settings, settings.topics.recommendations) as recs, \
            TopicCollector(settings, settings.topics.dlq) as dlq:
        items = await index_catalogue(producer, world, worker)

        # A live stream of valid events, interleaved with bad messages.
        now = time.time()
        events = [e.model_copy(update={"ts": now + i * 0.001}) for i, e in enumerate(world.events(150, start_ts=now))]
        # A planted co-visitation pattern: a crowd takes A, then B of another category (so no
        # text links them); later a newcomer who takes A must be offered B for that reason.
        planted_a = items[0]
        planted_b = next(i for i in items if world.category_of(i.item_id) != world.category_of(planted_a.item_id))
        crowd = [
            Event(event_id=f"crowd-{n}-{step}", user_id=f"crowd-{n}", item_id=item.item_id, type="click",
                  ts=now + 0.2 + n * 0.01 + step * 0.001)
            for n in range(8) for step, item in enumerate((planted_a, planted_b))
        ]
        events += crowd
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
            worker.alive()
            triggers = {json.loads(v)["trigger_event_id"] for v in recs.values}
            return set(last_event.values()) <= triggers and len(dlq.values) >= len(bad)

        await wait_until(all_users_served, OUTPUT_WAIT_S, "a list per user and every bad message in the DLQ")

        probe = Event(event_id=f"probe-{uuid.uuid4().hex}", user_id="newcomer", item_id=planted_a.item_id,
                      type="view", ts=time.time())
        await producer.send_event(probe)
        await producer.flush()
        await wait_until(lambda: any(probe.event_id.encode() in v for v in recs.values), OUTPUT_WAIT_S, "the probe")
        [probe_list] = [Recommendation.model_validate_json(v) for v in recs.values if probe.event_id.encode() in v]
        offered = {item.item_id: item.reason for item in probe_list.items}
        assert planted_b.item_id in offered, f"the planted co-visitation was not recommended: {offered}"
        title_a = title_of(planted_a)
        assert offered[planted_b.item_id] in {f"often viewed with {title_a}", f"often next after {title_a}"}
        events.append(probe)

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
    assert worker.terminate() == 0
    assert "Traceback" not in worker.log_path.read_text(errors="replace")

    # A new worker recovers user state from the table's changelog: after the restart, lists
    # still exclude everything the users consumed before it.
    restarted = start_worker(settings, worker.log_path)
    workers.append(restarted)
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
            restarted.alive()
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
    assert restarted.terminate() == 0
