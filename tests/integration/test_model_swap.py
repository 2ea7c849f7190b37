"""The worker's model swapper on real parts (MiniLM, Qdrant Edge, a model store), no broker:
canary arms by user hash, the judge's promotion, retired retrieval vectors, refusals."""

from __future__ import annotations

from pathlib import Path

import torch

from streamrec.consumers.worker.metrics import WorkerMetrics
from streamrec.consumers.worker.model_updates import ModelSwapper, update_for
from streamrec.models.core.pipeline import Pipeline
from streamrec.models.core.recommender import OnlineOutcome, UserBatch
from streamrec.models.core.state import UserState
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.models.learning.ranker import Ranker, RankerConfig
from streamrec.models.learning.serving import retrieval_name
from streamrec.models.learning.store import DirectoryModelStore
from streamrec.stream.messages import ModelUpdate
from streamrec.stream.settings import Settings

CONFIG = RankerConfig(dim=16, max_len=10, layers=1, heads=2, id_buckets=256)


def _save(store: DirectoryModelStore, seed: int) -> str:
    torch.manual_seed(seed)
    return store.save(Ranker(CONFIG).state_dict(), CONFIG.to_dict()).version


async def test_canary_is_promoted_and_the_old_version_retired(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", k=5, canary_fraction=0.5, canary_min_events=20, device="cpu"
    )
    world = SyntheticWorld(seed=2, n_items=40, n_users=40, n_categories=4)
    pipeline = Pipeline.from_settings(settings)
    sent: list[ModelUpdate] = []

    async def publish(update: ModelUpdate) -> None:
        sent.append(update)

    try:
        pipeline.store_items(pipeline.catalog.embed(world.items(ts=0.0)))
        store = DirectoryModelStore(settings.resolved_model_dir)
        v1, v2 = _save(store, 1), _save(store, 2)
        metrics = WorkerMetrics()
        swapper = ModelSwapper(settings, pipeline, metrics, publish=publish)
        recommender = pipeline.recommender

        await swapper.on_update(update_for(store, v1, "publish"))
        assert recommender.model_version == v1 and recommender.canary is None
        await swapper.on_update(update_for(store, v2, "publish"))  # canaries on: v2 goes to half
        assert recommender.model_version == v1 and recommender.canary is not None
        assert recommender.canary.scorer.version == v2

        users = []
        for event in world.events(200, start_ts=1.7e9):
            users.append(UserBatch(UserState(event.user_id), [event]))
        ranked = recommender.process_batch(users)
        arms = {r.user_id: r.model_version for r in ranked}
        assert set(arms.values()) == {v1, v2}
        assert all(version == (v2 if recommender.canary.serves(user) else v1) for user, version in arms.items())
        retrieval_v1 = settings.resolved_index_path / retrieval_name(settings.collection, v1)
        assert retrieval_v1.exists()

        # The canary does better live: the judge decides and tells every worker via the topic.
        swapper.observe([OnlineOutcome(v1, n % 4 == 0) for n in range(20)])
        assert not sent
        swapper.observe([OnlineOutcome(v2, n % 2 == 0) for n in range(20)])
        await _settle()
        assert [(u.action, u.version) for u in sent] == [("promote", v2)]
        assert sent[0].metrics["canary_hit_rate"] == 0.5 and sent[0].metrics["main_hit_rate"] == 0.25

        await swapper.on_update(sent[0])  # as read back from model-updates
        await swapper.drain()
        assert recommender.model_version == v2 and recommender.canary is None
        assert not retrieval_v1.exists()  # the old version's vectors are freed
        assert {r.model_version for r in recommender.recommend([u.state for u in users[:10]])} == {v2}

        # An update whose checksum does not match the store is refused; v2 keeps serving.
        v3 = _save(store, 3)
        forged = update_for(store, v3, "pin").model_copy(update={"sha256": "0" * 64})
        await swapper.on_update(forged)
        assert recommender.model_version == v2
        refused = metrics.model_updates.labels(action="pin", outcome="refused", reason="checksum")
        assert refused._value.get() == 1.0
    finally:
        pipeline.close()


async def _settle() -> None:
    import asyncio

    for _ in range(5):
        await asyncio.sleep(0)
