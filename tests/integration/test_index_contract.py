"""One contract, two real Qdrant backends: Qdrant Edge on disk and qdrant-client's local mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamrec.models.index import (
    ClientItemIndex,
    EdgeItemIndex,
    IndexedItem,
    ItemIndex,
    open_index,
)
from streamrec.stream.settings import Settings

pytestmark = pytest.mark.integration

DIM = 16


def _items(n: int, seed: int = 0) -> list[IndexedItem]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [IndexedItem(item_id=f"item-{k}", vector=vectors[k], title=f"Title {k}") for k in range(n)]


@pytest.fixture(params=["edge", "client"])
def index(request: pytest.FixtureRequest, tmp_path: Path):
    backend: ItemIndex = (
        EdgeItemIndex(tmp_path / "edge", DIM) if request.param == "edge" else ClientItemIndex(":memory:", DIM)
    )
    yield backend
    backend.close()


def test_upsert_then_get_round_trips(index: ItemIndex) -> None:
    items = _items(20)
    index.upsert(items)
    assert index.count() == 20
    got = index.get(["item-3", "item-7", "unknown"])
    assert set(got) == {"item-3", "item-7"}
    for item_id in got:
        original = items[int(item_id.split("-")[1])]
        np.testing.assert_allclose(got[item_id].vector, original.vector, atol=1e-5)
        assert got[item_id].title == original.title


def test_upsert_replaces_by_id(index: ItemIndex) -> None:
    items = _items(5)
    index.upsert(items)
    replacement = IndexedItem(item_id="item-2", vector=items[4].vector, title="renamed")
    index.upsert([replacement])
    assert index.count() == 5
    got = index.get(["item-2"])["item-2"]
    assert got.title == "renamed"
    np.testing.assert_allclose(got.vector, items[4].vector, atol=1e-5)


def test_search_batch_finds_true_nearest_neighbours_and_excludes(index: ItemIndex) -> None:
    items = _items(60, seed=1)
    index.upsert(items)
    matrix = np.stack([i.vector for i in items])  # (N, D)
    queries = _items(3, seed=2)
    query_matrix = np.stack([q.vector for q in queries])  # (Q, D)
    excluded = [set(), {"item-0", "item-1"}, {f"item-{k}" for k in range(30)}]
    results = index.search_batch(query_matrix, limit=5, exclude=excluded)
    assert len(results) == 3
    for row, neighbours in enumerate(results):
        ranking = [f"item-{k}" for k in np.argsort(-(matrix @ query_matrix[row]))]
        expected = [i for i in ranking if i not in excluded[row]][:5]
        assert [n.item_id for n in neighbours] == expected
        scores = [n.score for n in neighbours]
        assert scores == sorted(scores, reverse=True)


def test_empty_index_and_empty_queries(index: ItemIndex) -> None:
    assert index.count() == 0
    assert index.get(["nothing"]) == {}
    assert index.search_batch(np.ones((2, DIM), dtype=np.float32), limit=3) == [[], []]
    assert index.search_batch(np.zeros((0, DIM), dtype=np.float32), limit=3) == []


def test_wrong_dimension_is_refused_with_the_item_named(index: ItemIndex) -> None:
    with pytest.raises(ValueError, match="bad-one"):
        index.upsert([IndexedItem(item_id="bad-one", vector=np.ones(DIM + 1, dtype=np.float32), title="x")])


def test_edge_index_survives_a_restart_and_checks_the_dimension(tmp_path: Path) -> None:
    first = EdgeItemIndex(tmp_path, DIM)
    first.upsert(_items(7))
    first.close()
    reopened = EdgeItemIndex(tmp_path, DIM)
    assert reopened.count() == 7 and "item-6" in reopened.get(["item-6"])
    reopened.close()
    with pytest.raises(ValueError, match="cannot open"):
        EdgeItemIndex(tmp_path, DIM * 2)


def test_open_index_follows_the_settings(tmp_path: Path) -> None:
    edge = open_index(Settings(data_dir=tmp_path), DIM)
    assert isinstance(edge, EdgeItemIndex) and edge.path.is_relative_to(tmp_path)
    edge.close()
    client = open_index(Settings(index_mode="client", qdrant_url=":memory:"), DIM)
    assert isinstance(client, ClientItemIndex)
    client.close()
