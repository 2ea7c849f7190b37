"""End to end: the trainer sidecar follows a change of taste and the worker serves its versions.

Real broker, real worker, real trainer (subprocesses). Users of a synthetic shop switch
their favourite categories; the trainer fine-tunes from the served checkpoint on its window,
publishes a version that is not worse on the newest events, the worker swaps it in, and the
online hit-rate (was the next event's item in the list served before it?) of its versions is
well above chance, and the newest version's lists are mostly in the users' new tastes.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.stream.messages import Recommendation
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from tests.support.checkpoints import with_checkpoint
from tests.support.metrics import scrape
from tests.support.topics import TopicCollector
from tests.support.waiting import OUTPUT_WAIT_S, wait_until
from tests.support.workers import index_catalogue, start_worker

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
CHUNK = 100  # events sent at once; the worker serves lists between chunks
TRAINER_COMMAND = (sys.executable, "-m", "streamrec.consumers.cli", "trainer")


def _online(metrics: dict[str, float], version: str) -> tuple[float, float]:
    """(events, hits) counted for lists ranked by `version`."""
    events = sum(v for k, v in metrics.items() if k.startswith("streamrec_online_events_total{") and version in k)
    hits = sum(v for k, v in metrics.items() if k.startswith("streamrec_online_hits_total{") and version in k)
    return events, hits


async def test_trainer_follows_a_change_of_taste(settings: Settings, tmp_path: Path) -> None:
    from streamrec.stream.broker import free_port

    world = SyntheticWorld(seed=5, n_items=120, n_users=20, n_categories=3)
    settings, store, v1 = await with_checkpoint(settings, world)
    trainer_port = free_port()
    trainer_settings = settings.model_copy(update={
        "trainer_metrics_port": trainer_port, "trainer_window_events": 800, "trainer_every_events": 400,
        "trainer_every_s": 5.0, "trainer_min_events": 300, "trainer_steps": 150, "trainer_holdout": 0.25,
    })
    log_path, trainer_log = tmp_path / "worker.log", tmp_path / "trainer.log"
    worker = start_worker(settings, log_path)
    trainer = start_worker(trainer_settings, trainer_log, command=TRAINER_COMMAND)
    stream = iter(range(10, 10_000))
    try:
        async with EventProducer(settings) as producer, \
                TopicCollector(settings, settings.topics.recommendations) as recs:
            await index_catalogue(producer, world, worker)

            async def send_chunks(n_chunks: int) -> None:
                for _ in range(n_chunks):
                    assert worker.alive() and trainer.process.poll() is None, trainer.log_tail(3000)
                    now = time.time()
                    for event in world.events(CHUNK, start_ts=now, rate_per_s=200, stream=next(stream)):
                        await producer.send_event(event)
                    await producer.flush()
                    await asyncio.sleep(1.0)

            await send_chunks(3)  # the old tastes, served by v1
            at_switch = scrape(settings.metrics_port)
            world.switch_tastes()
            await send_chunks(1)
            after_first_chunk = scrape(settings.metrics_port)
            swaps = lambda: scrape(settings.metrics_port).get("streamrec_model_swaps_total", 0.0)  # noqa: E731
            deadline = time.monotonic() + 240
            while swaps() < 1 and time.monotonic() < deadline:
                await send_chunks(1)
            assert swaps() >= 1, trainer_log.read_text()[-3000:]
            await send_chunks(10)  # the new tastes, served by the trainer's versions
            await wait_until(lambda: len(recs.values) > 0, OUTPUT_WAIT_S, "lists")
            final = scrape(settings.metrics_port)
            trainer_metrics = scrape(trainer_port)
    finally:
        for process in (worker.process, trainer.process):
            process.terminate()
        for process in (worker.process, trainer.process):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    published = [m for m in store.list() if m.version != v1]
    assert published and published[0].parent == v1, [m.parent for m in published]
    assert published[0].data["source"] == "trainer" and "hr@5" in published[0].metrics
    assert trainer_metrics.get('streamrec_trainer_cycles_total{outcome="published"}', 0) >= 1
    assert trainer_metrics.get("streamrec_trainer_steps_total", 0) >= 150

    lists = [Recommendation.model_validate_json(v) for v in recs.values]
    on_taste: dict[str, list[int]] = {}  # version -> [items in the user's new tastes, items]
    for rec in lists:
        counts = on_taste.setdefault(rec.model_version, [0, 0])
        counts[0] += sum(world.category_of(i.item_id) in world.favourite_categories(rec.user_id) for i in rec.items)
        counts[1] += len(rec.items)
    print("share of listed items in the new tastes, by version:",
          {v[-8:]: round(good / max(n, 1), 2) for v, (good, n) in on_taste.items()})
    served = {r.model_version for r in lists[-50:]}
    assert served <= {m.version for m in published}, served  # the newest lists: trainer versions

    # Right after the switch the lists (old tastes) miss; the trainer's versions hit again.
    first_events, first_hits = (
        sum(v for k, v in after_first_chunk.items() if k.startswith(name))
        - sum(v for k, v in at_switch.items() if k.startswith(name))
        for name in ("streamrec_online_events_total{", "streamrec_online_hits_total{")
    )
    new = [_online(final, m.version) for m in published]
    new_events, new_hits = sum(e for e, _ in new), sum(h for _, h in new)
    assert first_events > 0 and new_events >= 500, (first_events, new_events)
    first_rate, new_rate = first_hits / first_events, new_hits / new_events
    chance = settings.k / 120
    print(f"online hit-rate@5: first chunk after the switch {first_rate:.3f} ({first_events:.0f} events), "
          f"trainer versions later {new_rate:.3f} ({new_events:.0f} events), a random list {chance:.3f}")
    # ~1000 events: the standard error of a rate near 0.08 is ~0.009 (the first chunk's, ~0.025)
    assert new_rate > chance
    newest = lists[-1].model_version  # later versions learned the new tastes: their lists show it
    good, n = on_taste[newest]
    assert good / n > 0.6, on_taste  # a list blind to tastes: ~1/3 (most users now like 1 of 3 categories)
