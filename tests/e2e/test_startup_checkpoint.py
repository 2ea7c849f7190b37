"""End to end: a worker whose newest checkpoint fails verification starts anyway.

Probe finding (issue 17): the worker used to exit at start-up (`ModelStoreError`) when the
newest checkpoint in its store did not verify, though the same checkpoint sent through
`model-updates` is refused while the last good version keeps serving. A real worker process
on a store holding a good checkpoint and a newer one whose manifest shapes do not match its
file: it becomes ready, serves the good version, and counts the refusal in the metric a
refused hot swap is counted in.

Then `model-updates` messages whose version breaks the contract's bounds (900 KB; a newline
that would forge a log line) are classified invalid and logged once each, in one line,
without a traceback (they used to be retried as `unreadable`, 2.7 MB of log for one).
"""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from streamrec.models.learning.ranker import Ranker, RankerConfig
from streamrec.models.learning.store import DirectoryModelStore
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from tests.support.checkpoints import spoil_shapes
from tests.support.metrics import metric_sum, scrape
from tests.support.waiting import OUTPUT_WAIT_S, wait_for
from tests.support.workers import WORKER_READY_S, Worker

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture
def e2e_settings(e2e_settings: Settings) -> Settings:
    """A store with a good checkpoint (an untrained ranker for MiniLM vectors) and a newer bad one."""
    store = DirectoryModelStore(e2e_settings.resolved_model_dir)
    config = RankerConfig(dim=16, max_len=5, layers=1, heads=2, id_buckets=64)
    torch.manual_seed(0)
    store.save(Ranker(config).state_dict(), config.to_dict())
    spoil_shapes(store, store.save(Ranker(config).state_dict(), config.to_dict()).version)
    return e2e_settings


def test_a_bad_newest_checkpoint_is_refused_at_start_and_the_previous_served(
    e2e_settings: Settings, worker: Worker
) -> None:
    store = DirectoryModelStore(e2e_settings.resolved_model_dir)
    good, bad = [m.version for m in store.list()]
    wait_for(lambda: worker.alive() and worker.readiness().get("ready"), WORKER_READY_S, "the worker ready")
    assert worker.get("/healthz")["model_version"] == good
    metrics = scrape(e2e_settings.metrics_port)
    refused = 'action="startup",outcome="refused",reason="shape"'
    assert metric_sum(metrics, "streamrec_model_updates_total{", refused) == 1, metrics
    log = worker.log_path.read_text()
    assert f"refusing checkpoint {bad} at start (shape)" in log

    asyncio.run(send_hostile_updates(e2e_settings))
    invalid = 'outcome="refused",reason="invalid_message"'
    wait_for(lambda: metric_sum(scrape(e2e_settings.metrics_port), "streamrec_model_updates_total{", invalid) == 2,
             OUTPUT_WAIT_S, "both hostile versions classified invalid")
    assert worker.get("/healthz")["model_version"] == good
    log = worker.log_path.read_text()
    assert "Traceback" not in log
    assert not [line for line in log.splitlines() if line.startswith("FORGED")], "a version forged a log line"
    assert len(log) < 50_000, f"{len(log)} characters of log"


async def send_hostile_updates(settings: Settings) -> None:
    async with EventProducer(settings) as producer:
        for version in ("v" * 900_000, "v1\nFORGED 2024-01-01 INFO all is well"):
            update = {"version": version, "uri": "file:///models/v1", "sha256": "ab" * 32, "created_at": 0.0}
            await producer.send_raw(settings.topics.model_updates, json.dumps(update).encode())
