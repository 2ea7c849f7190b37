"""A Qdrant server away, on real parts: qdrant-client against a port where nothing listens
or nothing answers, the real pipeline (MiniLM, the recommend handler, the worker's metrics).

No Qdrant server can run here (no Docker; no PyPI package ships one), so "the server goes
away and comes back" is the real item index switching between qdrant-client on a dead port
and a working qdrant-client (local mode) under the same cache; the e2e test runs a whole
worker against a dead port.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from streamrec.consumers.worker.handlers import RecommendHandler
from streamrec.consumers.worker.metrics import WorkerMetrics
from streamrec.models.core.pipeline import Pipeline
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.models.index.cache import CachedItemIndex
from streamrec.models.index.exact import ExactItemIndex
from streamrec.models.index.health import FALLBACK_VERSION, INDEX_UNAVAILABLE_REASON
from streamrec.models.index.protocol import IndexedItem, IndexUnavailableError
from streamrec.models.index.server import ClientItemIndex
from streamrec.stream.broker import free_port
from streamrec.stream.messages import Event, Item, Recommendation
from streamrec.stream.settings import Settings

pytestmark = pytest.mark.integration

RETRY_S = 0.5


def dead_url() -> str:
    """A Qdrant URL where nothing listens: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A Qdrant URL that accepts connections and never answers (a hung server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel completes the handshakes; nobody reads
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_a_refused_or_silent_server_is_unavailable_not_an_error(silent_url: str) -> None:
    refused = ClientItemIndex(dead_url(), dim=4, timeout_s=1)  # opens: checked when it answers
    silent = ClientItemIndex(silent_url, dim=4, timeout_s=1)
    try:
        for index in (refused, silent):
            for call in (partial(index.get, ["a"]), index.count, partial(list, index.scan())):
                with pytest.raises(IndexUnavailableError, match="Qdrant at http://127.0.0.1"):
                    call()
    finally:
        refused.close()
        silent.close()


def _events(world: SyntheticWorld, users: list[str], items: list[Item], tag: str) -> list[Event]:
    now = time.time()
    return [
        Event(event_id=f"{tag}-{n}", user_id=user, item_id=item.item_id, type="click", ts=now + n)
        for n, (user, item) in enumerate(zip(users, items))
    ]


def _reach(pipeline: Pipeline, backend: ClientItemIndex) -> ClientItemIndex:
    """Point the pipeline's index layers at another backend; the one they had is returned."""
    cached = pipeline.index
    assert isinstance(cached, CachedItemIndex) and isinstance(cached.inner, ExactItemIndex)
    working = cached.inner.inner
    cached.inner.inner = backend
    return working


def test_the_pipeline_serves_trending_while_qdrant_is_away_and_recovers(tmp_path: Path) -> None:
    settings = Settings(  # a catalogue too large for memory: every read asks Qdrant
        data_dir=tmp_path, index_mode="client", qdrant_url=":memory:", k=3, device="cpu",
        index_retry_s=RETRY_S, exact_search_max_items=0,
    )
    world = SyntheticWorld(seed=3, n_items=30, n_users=6, n_categories=3)
    items = world.items(ts=0.0)
    pipeline = Pipeline.from_settings(settings)
    metrics = WorkerMetrics()
    metrics.watch_index(pipeline.recommender)
    handler = RecommendHandler(settings, pipeline, metrics)
    served = lambda messages: {item.reason for m in messages for item in m.items}  # noqa: E731
    try:
        pipeline.store_items(pipeline.catalog.embed(items[:25]))
        users = world.user_ids()
        messages, states = handler.handle(_events(world, users, items[:6], "before"), {})
        assert INDEX_UNAVAILABLE_REASON not in served(messages)
        assert all(m.items for m in messages)

        # Qdrant goes away: the same cached index now reaches a server that refuses.
        working = _reach(pipeline, ClientItemIndex(dead_url(), dim=pipeline.index.dim, timeout_s=1))
        outage = _events(world, users, items[6:12], "outage")  # items not cached yet
        messages, states = handler.handle(outage, states)
        assert {m.user_id for m in messages} == set(users)
        assert served(messages) == {INDEX_UNAVAILABLE_REASON}
        assert {m.model_version for m in messages} == {FALLBACK_VERSION}
        for message in messages:  # trending, minus what the user consumed
            consumed = states[message.user_id].consumed
            assert message.items and not consumed & {i.item_id for i in message.items}
        with pytest.raises(IndexUnavailableError):  # a catalogue write waits (the caller retries)
            pipeline.store_items(pipeline.catalog.embed(items[25:]))
        text = metrics.exposition().decode()
        assert f'streamrec_fallback_lists_total{{reason="index_unavailable"}} {len(users)}.0' in text
        assert "streamrec_index_available 0.0" in text

        # It comes back: after index_retry_s the next batch probes it and is served normally.
        _reach(pipeline, working).close()
        time.sleep(RETRY_S * 1.2)
        messages, states = handler.handle(_events(world, users, items[12:18], "after"), states)
        assert INDEX_UNAVAILABLE_REASON not in served(messages)
        assert {m.model_version for m in messages} != {FALLBACK_VERSION}
        pipeline.store_items(pipeline.catalog.embed(items[25:]))
        assert pipeline.index.count() == len(items)
        assert "streamrec_index_available 1.0" in metrics.exposition().decode()
        assert all(isinstance(m, Recommendation) for m in messages)
    finally:
        pipeline.close()


def test_a_catalogue_in_memory_keeps_serving_while_qdrant_is_away(tmp_path: Path) -> None:
    """Reads come from memory, so an outage only holds catalogue writes back (not lost: the
    caller retries), and the lists stay those of the full core."""
    settings = Settings(data_dir=tmp_path, index_mode="client", qdrant_url=":memory:", k=3, device="cpu",
                        index_retry_s=RETRY_S)
    world = SyntheticWorld(seed=5, n_items=30, n_users=6, n_categories=3)
    items = world.items(ts=0.0)
    pipeline = Pipeline.from_settings(settings)
    handler = RecommendHandler(settings, pipeline, WorkerMetrics())
    try:
        pipeline.store_items(pipeline.catalog.embed(items[:25]))
        users = world.user_ids()
        _, states = handler.handle(_events(world, users, items[:6], "before"), {})
        working = _reach(pipeline, ClientItemIndex(dead_url(), dim=pipeline.index.dim, timeout_s=1))
        messages, states = handler.handle(_events(world, users, items[6:12], "outage"), states)
        assert {m.user_id for m in messages} == set(users)
        assert all(m.items for m in messages)
        assert {m.model_version for m in messages} != {FALLBACK_VERSION}
        assert INDEX_UNAVAILABLE_REASON not in {item.reason for m in messages for item in m.items}
        with pytest.raises(IndexUnavailableError):
            pipeline.store_items(pipeline.catalog.embed(items[25:]))
        assert pipeline.index.count() == 25  # memory holds only what the backend took
        _reach(pipeline, working).close()
        pipeline.store_items(pipeline.catalog.embed(items[25:]))
        assert pipeline.index.count() == len(items) == working.count()
    finally:
        pipeline.close()


def test_the_catalogue_is_read_into_memory_once_a_server_away_at_start_answers() -> None:
    away = ClientItemIndex(dead_url(), dim=4, timeout_s=1)
    index = ExactItemIndex(away, max_items=100)  # starts: the worker serves trending meanwhile
    with pytest.raises(IndexUnavailableError):
        index.search_batch(np.ones((1, 4), dtype=np.float32), limit=2)
    working = ClientItemIndex(":memory:", dim=4)
    working.upsert([IndexedItem(f"i{k}", np.eye(4, dtype=np.float32)[k], f"t{k}") for k in range(4)])
    index.inner = working
    [hits] = index.search_batch(np.eye(4, dtype=np.float32)[:1], limit=2)
    assert index.in_memory and [hit.item_id for hit in hits][0] == "i0"
    away.close()
    index.close()
