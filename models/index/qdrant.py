"""The logic both Qdrant backends share (`EdgeItemIndex`, `ClientItemIndex`).

`QdrantIndex` implements the `ItemIndex` contract once (checks, normalisation, exclusion
filters, one vector fetch per batch of hits); each backend subclass only speaks its client's
dialect through five hooks (`_write`, `_retrieve`, `_exclusion`, `_query`, `_scroll`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import numpy as np

from streamrec.models.index.protocol import (
    Distance,
    IndexedItem,
    Neighbour,
    point_id,
    similar_by_search,
)

#: Item id -> point id conversions remembered per index (uuid5 costs a few µs; exclusion
#: lists repeat the same ids every micro-batch).
POINT_ID_CACHE_SIZE = 1 << 18


def check_distance(distance: str) -> Distance:
    """The distance if the backends support it ("cosine" or "dot"), else ValueError."""
    if distance not in ("cosine", "dot"):
        raise ValueError(f"distance must be 'cosine' or 'dot', got {distance!r}")
    return distance  # type: ignore[return-value]


def _check_items(items: Sequence[IndexedItem], dim: int, distance: str) -> None:
    """Refuse, naming the item, a vector Qdrant would reject or silently mis-rank."""
    for item in items:
        vector = np.asarray(item.vector)
        if vector.shape != (dim,):
            raise ValueError(
                f"item {item.item_id!r}: vector shape {vector.shape}, index expects ({dim},)"
            )
        if not np.all(np.isfinite(vector)):
            raise ValueError(f"item {item.item_id!r}: vector has NaN or Inf")
        if distance == "cosine" and not np.any(vector):
            raise ValueError(f"item {item.item_id!r}: zero vector has no direction (cosine)")


def _check_queries(queries: np.ndarray, dim: int, limit: int, n_exclude: int | None) -> None:
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"queries have shape {queries.shape}, index expects (Q, {dim})")
    if not np.all(np.isfinite(queries)):
        raise ValueError("queries contain NaN or Inf")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if n_exclude is not None and n_exclude != len(queries):
        raise ValueError(f"{n_exclude} exclusion sets for {len(queries)} queries")


def _unit(vector: np.ndarray) -> list[float]:
    """The vector scaled to length 1 (Qdrant's cosine does the same), as Qdrant wants it."""
    vector = np.asarray(vector, dtype=np.float32)  # (D,)
    return (vector / np.linalg.norm(vector)).tolist()


def _plain(vector: np.ndarray) -> list[float]:
    return np.asarray(vector, dtype=np.float32).tolist()


def _from_record(record: Any) -> IndexedItem:
    """A Qdrant record (payload with item_id and title, plus the vector) as an item."""
    payload = record.payload or {}
    return IndexedItem(
        item_id=str(payload["item_id"]),
        vector=np.asarray(record.vector, dtype=np.float32),  # (D,)
        title=str(payload.get("title", payload["item_id"])),
    )


class QdrantIndex:
    """The logic both backends share; each subclass only speaks its client's dialect.

    `distance` is "cosine" (text vectors; stored normalised, scores are cosines) or "dot"
    (a model's retrieval vectors, stored as they are: their length is part of the score).
    """

    dim: int
    distance: Distance
    _point_id: Callable[[str], str]

    def _init_point_ids(self) -> None:
        self._point_id = functools.lru_cache(maxsize=POINT_ID_CACHE_SIZE)(point_id)

    # --- dialect hooks -----------------------------------------------------------------
    def _write(self, points: list[tuple[str, list[float], dict[str, str]]]) -> None:
        raise NotImplementedError

    def _retrieve(self, point_ids: list[str]) -> list[Any]:
        raise NotImplementedError  # records with .id, .payload and .vector

    def _exclusion(self, point_ids: set[str]) -> Any:
        raise NotImplementedError  # a filter that drops these points

    def _query(
        self, queries: list[tuple[list[float], Any]], limit: int, with_payload: bool
    ) -> list[list[Any]]:
        raise NotImplementedError  # per query: points with .id, .score (.payload), best first

    def _scroll(self, offset: Any, limit: int) -> tuple[list[Any], Any]:
        raise NotImplementedError  # (records with payload and vector, next offset or None)

    # --- the ItemIndex contract --------------------------------------------------------
    def upsert(self, items: Sequence[IndexedItem]) -> None:
        """Insert or replace items by id; vectors are stored normalised."""
        if not items:
            return
        _check_items(items, self.dim, self.distance)
        prepare = _unit if self.distance == "cosine" else _plain
        self._write(
            [
                (
                    self._point_id(item.item_id),
                    prepare(item.vector),
                    {"item_id": item.item_id, "title": item.title},
                )
                for item in items
            ]
        )

    def get(self, item_ids: Sequence[str]) -> dict[str, IndexedItem]:
        """The known items among `item_ids`, with their vectors; unknown ids are absent."""
        if not item_ids:
            return {}
        records = self._retrieve([self._point_id(i) for i in dict.fromkeys(item_ids)])
        found = (_from_record(record) for record in records)
        return {item.item_id: item for item in found}

    def similar(
        self,
        item_ids: Sequence[str],
        limit: int,
        exclude: Sequence[Collection[str]] | None = None,
    ) -> list[list[Neighbour]]:
        """Each item's nearest other items (its stored vector as the query)."""
        return similar_by_search(self, item_ids, limit, exclude)

    def optimize(self) -> None:
        """Nothing to do here: a Qdrant server optimises on its own, local mode is exact."""

    def scan(self, batch_size: int = 1024) -> Iterator[list[IndexedItem]]:
        """Every item with its vector, `batch_size` at a time (Qdrant's scroll)."""
        offset: Any = None
        while True:
            records, offset = self._scroll(offset, batch_size)
            if records:
                yield [_from_record(record) for record in records]
            if offset is None:
                return

    def search_batch(
        self,
        queries: np.ndarray,
        limit: int,
        exclude: Sequence[Collection[str]] | None = None,
        with_items: bool = True,
    ) -> list[list[Neighbour]]:
        """Nearest items per query, best first, excluded ids filtered inside Qdrant.

        Qdrant returns ids and scores only; the vectors of the distinct hits of the whole
        batch are then fetched in one call (cheaper than a vector per hit: a user's queries
        share many neighbours), unless `with_items=False` (then the hits carry the item id
        from the payload, for a caller that keeps the vectors itself). A zero query has no
        direction and gets no neighbours.
        """
        queries = np.asarray(queries, dtype=np.float32)  # (Q, D)
        _check_queries(queries, self.dim, limit, None if exclude is None else len(exclude))
        # One filter per distinct exclusion set: a user's queries share theirs.
        filters: dict[int, Any] = {}
        requests: list[tuple[list[float], Any]] = []
        rows: list[int] = []  # the query row of each request
        for row, query in enumerate(queries):  # query (D,)
            if not np.any(query):
                continue
            banned = exclude[row] if exclude is not None else ()
            if banned and id(banned) not in filters:
                filters[id(banned)] = self._exclusion({self._point_id(i) for i in banned})
            requests.append((query.tolist(), filters[id(banned)] if banned else None))
            rows.append(row)
        hits: list[list[Any]] = [[] for _ in queries]
        answers = self._query(requests, limit, with_payload=not with_items) if requests else []
        for row, points in zip(rows, answers):
            hits[row] = points
        if not with_items:
            return [
                [Neighbour(str(point.payload["item_id"]), float(point.score)) for point in points]
                for points in hits
            ]
        wanted = sorted({str(point.id) for points in hits for point in points})
        items = (
            {str(record.id): _from_record(record) for record in self._retrieve(wanted)}
            if wanted
            else {}
        )
        return [
            [
                Neighbour(item.item_id, float(point.score), item)
                for point in points
                if (item := items.get(str(point.id))) is not None  # absent: deleted meanwhile
            ]
            for points in hits
        ]
