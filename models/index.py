"""The item index: item vectors in Qdrant, behind one small protocol with two backends.

- `EdgeItemIndex`: Qdrant Edge, the Qdrant engine in-process, on disk (the embedded default).
- `ClientItemIndex`: a Qdrant server through `qdrant-client` (`:memory:` = its local mode).

One contract test suite (tests/integration/test_index_contract.py) runs against both.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from streamrec.stream.settings import Settings

#: Qdrant point ids are UUIDs derived from item ids: stable across processes and restarts.
POINT_NAMESPACE = uuid.UUID("5f1d7c1e-9a52-4f0c-8f0e-2b8f6a1c9d33")


@functools.lru_cache(maxsize=1 << 18)
def point_id(item_id: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, item_id))


@dataclass(frozen=True)
class IndexedItem:
    """An item as the index holds it."""

    item_id: str
    vector: np.ndarray  # (D,) float32, L2-normalised
    title: str  # short label for reasons ("similar to <title>")


@dataclass(frozen=True)
class Neighbour:
    """A search hit: ids and scores only; `get` the vectors of the few you keep."""

    item_id: str
    score: float  # cosine similarity to the query


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
    ) -> list[list[Neighbour]]:
        """For each query (Q, D): up to `limit` nearest item ids, best first, none in exclude[q]."""
        ...

    def count(self) -> int: ...

    def close(self) -> None: ...


def _normalised(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _check(items: Sequence[IndexedItem], dim: int) -> None:
    for item in items:
        if item.vector.shape != (dim,):
            raise ValueError(
                f"item {item.item_id!r}: vector shape {item.vector.shape}, index expects ({dim},)"
            )
        if not np.all(np.isfinite(item.vector)):
            raise ValueError(f"item {item.item_id!r}: vector has NaN or Inf")


def _from_point(payload: dict[str, Any] | None, vector: Any) -> IndexedItem:
    payload = payload or {}
    return IndexedItem(
        item_id=str(payload["item_id"]),
        vector=np.asarray(vector, dtype=np.float32),
        title=str(payload.get("title", payload["item_id"])),
    )


class _QdrantIndex:
    """The logic both backends share; each subclass only speaks its client's dialect."""

    dim: int

    # --- dialect hooks -----------------------------------------------------------------
    def _write(self, points: list[tuple[str, list[float], dict[str, str]]]) -> None:
        raise NotImplementedError

    def _retrieve(self, point_ids: list[str]) -> list[Any]:
        raise NotImplementedError  # records with .payload and .vector

    def _exclusion(self, point_ids: set[str]) -> Any:
        raise NotImplementedError  # a filter that drops these points

    def _query(self, queries: list[tuple[list[float], Any]], limit: int) -> list[list[Any]]:
        raise NotImplementedError  # per query: points with .payload and .score, best first

    # --- the ItemIndex contract --------------------------------------------------------
    def upsert(self, items: Sequence[IndexedItem]) -> None:
        if not items:
            return
        _check(items, self.dim)
        self._write(
            [
                (
                    point_id(item.item_id),
                    _normalised(item.vector).tolist(),
                    {"item_id": item.item_id, "title": item.title},
                )
                for item in items
            ]
        )

    def get(self, item_ids: Sequence[str]) -> dict[str, IndexedItem]:
        if not item_ids:
            return {}
        records = self._retrieve([point_id(i) for i in dict.fromkeys(item_ids)])
        found = (_from_point(r.payload, r.vector) for r in records)
        return {item.item_id: item for item in found}

    def search_batch(
        self,
        queries: np.ndarray,
        limit: int,
        exclude: Sequence[Collection[str]] | None = None,
    ) -> list[list[Neighbour]]:
        if len(queries) == 0:
            return []
        filters: dict[int, Any] = {}  # one filter per distinct exclusion set (a user's queries share one)
        requests = []
        for row, query in enumerate(np.asarray(queries, dtype=np.float32)):  # query (D,)
            banned = exclude[row] if exclude else ()
            if banned and id(banned) not in filters:
                filters[id(banned)] = self._exclusion({point_id(i) for i in banned})
            requests.append((query.tolist(), filters[id(banned)] if banned else None))
        return [
            [Neighbour(str(p.payload["item_id"]), float(p.score)) for p in points]
            for points in self._query(requests, limit)
        ]


class EdgeItemIndex(_QdrantIndex):
    """Qdrant Edge shard on disk; reopening the same path keeps the data."""

    def __init__(self, path: Path, dim: int, name: str = "items") -> None:
        import qdrant_edge as edge

        self._edge = edge
        self.dim = dim
        self.path = Path(path) / name
        config = edge.EdgeConfig(vectors=edge.EdgeVectorParams(size=dim, distance=edge.Distance.Cosine))
        if self.path.exists() and any(self.path.iterdir()):
            try:  # the config is checked against what the shard on disk was made with
                self._shard = edge.EdgeShard.load(str(self.path), config)
            except Exception as exc:
                raise ValueError(f"cannot open the index at {self.path} for dim {dim}: {exc}") from exc
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self._shard = edge.EdgeShard.create(str(self.path), config)

    def _write(self, points: list[tuple[str, list[float], dict[str, str]]]) -> None:
        edge = self._edge
        batch = [edge.Point(id=pid, vector=vector, payload=payload) for pid, vector, payload in points]
        self._shard.update(edge.UpdateOperation.upsert_points(batch))

    def _retrieve(self, point_ids: list[str]) -> list[Any]:
        return self._shard.retrieve(point_ids, with_payload=True, with_vector=True)

    def _exclusion(self, point_ids: set[str]) -> Any:
        return self._edge.Filter(must_not=[self._edge.HasIdCondition(point_ids)])

    def _query(self, queries: list[tuple[list[float], Any]], limit: int) -> list[list[Any]]:
        edge = self._edge
        requests = [
            edge.QueryRequest(
                limit=limit,
                query=edge.Query.Nearest(vector),
                with_vector=False,
                with_payload=["item_id"],
                filter=condition,
            )
            for vector, condition in queries
        ]
        return self._shard.query_batch(edge.QueryBatchRequest(requests))

    def count(self) -> int:
        return int(self._shard.count(self._edge.CountRequest(exact=True)))

    def close(self) -> None:
        self._shard.flush()
        self._shard.close()


class ClientItemIndex(_QdrantIndex):
    """A Qdrant collection through `qdrant-client`: a server URL, `:memory:`, or `path:DIR`."""

    def __init__(self, url: str, dim: int, collection: str = "items", api_key: str | None = None) -> None:
        from qdrant_client import QdrantClient, models

        self._models = models
        self.dim = dim
        self.collection = collection
        if url == ":memory:":
            self._client = QdrantClient(location=":memory:")
        elif url.startswith("path:"):
            self._client = QdrantClient(path=url.removeprefix("path:"))
        else:
            self._client = QdrantClient(url=url, api_key=api_key)
        if self._client.collection_exists(collection):
            params = self._client.get_collection(collection).config.params.vectors
            size = getattr(params, "size", None)
            if size is not None and size != dim:
                raise ValueError(f"collection {collection!r} has vectors of size {size}, not {dim}")
        else:
            self._client.create_collection(
                collection,
                vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
            )

    def _write(self, points: list[tuple[str, list[float], dict[str, str]]]) -> None:
        batch = [
            self._models.PointStruct(id=pid, vector=vector, payload=payload)
            for pid, vector, payload in points
        ]
        self._client.upsert(self.collection, points=batch, wait=True)

    def _retrieve(self, point_ids: list[str]) -> list[Any]:
        return self._client.retrieve(
            self.collection, ids=point_ids, with_payload=True, with_vectors=True
        )

    def _exclusion(self, point_ids: set[str]) -> Any:
        models = self._models
        return models.Filter(must_not=[models.HasIdCondition(has_id=sorted(point_ids))])

    def _query(self, queries: list[tuple[list[float], Any]], limit: int) -> list[list[Any]]:
        requests = [
            self._models.QueryRequest(
                query=vector, limit=limit, filter=condition, with_vector=False, with_payload=["item_id"]
            )
            for vector, condition in queries
        ]
        responses = self._client.query_batch_points(self.collection, requests=requests)
        return [response.points for response in responses]

    def count(self) -> int:
        return int(self._client.count(self.collection, exact=True).count)

    def close(self) -> None:
        self._client.close()


def open_index(settings: Settings, dim: int) -> ItemIndex:
    """The backend the settings ask for: Qdrant Edge (default) or a Qdrant server."""
    if settings.index_mode == "client":
        assert settings.qdrant_url is not None  # checked by Settings
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return ClientItemIndex(settings.qdrant_url, dim, settings.collection, api_key)
    return EdgeItemIndex(settings.resolved_index_path, dim, settings.collection)
