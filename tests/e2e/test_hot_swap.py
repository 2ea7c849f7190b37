"""End to end: a running worker swaps model versions from `model-updates`, refuses bad ones,
and follows an operator's rollback, all without a restart and without a gap in its output.

Versions are sent with the real CLI (`streamrec model publish|rollback`) to a real worker.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.models.learning.store import WEIGHTS_FILE, DirectoryModelStore
from streamrec.stream.messages import Event, Recommendation
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from tests.support.checkpoints import with_checkpoint
from tests.support.metrics import scrape
from tests.support.topics import TopicCollector
from tests.support.waiting import OUTPUT_WAIT_S, wait_until
from tests.support.workers import index_catalogue, start_worker, worker_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]


def _variant(store: DirectoryModelStore, parent: str, poison: bool = False) -> str:
    """A new version: the parent's weights slightly changed (NaN in one tensor if `poison`)."""
    manifest, tensors = store.load(parent)
    generator = torch.Generator().manual_seed(len(store.list()))
    changed = {
        name: t + 0.01 * torch.randn(t.shape, generator=generator) if t.is_floating_point() else t
        for name, t in tensors.items()
    }
    if poison:
        name = next(n for n, t in changed.items() if t.is_floating_point())
        changed[name] = changed[name].clone()
        changed[name].view(-1)[0] = float("nan")
    return store.save(changed, manifest.config, parent=parent).version


def _cli(settings: Settings, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "streamrec.consumers.cli", "model", *args],
        env=worker_env(settings), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


async def test_hot_swap_refusal_and_rollback(settings: Settings, tmp_path: Path) -> None:

    world = SyntheticWorld(seed=5, n_items=60, n_users=10, n_categories=3)
    settings, store, v1 = await with_checkpoint(settings, world)
    log_path = tmp_path / "worker.log"
    worker = start_worker(settings, log_path)
    metric = lambda name: scrape(settings.metrics_port).get(name, 0.0)  # noqa: E731
    rounds: list[tuple[list[Event], set[str]]] = []
    try:
        async with EventProducer(settings) as producer, \
                TopicCollector(settings, settings.topics.recommendations) as recs:
            await index_catalogue(producer, world, worker)

            async def serve_round(expected_version: str) -> None:
                """Send a round of events; every user's list must carry `expected_version`."""
                now = time.time()
                events = [
                    e.model_copy(update={"ts": now + n * 0.001, "event_id": f"r{len(rounds)}-{n}"})
                    for n, e in enumerate(world.events(30, start_ts=now, stream=len(rounds) + 2))
                ]
                for event in events:
                    await producer.send_event(event)
                await producer.flush()
                last = {e.user_id: e.event_id for e in events}  # each user's newest event
                parsed = lambda: {  # noqa: E731
                    r.trigger_event_id: r for r in map(Recommendation.model_validate_json, recs.values)
                }
                await wait_until(lambda: set(last.values()) <= set(parsed()), OUTPUT_WAIT_S, "lists for a round")
                versions = {parsed()[trigger].model_version for trigger in last.values()}
                assert versions == {expected_version}, (len(rounds), versions)
                rounds.append((events, versions))

            await serve_round(v1)

            # A new version reaches the running worker and serves the next events.
            v2 = _variant(store, v1)
            _cli(settings, "publish", v2)
            await wait_until(lambda: metric("streamrec_model_swaps_total") >= 1, OUTPUT_WAIT_S, "the swap to v2")
            await serve_round(v2)

            # A corrupted file and NaN weights are refused; the worker keeps serving v2.
            v3 = _variant(store, v2)
            weights = store.root / v3 / WEIGHTS_FILE
            payload = bytearray(weights.read_bytes())
            payload[-1] ^= 0xFF
            weights.write_bytes(bytes(payload))
            _cli(settings, "publish", v3)
            refused = 'streamrec_model_updates_total{action="publish",outcome="refused",reason="checksum"}'
            await wait_until(lambda: metric(refused) >= 1, OUTPUT_WAIT_S, "the corrupted update refused")
            v4 = _variant(store, v2, poison=True)
            _cli(settings, "publish", v4)
            refused = 'streamrec_model_updates_total{action="publish",outcome="refused",reason="non_finite"}'
            await wait_until(lambda: metric(refused) >= 1, OUTPUT_WAIT_S, "the NaN update refused")
            assert worker.alive()
            await serve_round(v2)

            # The operator rolls back to v1: it reaches the worker through the same topic.
            assert f"rollback {v1}" in _cli(settings, "rollback", v1)
            await wait_until(lambda: metric("streamrec_model_swaps_total") >= 2, OUTPUT_WAIT_S, "the rollback")
            await serve_round(v1)
            info = scrape(settings.metrics_port)
            assert info.get(f'streamrec_model_info{{version="{v1}"}}') == 1.0
            # Online hit-rate is counted per version that ranked the list the user saw.
            online = {k for k in info if k.startswith("streamrec_online_events_total{")}
            assert any(v1 in k for k in online) and any(v2 in k for k in online), online
    finally:
        worker.kill()
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log.split("refusing model")[0]  # nothing crashed before the refusals
    assert f"refusing model {v3} (checksum)" in log and f"refusing model {v4} (non_finite)" in log
