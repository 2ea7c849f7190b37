"""The model store failing under a running worker's swapper, on real parts (MiniLM, Qdrant
Edge, a directory model store, real checkpoint files), no broker.

A version whose files are missing or do not match the update's sha256 (yet) is refused, the
current version keeps serving, and the refused version is tried again until it loads, unless
a newer message replaced it. Bad weights (NaN) are refused for good.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from streamrec.consumers.worker.metrics import WorkerMetrics
from streamrec.consumers.worker.model_updates import ModelSwapper, update_for
from streamrec.models.core.pipeline import Pipeline
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.models.learning.ranker import Ranker, RankerConfig
from streamrec.models.learning.store import WEIGHTS_FILE, DirectoryModelStore
from streamrec.stream.settings import Settings

pytestmark = pytest.mark.integration

CONFIG = RankerConfig(dim=16, max_len=10, layers=1, heads=2, id_buckets=256)
RETRY_S = 0.2
WAIT_S = 60.0


def _save(store: DirectoryModelStore, seed: int, poison: bool = False) -> str:
    torch.manual_seed(seed)
    tensors = Ranker(CONFIG).state_dict()
    if poison:
        name = next(n for n, t in tensors.items() if t.is_floating_point())
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = float("nan")
    return store.save(tensors, CONFIG.to_dict()).version


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_refused_version_is_retried_when_the_store_is_readable_again(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", k=5, device="cpu", model_retry_s=RETRY_S)
    world = SyntheticWorld(seed=2, n_items=30, n_users=5, n_categories=3)
    pipeline = Pipeline.from_settings(settings)
    metrics = WorkerMetrics()
    swapper = ModelSwapper(settings, pipeline, metrics)
    recommender = pipeline.recommender
    updates = lambda action, outcome, reason: metrics.model_updates.labels(  # noqa: E731
        action=action, outcome=outcome, reason=reason
    )._value.get()
    try:
        pipeline.store_items(pipeline.catalog.embed(world.items(ts=0.0)))
        store = DirectoryModelStore(settings.resolved_model_dir)
        v1 = _save(store, 1)
        await swapper.on_update(update_for(store, v1, "publish"))
        assert recommender.model_version == v1

        # The store's directory is gone (an unmounted volume) when v2 is announced.
        v2 = _save(store, 2)
        update = update_for(store, v2, "publish")
        away = store.root.with_name("models.away")
        store.root.rename(away)
        await swapper.on_update(update)
        assert recommender.model_version == v1, "keeps serving the last good version"
        assert updates("publish", "refused", "unknown_version") == 1
        await asyncio.sleep(RETRY_S * 3)  # tried again meanwhile, refused again: still v1
        assert recommender.model_version == v1
        assert updates("retry", "refused", "unknown_version") >= 1
        away.rename(store.root)
        await _until(lambda: recommender.model_version == v2, "v2 once the store is back")
        assert updates("retry", "swapped", "") == 1

        # A weights file that does not match its sha256 yet (still being copied), then does.
        v3 = _save(store, 3)
        weights = store.root / v3 / WEIGHTS_FILE
        whole = weights.read_bytes()
        weights.write_bytes(whole[: len(whole) // 2])
        await swapper.on_update(update_for(store, v3, "publish"))
        assert recommender.model_version == v2
        assert updates("publish", "refused", "checksum") == 1
        weights.write_bytes(whole)
        await _until(lambda: recommender.model_version == v3, "v3 once its file is whole")

        # A refused version that a newer message replaced is not swapped in when it returns.
        v4, v5 = _save(store, 4), _save(store, 5)
        update4 = update_for(store, v4, "publish")
        (store.root / v4).rename(away)
        await swapper.on_update(update4)
        await swapper.on_update(update_for(store, v5, "publish"))
        assert recommender.model_version == v5
        away.rename(store.root / v4)
        await asyncio.sleep(RETRY_S * 4)
        assert recommender.model_version == v5

        # NaN weights are refused for good: no retry.
        retries = sum(
            sample.value for sample in metrics.model_updates.collect()[0].samples
            if sample.labels.get("action") == "retry" and sample.name.endswith("_total")
        )
        v6 = _save(store, 6, poison=True)
        await swapper.on_update(update_for(store, v6, "publish"))
        await asyncio.sleep(RETRY_S * 4)
        assert recommender.model_version == v5
        assert updates("publish", "refused", "non_finite") == 1
        assert updates("retry", "refused", "non_finite") == 0
        after = sum(
            sample.value for sample in metrics.model_updates.collect()[0].samples
            if sample.labels.get("action") == "retry" and sample.name.endswith("_total")
        )
        assert after == retries
    finally:
        swapper.stop_retrying()
        await swapper.drain()
        pipeline.close()
