"""The `run` fixture: a worker group of its own on the session's broker (tests/e2e/group_run.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.stream.broker import DevBroker
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics
from tests.e2e.group_run import HISTORY, N_USERS, PARTITIONS, Run


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
