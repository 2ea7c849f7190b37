"""The production backend: a Qdrant server (or qdrant-client's local mode) via `qdrant-client`.

A server that does not answer (refused, reset, timed out, 5xx or 429) raises
`IndexUnavailableError` from every call; other errors pass as they are.

>>> import numpy as np
>>> from streamrec.models.index.protocol import IndexedItem
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
import logging
from collections.abc import Iterator
from typing import Any

from streamrec.models.index.protocol import Distance, IndexUnavailableError
from streamrec.models.index.qdrant import QdrantIndex, check_distance

log = logging.getLogger(__name__)

#: `ClientItemIndex(url)` with this prefix opens qdrant-client's on-disk local mode.
LOCAL_PATH_PREFIX = "path:"


class ClientItemIndex(QdrantIndex):
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
        self.distance = check_distance(distance)
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
            if not is_unavailable(exc):
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


def is_unavailable(exc: BaseException) -> bool:
    """Whether a qdrant-client error means "the server is not there (now)".

    qdrant-client wraps transport errors (refused, reset, timed out) in
    `ResponseHandlingException` (which also wraps unparsable answers: not ours to retry) and
    non-2xx answers in `UnexpectedResponse`.

    >>> is_unavailable(ConnectionRefusedError()), is_unavailable(ValueError("bad request"))
    (True, False)
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
