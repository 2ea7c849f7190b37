"""The item index: item vectors in Qdrant, behind one small protocol with two backends.

- `EdgeItemIndex`: Qdrant Edge, the Qdrant engine in-process, on disk (the embedded default).
- `ClientItemIndex`: a Qdrant server through `qdrant-client` (`:memory:` = its local mode).

A server that cannot be reached (connection refused, timeout, a 5xx or 429 answer) raises
`IndexUnavailableError`, whatever the call: callers serve around it (the recommender falls
back to trending lists) and try again later. Any other error is a bug or a bad request and
is raised as it is.

One contract test suite (tests/integration/test_index_contract.py) runs against both.
Qdrant point ids are UUIDs derived from item ids (uuid5), so every process maps an item to
the same point; the item id and title travel in the payload.

>>> index = ClientItemIndex(":memory:", dim=2)
>>> index.upsert([IndexedItem("tea", np.array([1.0, 0.0], dtype=np.float32), "green tea"),
...               IndexedItem("cake", np.array([0.0, 1.0], dtype=np.float32), "cake")])
>>> [hit] = index.search_batch(np.array([[0.9, 0.1]], dtype=np.float32), limit=1)
>>> [(n.item_id, n.item.title, round(n.score, 2)) for n in hit]
[('tea', 'green tea', 0.99)]
>>> index.close()
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)

#: Qdrant point ids are UUIDs derived from item ids: stable across processes and restarts.
POINT_NAMESPACE = uuid.UUID("5f1d7c1e-9a52-4f0c-8f0e-2b8f6a1c9d33")
#: Item id -> point id conversions remembered per index (uuid5 costs a few µs; exclusion
#: lists repeat the same ids every micro-batch).
POINT_ID_CACHE_SIZE = 1 << 18
#: Qdrant Edge builds an HNSW graph (on `optimize`) for a segment past this many KB of vectors
#: (~650 text vectors); Qdrant's own default (10 MB) leaves small catalogues on a plain scan.
EDGE_INDEXING_THRESHOLD_KB = 1_000
Distance = Literal["cosine", "dot"]
#: `ClientItemIndex(url)` with this prefix opens qdrant-client's on-disk local mode.
LOCAL_PATH_PREFIX = "path:"


class IndexUnavailableError(RuntimeError):
    """The index server could not be reached or did not answer in time: a transient failure
    that callers may serve around and retry, not a bad request."""


def point_id(item_id: str) -> str:
    """The Qdrant point id of an item: a name-based UUID (uuid5), the same in every process."""
    return str(uuid.uuid5(POINT_NAMESPACE, item_id))


@dataclass(frozen=True)
class IndexedItem:
    """An item as the index holds it."""

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


class _QdrantIndex:
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


class EdgeItemIndex(_QdrantIndex):
    """A Qdrant Edge shard on disk at `path/name`; reopening the same path keeps the data.

    One open instance per shard: Edge locks the shard's write-ahead log.
    """

    def __init__(
        self,
        path: Path,
        dim: int,
        name: str = "items",
        distance: Distance = "cosine",
        hnsw_ef: int | None = None,
    ) -> None:
        import qdrant_edge as edge

        self._edge = edge
        self.dim = dim
        self.distance = _check_distance(distance)
        self.path = Path(path) / name
        self._init_point_ids()
        self._search = edge.SearchParams(hnsw_ef=hnsw_ef) if hnsw_ef else None
        metric = edge.Distance.Cosine if distance == "cosine" else edge.Distance.Dot
        config = edge.EdgeConfig(
            vectors=edge.EdgeVectorParams(size=dim, distance=metric),
            # HNSW graphs for segments past this size; below it a plain scan (the optimizer
            # is not part of the shard's identity: shards made without it load with it)
            optimizers=edge.EdgeOptimizersConfig(indexing_threshold=EDGE_INDEXING_THRESHOLD_KB),
        )
        if self.path.exists() and any(self.path.iterdir()):
            try:  # Edge checks the config against what the shard on disk was made with
                self._shard = edge.EdgeShard.load(str(self.path), config)
            except Exception as exc:  # Edge raises bare Exceptions; tell the two causes apart
                reason = (
                    f"cannot open the Qdrant Edge shard at {self.path} as a {dim}-d index: {exc}"
                )
                if "ncompatible" in str(exc):
                    raise ValueError(reason) from exc
                raise RuntimeError(reason + " (is it open elsewhere?)") from exc
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self._shard = edge.EdgeShard.create(str(self.path), config)

    def _write(self, points: list[tuple[str, list[float], dict[str, str]]]) -> None:
        edge = self._edge
        batch = [
            edge.Point(id=pid, vector=vector, payload=payload) for pid, vector, payload in points
        ]
        self._shard.update(edge.UpdateOperation.upsert_points(batch))

    def _retrieve(self, point_ids: list[str]) -> list[Any]:
        return self._shard.retrieve(point_ids, with_payload=True, with_vector=True)

    def _exclusion(self, point_ids: set[str]) -> Any:
        return self._edge.Filter(must_not=[self._edge.HasIdCondition(point_ids)])

    def _query(
        self, queries: list[tuple[list[float], Any]], limit: int, with_payload: bool
    ) -> list[list[Any]]:
        edge = self._edge
        requests = [
            edge.QueryRequest(
                limit=limit,
                query=edge.Query.Nearest(vector),
                with_vector=False,
                with_payload=with_payload,
                filter=condition,
                params=self._search,
            )
            for vector, condition in queries
        ]
        return self._shard.query_batch(edge.QueryBatchRequest(requests))

    def optimize(self) -> None:
        """Index what was written since the last call into an HNSW graph (without it, every
        query scans the shard: 0.8 ms instead of 0.1-0.2 ms at 10k items). Cheap when
        little is new; writes wait while it runs, reads do not."""
        self._shard.optimize()

    def _scroll(self, offset: Any, limit: int) -> tuple[list[Any], Any]:
        request = self._edge.ScrollRequest(
            offset=offset, limit=limit, with_payload=True, with_vector=True
        )
        records, next_offset = self._shard.scroll(request)
        return records, next_offset

    def count(self) -> int:
        return int(self._shard.count(self._edge.CountRequest(exact=True)))

    def close(self) -> None:
        """Flush to disk and release the shard (and its lock)."""
        self._shard.flush()
        self._shard.close()

    def drop(self) -> None:
        self._shard.close()
        shutil.rmtree(self.path, ignore_errors=True)


class ClientItemIndex(_QdrantIndex):
    """A Qdrant collection through `qdrant-client`: a server URL, `:memory:`, or `path:DIR`.

    The collection is created (cosine) when absent; one with another vector size is refused.
    A server that does not answer at start does not stop the index from opening: the
    collection is checked on the first call the server answers (`IndexUnavailableError`
    until then). `timeout_s`: how long one request may take (whole seconds; qdrant-client's
    default, 5 s, when None).
    """

    def __init__(
        self,
        url: str,
        dim: int,
        collection: str = "items",
        api_key: str | None = None,
        distance: Distance = "cosine",
        hnsw_ef: int | None = None,
        timeout_s: float | None = None,
    ) -> None:
        from qdrant_client import QdrantClient, models

        self._models = models
        local = url == ":memory:" or url.startswith(LOCAL_PATH_PREFIX)  # exact search: no HNSW
        self._search = models.SearchParams(hnsw_ef=hnsw_ef) if hnsw_ef and not local else None
        self.dim = dim
        self.distance = _check_distance(distance)
        self._metric = models.Distance.COSINE if distance == "cosine" else models.Distance.DOT
        self.collection = collection
        self.where = "local mode" if local else url  # for messages (never the API key)
        self._init_point_ids()
        if url == ":memory:":
            self._client = QdrantClient(location=":memory:")
        elif url.startswith(LOCAL_PATH_PREFIX):
            self._client = QdrantClient(path=url.removeprefix(LOCAL_PATH_PREFIX))
        else:
            timeout = None if timeout_s is None else max(1, round(timeout_s))  # whole seconds
            self._client = QdrantClient(url=url, api_key=api_key, timeout=timeout)
        self._ready = False  # the collection was checked (or made)
        try:
            self._ensure_collection()
        except IndexUnavailableError as exc:  # start anyway: checked on the first call it answers
            log.warning("%s; collection %r is checked once the server answers", exc, collection)

    def _ensure_collection(self) -> None:
        """Check the collection's vectors (or create it) once, on the first call that can."""
        if self._ready:
            return
        models, collection, metric = self._models, self.collection, self._metric
        with self._server_call("checking the collection"):
            exists = self._client.collection_exists(collection)
            params = self._client.get_collection(collection).config.params.vectors if exists else None
            if not exists:
                self._client.create_collection(
                    collection, vectors_config=models.VectorParams(size=self.dim, distance=metric)
                )
        if exists:
            size = getattr(params, "size", None)  # None: named vectors, which we do not use
            if size != self.dim or getattr(params, "distance", metric) != metric:
                self._client.close()
                raise ValueError(
                    f"Qdrant collection {collection!r} holds vectors {params!r}, "
                    f"this index needs one unnamed {self.distance} vector of size {self.dim}"
                )
        self._ready = True

    @contextlib.contextmanager
    def _server_call(self, what: str) -> Iterator[None]:
        """Turn "the server is not there" errors into `IndexUnavailableError`; others pass."""
        try:
            yield
        except Exception as exc:
            if not _is_unavailable(exc):
                raise
            raise IndexUnavailableError(
                f"Qdrant at {self.where} is unavailable ({what}): {_describe(exc)}"
            ) from exc

    def _write(self, points: list[tuple[str, list[float], dict[str, str]]]) -> None:
        batch = [
            self._models.PointStruct(id=pid, vector=vector, payload=payload)
            for pid, vector, payload in points
        ]
        self._ensure_collection()
        with self._server_call("upsert"):
            self._client.upsert(self.collection, points=batch, wait=True)

    def _retrieve(self, point_ids: list[str]) -> list[Any]:
        self._ensure_collection()
        with self._server_call("retrieve"):
            return self._client.retrieve(
                self.collection, ids=point_ids, with_payload=True, with_vectors=True
            )

    def _exclusion(self, point_ids: set[str]) -> Any:
        models = self._models
        return models.Filter(must_not=[models.HasIdCondition(has_id=sorted(point_ids))])

    def _query(
        self, queries: list[tuple[list[float], Any]], limit: int, with_payload: bool
    ) -> list[list[Any]]:
        requests = [
            self._models.QueryRequest(
                query=vector,
                limit=limit,
                filter=condition,
                with_vector=False,
                with_payload=with_payload,
                params=self._search,
            )
            for vector, condition in queries
        ]
        self._ensure_collection()
        with self._server_call("query"):
            responses = self._client.query_batch_points(self.collection, requests=requests)
        return [response.points for response in responses]

    def _scroll(self, offset: Any, limit: int) -> tuple[list[Any], Any]:
        self._ensure_collection()
        with self._server_call("scroll"):
            return self._client.scroll(
                self.collection, limit=limit, offset=offset, with_payload=True, with_vectors=True
            )

    def count(self) -> int:
        self._ensure_collection()
        with self._server_call("count"):
            return int(self._client.count(self.collection, exact=True).count)

    def close(self) -> None:
        self._client.close()

    def drop(self) -> None:
        with self._server_call("delete collection"):
            self._client.delete_collection(self.collection)
        self._client.close()


def _is_unavailable(exc: BaseException) -> bool:
    """Whether a qdrant-client error means "the server is not there (now)".

    qdrant-client wraps transport errors (refused, reset, timed out) in
    `ResponseHandlingException` (which also wraps unparsable answers: not ours to retry) and
    non-2xx answers in `UnexpectedResponse`.
    """
    import httpx
    from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, ResponseHandlingException):
        return isinstance(exc.source, httpx.TransportError | OSError)
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code is None or exc.status_code >= 500 or exc.status_code == 429
    return isinstance(exc, ResourceExhaustedResponse | httpx.TransportError | ConnectionError | TimeoutError)


def _describe(exc: BaseException) -> str:
    source = getattr(exc, "source", None)  # ResponseHandlingException: the transport error
    return repr(source) if source is not None else str(exc).splitlines()[0]


def open_index(
    settings: Settings, dim: int, name: str | None = None, distance: Distance = "cosine"
) -> ItemIndex:
    """The backend the settings ask for: Qdrant Edge (default) or a Qdrant server.

    `name` picks another collection (Edge: shard) than the settings' one, e.g. the
    retrieval vectors of one model version.
    """
    collection = name or settings.collection
    if settings.index_mode == "client":
        if settings.qdrant_url is None:  # Settings already refuses this; say so if bypassed
            raise ValueError("index_mode=client needs STREAMREC_QDRANT_URL")
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return ClientItemIndex(
            settings.qdrant_url,
            dim,
            collection,
            api_key,
            distance,
            hnsw_ef=settings.hnsw_ef,
            timeout_s=settings.qdrant_timeout_s,
        )
    return EdgeItemIndex(
        settings.resolved_index_path, dim, collection, distance, hnsw_ef=settings.hnsw_ef
    )


def _check_distance(distance: str) -> Distance:
    if distance not in ("cosine", "dot"):
        raise ValueError(f"distance must be 'cosine' or 'dot', got {distance!r}")
    return distance  # type: ignore[return-value]
