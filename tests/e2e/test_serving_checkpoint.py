"""End to end: a worker serves the newest ranker checkpoint of its model store.

A small ranker is trained in-process on the synthetic world's history (real MiniLM text
vectors) and saved to the store; a real worker process then serves it: every list carries
the checkpoint's version, and the worker builds the version's own retrieval index (which reasons
a list gets depends on the learned blend, so they are not asserted here).
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest

from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.models.learning.serving import retrieval_name
from streamrec.stream.messages import Recommendation
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from tests.support.checkpoints import with_checkpoint
from tests.support.topics import TopicCollector
from tests.support.waiting import OUTPUT_WAIT_S, wait_until
from tests.support.workers import index_catalogue, start_worker

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


async def test_worker_serves_the_newest_checkpoint(settings: Settings, tmp_path: Path) -> None:
    world = SyntheticWorld(seed=5, n_items=60, n_users=10, n_categories=3)
    settings, _, version = await with_checkpoint(settings, world)
    log_path = tmp_path / "worker.log"
    worker = start_worker(settings, log_path)
    try:
        async with EventProducer(settings) as producer, \
                TopicCollector(settings, settings.topics.recommendations) as recs:
            await index_catalogue(producer, world, worker)
            now = time.time()
            events = [e.model_copy(update={"ts": now + n * 0.001}) for n, e in enumerate(world.events(60, start_ts=now))]
            for event in events:
                await producer.send_event(event)
            await producer.flush()
            last_event = {event.user_id: event.event_id for event in events}
            lists = lambda: [Recommendation.model_validate_json(v) for v in recs.values]  # noqa: E731
            await wait_until(
                lambda: {r.trigger_event_id for r in lists()} >= set(last_event.values()),
                OUTPUT_WAIT_S, "a list triggered by each user's last event",
            )
            # The ranker's own retrieval index (its item vectors), built by the worker for the version.
            assert (settings.resolved_index_path / retrieval_name(settings.collection, version)).exists()
    finally:
        worker.kill()
    received = lists()
    assert {r.model_version for r in received} == {version}
    # A list excludes every item its user consumed up to (and with) the event that triggered it.
    consumed_by_trigger: dict[str, set[str]] = {}
    consumed: dict[str, set[str]] = defaultdict(set)
    for event in events:
        consumed[event.user_id].add(event.item_id)
        consumed_by_trigger[event.event_id] = set(consumed[event.user_id])
    for rec in received:
        assert rec.items and not {i.item_id for i in rec.items} & consumed_by_trigger[rec.trigger_event_id]
    log = log_path.read_text(errors="replace")
    assert f"serving checkpoint {version}" in log
