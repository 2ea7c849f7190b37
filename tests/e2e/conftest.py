"""Fixtures of the end-to-end tests: workers started for a test and killed after it, and a
worker group of its own on the session's broker (`tests/support/group_run.py`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.stream.broker import DevBroker, free_port
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics
from tests.support.events import MAX_MESSAGE_BYTES
from tests.support.group_run import HISTORY, N_USERS, PARTITIONS, Run
from tests.support.workers import Worker, start_worker


@pytest.fixture
def e2e_settings(settings: Settings) -> Settings:
    """One worker's settings: its own metrics port, small messages (the `oversized` case), K=5."""
    return settings.model_copy(
        update={"metrics_port": free_port(), "max_message_bytes": MAX_MESSAGE_BYTES, "k": 5}
    )


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """The workers a test started (it appends them): killed at the end, whatever happened."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill()


@pytest.fixture
def worker(e2e_settings: Settings, tmp_path: Path, workers: list[Worker]) -> Worker:
    """A `streamrec worker` for `e2e_settings`, logging to `<tmp_path>/worker.log`."""
    started = start_worker(e2e_settings, tmp_path / "worker.log")
    workers.append(started)
    return started


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
            worker.kill()
