"""What the core needs of a vector index: the `ItemIndex` protocol and the types it speaks.

Two Qdrant backends implement it (`edge.EdgeItemIndex`: Qdrant Edge in-process, the embedded
default; `server.ClientItemIndex`: a Qdrant server through `qdrant-client`), `factory.open_index`
picks one from the settings, and `cache.CachedItemIndex` sits in front of either. One contract
test suite (tests/integration/test_index_contract.py) runs against both backends.

A server that cannot be reached (connection refused, timeout, a 5xx or 429 answer) raises
`IndexUnavailableError`, whatever the call: callers serve around it (the recommender falls
back to trending lists) and try again later. Any other error is a bug or a bad request and
is raised as it is.

Qdrant point ids are UUIDs derived from item ids (uuid5), so every process maps an item to
the same point; the item id and title travel in the payload.

>>> point_id("item-1") == point_id("item-1") != point_id("item-2")
True
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

#: Qdrant point ids are UUIDs derived from item ids: stable across processes and restarts.
POINT_NAMESPACE = uuid.UUID("5f1d7c1e-9a52-4f0c-8f0e-2b8f6a1c9d33")
Distance = Literal["cosine", "dot"]


class IndexUnavailableError(RuntimeError):
    """The index server could not be reached or did not answer in time: a transient failure
    that callers may serve around and retry, not a bad request."""


def point_id(item_id: str) -> str:
    """The Qdrant point id of an item: a name-based UUID (uuid5), the same in every process."""
    return str(uuid.uuid5(POINT_NAMESPACE, item_id))


@dataclass(frozen=True)
class IndexedItem:
    """An item as the index holds it.

    >>> item = IndexedItem("tea", np.array([1.0, 0.0], dtype=np.float32), "green tea")
    >>> item.item_id, item.vector.shape
    ('tea', (2,))
    """

    item_id: str
    vector: np.ndarray  # (D,) float32, L2-normalised
    title: str  # short label for reasons ("similar to <title>")


@dataclass(frozen=True)
class Neighbour:
    """A search hit: the item with its vector, and its similarity to the query.

    `item_id` is kept as a field of its own so that hits can be built from ids alone (test
    stand-ins do); the Qdrant backends always fill `item`.
    """

    item_id: str
    score: float  # cosine similarity (dot product for a "dot" index) to the query
    item: IndexedItem | None = None  # the hit, vector included


class ItemIndex(Protocol):
    """What the core needs of a vector index."""

    dim: int

    def upsert(self, items: Sequence[IndexedItem]) -> None:
        """Insert or replace items by id."""
        ...

    def get(self, item_ids: Sequence[str]) -> dict[str, IndexedItem]:
        """The items among `item_ids` that the index knows (unknown ids are absent)."""
        ...

    def search_batch(
        self,
        queries: np.ndarray,
        limit: int,
        exclude: Sequence[Collection[str]] | None = None,
        with_items: bool = True,
    ) -> list[list[Neighbour]]:
        """For each query (Q, D): up to `limit` nearest items, best first, none in exclude[q]
        (`with_items=False`: ids and scores only, `Neighbour.item` left None)."""
        ...

    def similar(
        self,
        item_ids: Sequence[str],
        limit: int,
        exclude: Sequence[Collection[str]] | None = None,
    ) -> list[list[Neighbour]]:
        """Per item: up to `limit` nearest other items, best first, none in exclude[row];
        unknown items get none."""
        ...

    def scan(self, batch_size: int = 1024) -> Iterator[list[IndexedItem]]:
        """Every item, in batches (order unspecified)."""
        ...

    def count(self) -> int: ...

    def optimize(self) -> None:
        """Build search structures for what was written (slow; call it off the event loop)."""
        ...

    def close(self) -> None: ...

    def drop(self) -> None:
        """Close and delete the collection with all its data (an old version's vectors)."""
        ...


def similar_by_search(
    index: ItemIndex,
    item_ids: Sequence[str],
    limit: int,
    exclude: Sequence[Collection[str]] | None = None,
) -> list[list[Neighbour]]:
    """`ItemIndex.similar` from `get` and `search_batch`: each item's vector as the query,
    the item itself excluded."""
    if exclude is not None and len(exclude) != len(item_ids):
        raise ValueError(f"{len(exclude)} exclusion sets for {len(item_ids)} items")
    known = index.get(list(item_ids))
    rows = [row for row, item_id in enumerate(item_ids) if item_id in known]
    answers: list[list[Neighbour]] = [[] for _ in item_ids]
    if rows:
        queries = np.stack([known[item_ids[row]].vector for row in rows])  # (Q, D)
        banned = [set(exclude[row] if exclude else ()) | {item_ids[row]} for row in rows]
        for row, hits in zip(rows, index.search_batch(queries, limit, banned)):
            answers[row] = hits
    return answers
