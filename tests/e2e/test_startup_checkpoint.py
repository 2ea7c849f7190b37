"""End to end: a worker whose newest checkpoint fails verification starts anyway.

Probe finding (issue 17): the worker used to exit at start-up (`ModelStoreError`) when the
newest checkpoint in its store did not verify, though the same checkpoint sent through
`model-updates` is refused while the last good version keeps serving. A real worker process
on a store holding a good checkpoint and a newer one whose manifest shapes do not match its
file: it becomes ready, serves the good version, and counts the refusal in the metric a
refused hot swap is counted in.
"""

from __future__ import annotations

import pytest
import torch

from streamrec.models.learning.ranker import Ranker, RankerConfig
from streamrec.models.learning.store import DirectoryModelStore
from streamrec.stream.settings import Settings
from tests.support.checkpoints import spoil_shapes
from tests.support.metrics import metric_sum, scrape
from tests.support.waiting import wait_for
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
    assert "Traceback" not in log
