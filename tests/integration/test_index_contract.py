"""One contract, two real Qdrant backends: Qdrant Edge on disk and qdrant-client's local mode,
and the two layers in front of them: `CachedItemIndex` and the in-memory `ExactItemIndex`
(also once it has outgrown memory and passes reads on).

Search results are checked against an exact numpy cosine ranking (the catalogues here are far
below the size at which Qdrant switches from exact search to HNSW).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from streamrec.models.index.cache import CachedItemIndex
from streamrec.models.index.edge import EdgeItemIndex
from streamrec.models.index.exact import ExactItemIndex
from streamrec.models.index.factory import open_index
from streamrec.models.index.protocol import IndexedItem, ItemIndex, point_id
from streamrec.models.index.server import ClientItemIndex
from streamrec.stream.settings import Settings

pytestmark = pytest.mark.integration

DIM = 16
ATOL = 1e-5  # Qdrant stores float32 and returns the stored (normalised) vector


def _unit_rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)  # (N, D)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _items(n: int, seed: int = 0) -> list[IndexedItem]:
    vectors = _unit_rows(n, seed)  # (N, D)
    return [
        IndexedItem(item_id=f"item-{k}", vector=vectors[k], title=f"Title {k}") for k in range(n)
    ]


def _brute_force(
    items: list[IndexedItem], query: np.ndarray, banned: set[str], limit: int
) -> list[str]:
    """The exact answer: ids by cosine to `query` (D,), best first, minus `banned`."""
    matrix = np.stack([item.vector for item in items])  # (N, D)
    ranking = [items[k].item_id for k in np.argsort(-(matrix @ query), kind="stable")]
    return [item_id for item_id in ranking if item_id not in banned][:limit]


@pytest.fixture(params=["edge", "client", "cached-edge", "exact-edge", "cached-exact", "exact-outgrown"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ItemIndex]:
    backend: ItemIndex
    if request.param == "edge":
        backend = EdgeItemIndex(tmp_path / "edge", DIM)
    elif request.param == "client":
        backend = ClientItemIndex(":memory:", DIM)
    elif request.param == "exact-edge":
        backend = ExactItemIndex(EdgeItemIndex(tmp_path / "edge", DIM), max_items=1000)
    elif request.param == "cached-exact":  # the worker's stack: kept lists filled from memory
        backend = CachedItemIndex(ExactItemIndex(EdgeItemIndex(tmp_path / "edge", DIM), max_items=1000),
                                  items=64, neighbour_lists=16, depth=6)
    elif request.param == "exact-outgrown":  # lets memory go at the 21st item, mid-test
        backend = CachedItemIndex(ExactItemIndex(EdgeItemIndex(tmp_path / "edge", DIM), max_items=20),
                                  items=64, neighbour_lists=16, depth=6)
    else:  # tiny caches: eviction and the filtered fallback are exercised too
        backend = CachedItemIndex(EdgeItemIndex(tmp_path / "edge", DIM), items=64, neighbour_lists=16, depth=6)
    yield backend
    backend.close()


def test_similar_matches_exact_search_through_upserts_and_exclusions(index: ItemIndex) -> None:
    items = _items(40, seed=5)
    index.upsert(items[:30])
    index.optimize()
    rng = np.random.default_rng(1)
    for round_ in range(3):
        present = items[: 30 + 5 * round_]
        asked = [f"item-{k}" for k in rng.choice(len(present), size=12)] + ["unknown"]
        banned = [set(f"item-{k}" for k in rng.choice(len(present), size=4)) for _ in asked]
        for exclude in (None, banned):
            answers = index.similar(asked, limit=4, exclude=exclude)
            for row, (item_id, hits) in enumerate(zip(asked, answers)):
                if item_id == "unknown":
                    assert hits == []
                    continue
                query = present[int(item_id.split("-")[1])].vector
                skip = {item_id} | (exclude[row] if exclude else set())
                assert [n.item_id for n in hits] == _brute_force(present, query, skip, 4)
            if isinstance(index, CachedItemIndex):  # the candidate sources' ids-only answers
                assert index.similar_ids(asked, limit=4, exclude=exclude) == [
                    [n.item_id for n in hits] for hits in answers
                ]
        # new items enter some neighbour lists; one item moves (a changed vector)
        index.upsert(items[30 + 5 * round_ : 35 + 5 * round_])
        moved = items[round_]
        items[round_] = IndexedItem(moved.item_id, _unit_rows(1, seed=100 + round_)[0], moved.title)
        index.upsert([items[round_]])
    if isinstance(index, CachedItemIndex):  # both paths taken: kept lists and the fallback
        assert index.hits > 0 and index.misses > 0


def test_upsert_then_get_round_trips(index: ItemIndex) -> None:
    items = _items(20)
    index.upsert(items)
    assert index.count() == 20
    got = index.get(["item-3", "item-7", "unknown", "item-3"])
    assert set(got) == {"item-3", "item-7"}
    for item_id, item in got.items():
        original = items[int(item_id.split("-")[1])]
        assert item.item_id == item_id and item.title == original.title
        assert item.vector.dtype == np.float32
        np.testing.assert_allclose(item.vector, original.vector, atol=ATOL)
    assert index.get([]) == {}


def test_upsert_normalises_vectors(index: ItemIndex) -> None:
    item = _items(1)[0]
    index.upsert([IndexedItem(item.item_id, item.vector * 3.0, item.title)])
    np.testing.assert_allclose(
        index.get([item.item_id])[item.item_id].vector, item.vector, atol=ATOL
    )


def test_upsert_replaces_by_id(index: ItemIndex) -> None:
    items = _items(5)
    index.upsert(items)
    replacement = IndexedItem(item_id="item-2", vector=items[4].vector, title="renamed")
    index.upsert([replacement])
    assert index.count() == 5
    got = index.get(["item-2"])["item-2"]
    assert got.title == "renamed"
    np.testing.assert_allclose(got.vector, items[4].vector, atol=ATOL)


def test_search_batch_finds_the_true_nearest_neighbours(index: ItemIndex) -> None:
    items = _items(60, seed=1)
    index.upsert(items)
    queries = _unit_rows(4, seed=2)  # (Q, D)
    results = index.search_batch(queries, limit=5)
    assert len(results) == len(queries)
    by_id = {item.item_id: item for item in items}
    for query, neighbours in zip(queries, results):
        assert [n.item_id for n in neighbours] == _brute_force(items, query, set(), 5)
        for n in neighbours:  # hits carry the stored item, vector included, and its cosine
            assert n.item is not None and n.item.item_id == n.item_id
            assert n.item.title == by_id[n.item_id].title
            np.testing.assert_allclose(n.item.vector, by_id[n.item_id].vector, atol=ATOL)
            assert n.score == pytest.approx(float(by_id[n.item_id].vector @ query), abs=ATOL)


def test_scan_returns_every_item_once(index: ItemIndex) -> None:
    items = _items(25, seed=5)
    index.upsert(items)
    batches = list(index.scan(batch_size=7))
    assert all(1 <= len(batch) <= 7 for batch in batches)
    seen = [item.item_id for batch in batches for item in batch]
    assert sorted(seen) == sorted(item.item_id for item in items)
    by_id = {item.item_id: item for item in items}
    for batch in batches:
        for item in batch:
            np.testing.assert_allclose(item.vector, by_id[item.item_id].vector, atol=ATOL)


def test_scan_of_an_empty_index_yields_nothing(index: ItemIndex) -> None:
    assert list(index.scan()) == []


@pytest.mark.parametrize("backend", ["edge", "client", "exact"])
def test_dot_index_keeps_lengths_and_ranks_by_dot_product(backend: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    vectors = (rng.normal(size=(40, DIM)) * rng.uniform(0.1, 3.0, size=(40, 1))).astype(np.float32)
    items = [IndexedItem(f"i{k}", vectors[k], f"T{k}") for k in range(40)]
    index: ItemIndex = (
        EdgeItemIndex(tmp_path / "dot", DIM, distance="dot")
        if backend == "edge"
        else ClientItemIndex(":memory:", DIM, distance="dot")
    )
    if backend == "exact":
        index = ExactItemIndex(index, max_items=100)
    try:
        index.upsert(items)
        np.testing.assert_allclose(index.get(["i3"])["i3"].vector, vectors[3], rtol=1e-5)
        query = rng.normal(size=(1, DIM)).astype(np.float32)  # (1, D)
        [hits] = index.search_batch(query, limit=5)
        expected = [f"i{k}" for k in np.argsort(-(vectors @ query[0]))[:5]]
        assert [hit.item_id for hit in hits] == expected
        assert hits[0].score == pytest.approx(float(np.max(vectors @ query[0])), rel=1e-4)
    finally:
        index.close()


def test_exclusion_is_per_query(index: ItemIndex) -> None:
    items = _items(60, seed=3)
    index.upsert(items)
    queries = _unit_rows(3, seed=4)  # (Q, D)
    nearest = _brute_force(items, queries[1], set(), 2)
    excluded = [set(), set(nearest) | {"not-in-the-index"}, {f"item-{k}" for k in range(50)}]
    results = index.search_batch(queries, limit=5, exclude=excluded)
    for query, banned, neighbours in zip(queries, excluded, results):
        ids = [n.item_id for n in neighbours]
        assert not banned & set(ids)
        assert ids == _brute_force(items, query, banned, 5)
    assert results[0][0].item_id == _brute_force(items, queries[0], set(), 1)[0]


def test_limit_is_respected(index: ItemIndex) -> None:
    items = _items(8, seed=5)
    index.upsert(items)
    queries = _unit_rows(2, seed=6)  # (Q, D)
    assert [len(hits) for hits in index.search_batch(queries, limit=3)] == [3, 3]
    assert [len(hits) for hits in index.search_batch(queries, limit=50)] == [8, 8]
    everything_but_two = [{f"item-{k}" for k in range(6)}, set()]
    assert [
        len(hits) for hits in index.search_batch(queries, limit=5, exclude=everything_but_two)
    ] == [2, 5]


def test_empty_index_and_empty_queries(index: ItemIndex) -> None:
    assert index.count() == 0
    assert index.get(["nothing"]) == {}
    assert index.search_batch(np.ones((2, DIM), dtype=np.float32), limit=3) == [[], []]
    assert index.search_batch(np.zeros((0, DIM), dtype=np.float32), limit=3) == []


def test_zero_query_has_no_neighbours(index: ItemIndex) -> None:
    index.upsert(_items(4))
    queries = np.stack([np.zeros(DIM, dtype=np.float32), _unit_rows(1, seed=7)[0]])  # (2, D)
    assert [len(hits) for hits in index.search_batch(queries, limit=2)] == [0, 2]


def test_bad_input_is_refused_with_a_reason(index: ItemIndex) -> None:
    with pytest.raises(ValueError, match="bad-one"):
        index.upsert(
            [IndexedItem(item_id="bad-one", vector=np.ones(DIM + 1, dtype=np.float32), title="x")]
        )
    with pytest.raises(ValueError, match="nan-one"):
        index.upsert(
            [
                IndexedItem(
                    item_id="nan-one", vector=np.full(DIM, np.nan, dtype=np.float32), title="x"
                )
            ]
        )
    with pytest.raises(ValueError, match="zero-one"):
        index.upsert(
            [IndexedItem(item_id="zero-one", vector=np.zeros(DIM, dtype=np.float32), title="x")]
        )
    assert index.count() == 0
    with pytest.raises(ValueError, match="shape"):
        index.search_batch(np.ones((2, DIM + 1), dtype=np.float32), limit=3)
    with pytest.raises(ValueError, match="NaN"):
        index.search_batch(np.full((1, DIM), np.nan, dtype=np.float32), limit=3)
    with pytest.raises(ValueError, match="limit"):
        index.search_batch(np.ones((1, DIM), dtype=np.float32), limit=0)
    with pytest.raises(ValueError, match="exclusion"):
        index.search_batch(np.ones((2, DIM), dtype=np.float32), limit=3, exclude=[set()])


def test_edge_index_survives_a_restart_and_checks_the_dimension(tmp_path: Path) -> None:
    items = _items(7)
    first = EdgeItemIndex(tmp_path, DIM)
    first.upsert(items)
    first.close()
    reopened = EdgeItemIndex(tmp_path, DIM)
    assert reopened.count() == 7
    np.testing.assert_allclose(
        reopened.get(["item-6"])["item-6"].vector, items[6].vector, atol=ATOL
    )
    assert reopened.search_batch(items[6].vector[None, :], limit=1)[0][0].item_id == "item-6"
    reopened.close()
    with pytest.raises(ValueError, match="cannot open"):
        EdgeItemIndex(tmp_path, DIM * 2)


def test_client_index_refuses_a_collection_of_another_dimension(tmp_path: Path) -> None:
    url = f"path:{tmp_path / 'qdrant'}"
    first = ClientItemIndex(url, DIM, collection="things")
    first.upsert(_items(3))
    first.close()
    reopened = ClientItemIndex(url, DIM, collection="things")
    assert reopened.count() == 3
    reopened.close()
    with pytest.raises(ValueError, match="things"):
        ClientItemIndex(url, DIM * 2, collection="things")


def test_point_ids_are_the_same_in_another_process() -> None:
    code = "from streamrec.models.index.protocol import point_id; print(point_id('item-1'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == point_id("item-1") != point_id("item-2")


def test_open_index_follows_the_settings(tmp_path: Path) -> None:
    edge = open_index(Settings(data_dir=tmp_path, collection="shop"), DIM)
    assert isinstance(edge, EdgeItemIndex) and edge.path == tmp_path / "index" / "shop"
    edge.close()
    client = open_index(Settings(index_mode="client", qdrant_url=":memory:"), DIM)
    assert isinstance(client, ClientItemIndex) and client.dim == DIM
    client.close()


def test_exact_index_reads_back_what_the_backend_holds_and_lets_memory_go_past_its_limit(tmp_path: Path) -> None:
    items = _items(30, seed=11)
    edge = EdgeItemIndex(tmp_path / "edge", DIM)
    edge.upsert(items[:25])
    edge.close()
    reopened = ExactItemIndex(EdgeItemIndex(tmp_path / "edge", DIM), max_items=28)
    try:
        assert reopened.in_memory and reopened.count() == 25  # a restart reads the shard back
        query = _unit_rows(1, seed=12)  # (1, D)
        [hits] = reopened.search_batch(query, limit=5)
        assert [n.item_id for n in hits] == _brute_force(items[:25], query[0], set(), 5)
        reopened.upsert(items[25:])  # 30 > 28: served by the backend from now on, nothing lost
        assert not reopened.in_memory and reopened.count() == 30
        [hits] = reopened.search_batch(query, limit=5)
        assert [n.item_id for n in hits] == _brute_force(items, query[0], set(), 5)
    finally:
        reopened.close()
    too_big = ExactItemIndex(EdgeItemIndex(tmp_path / "edge", DIM), max_items=10)
    try:
        assert not too_big.in_memory and too_big.count() == 30
    finally:
        too_big.close()


def test_exact_neighbour_lists_are_search_batch_as_arrays(tmp_path: Path) -> None:
    items = _items(40, seed=5)
    index = ExactItemIndex(EdgeItemIndex(tmp_path / "edge", DIM), max_items=100)
    try:
        index.upsert(items)
        queries = np.concatenate([_unit_rows(3, seed=6) * 2.0, np.zeros((1, DIM), dtype=np.float32)])  # (4, D)
        lists = index.neighbour_lists(queries, limit=7)
        hits = index.search_batch(queries, limit=7, with_items=False)
        assert [ids for ids, _ in lists] == [tuple(n.item_id for n in row) for row in hits]
        for (_, scores), row in zip(lists, hits):
            np.testing.assert_allclose(scores, [n.score for n in row], atol=ATOL)
        assert lists[0][0] == tuple(_brute_force(items, queries[0] / 2.0, set(), 7))
        assert lists[3] == ((), lists[3][1]) and len(lists[3][1]) == 0  # a zero query finds nothing
    finally:
        index.close()
