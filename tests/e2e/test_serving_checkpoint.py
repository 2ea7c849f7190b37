"""End to end: a worker serves the newest ranker checkpoint of its model store.

A small ranker is trained in-process on the synthetic world's history (real MiniLM text
vectors) and saved to the store; a real worker process then serves it: every list carries
the checkpoint's version, and the ranker's own retrieval index answers next to the text one.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from streamrec.models.core.encoder import TextEncoder
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.models.learning.item_table import ItemTable
from streamrec.models.learning.ranker import Ranker, RankerConfig, Step
from streamrec.models.learning.store import DirectoryModelStore
from streamrec.models.learning.training import TrainConfig, make_windows, train_ranker
from streamrec.stream.messages import Recommendation
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics
from tests.e2e.test_end_to_end import (
    OUTPUT_WAIT_S,
    TopicCollector,
    index_catalogue,
    start_worker,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


def _train_checkpoint(world: SyntheticWorld, store: DirectoryModelStore) -> str:
    items = world.items(ts=0.0)
    config = RankerConfig(dim=32, max_len=10, layers=1, heads=2, id_buckets=256, dropout=0.1)
    table = ItemTable.embed([i.item_id for i in items], [i.text for i in items], TextEncoder(), config.id_buckets)
    history: dict[str, list[Step]] = defaultdict(list)
    for event in world.events(600, start_ts=1.7e9, stream=1):
        history[event.user_id].append(Step(event.item_id, event.type, event.ts))
    model = Ranker(config)
    windows = make_windows(history, table, config.max_len, config.gap_buckets)
    train_ranker(model, table, windows, TrainConfig(epochs=3, negatives=32), torch.device("cpu"), progress=False)
    manifest = store.save(model.state_dict(), config.to_dict(), data={"source": "synthetic"})
    return manifest.version


async def with_checkpoint(settings: Settings, world: SyntheticWorld) -> tuple[Settings, DirectoryModelStore, str]:
    """Settings for one worker (own metrics port, K=5), a trained checkpoint in its store, topics made."""
    from streamrec.stream.broker import free_port

    settings = settings.model_copy(update={"metrics_port": free_port(), "k": 5})
    store = DirectoryModelStore(settings.resolved_model_dir)
    version = _train_checkpoint(world, store)
    await ensure_topics(settings)
    return settings, store, version


async def test_worker_serves_the_newest_checkpoint(settings: Settings, tmp_path: Path) -> None:
    from streamrec.stream.broker import free_port

    settings = settings.model_copy(update={"metrics_port": free_port(), "k": 5})
    world = SyntheticWorld(seed=5, n_items=60, n_users=10, n_categories=3)
    version = _train_checkpoint(world, DirectoryModelStore(settings.resolved_model_dir))
    await ensure_topics(settings)
    log_path = tmp_path / "worker.log"
    process = start_worker(settings, log_path)
    try:
        async with EventProducer(settings) as producer, \
                TopicCollector(settings, settings.topics.recommendations) as recs:
            await index_catalogue(producer, settings, world, process, log_path)
            now = time.time()
            events = [e.model_copy(update={"ts": now + n * 0.001}) for n, e in enumerate(world.events(60, start_ts=now))]
            for event in events:
                await producer.send_event(event)
            await producer.flush()
            users = {event.user_id for event in events}
            lists = lambda: [Recommendation.model_validate_json(v) for v in recs.values]  # noqa: E731
            await wait_until(lambda: {r.user_id for r in lists()} >= users, OUTPUT_WAIT_S, "a list per user")
    finally:
        process.kill()
        process.wait()
    received = lists()
    assert {r.model_version for r in received} == {version}
    consumed: dict[str, set[str]] = defaultdict(set)
    for event in events:
        consumed[event.user_id].add(event.item_id)
    final = {r.user_id: r for r in received}  # the newest list per user
    for user_id, rec in final.items():
        assert rec.items and not {i.item_id for i in rec.items} & consumed[user_id]
    reasons = {item.reason.split(" ")[0] for rec in received for item in rec.items}
    assert "picked" in reasons  # the ranker's own retrieval index served candidates
    log = log_path.read_text(errors="replace")
    assert f"serving checkpoint {version}" in log
