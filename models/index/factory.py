"""Opening the item index the settings ask for: Qdrant Edge (default) or a Qdrant server,
and the layers a worker reads it through.

>>> index = open_index(Settings(index_mode="client", qdrant_url=":memory:"), dim=4)
>>> type(index).__name__, index.dim
('ClientItemIndex', 4)
>>> index.close()
>>> served = open_serving_index(Settings(index_mode="client", qdrant_url=":memory:"), dim=4)
>>> type(served).__name__, type(served.inner).__name__, served.inner.in_memory
('CachedItemIndex', 'ExactItemIndex', True)
>>> served.close()
"""

from __future__ import annotations

from collections.abc import Callable

from streamrec.models.index.cache import CachedItemIndex
from streamrec.models.index.edge import EdgeItemIndex
from streamrec.models.index.exact import ExactItemIndex
from streamrec.models.index.protocol import Distance, ItemIndex
from streamrec.models.index.server import ClientItemIndex
from streamrec.stream.settings import Settings


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


def open_serving_index(
    settings: Settings, dim: int, name: str | None = None, distance: Distance = "cosine"
) -> CachedItemIndex:
    """The backend (`open_index`) as a worker reads it: the whole catalogue in memory,
    searched exactly, while it holds at most `exact_search_max_items` (else the backend's
    HNSW search), behind `CachedItemIndex` (item vectors and neighbour lists kept)."""
    backend = open_index(settings, dim, name=name, distance=distance)
    try:
        exact = ExactItemIndex(backend, max_items=settings.exact_search_max_items)
    except Exception:
        backend.close()
        raise
    return CachedItemIndex(exact, items=settings.item_cache_size, neighbour_lists=settings.neighbour_cache_size)


def retrieval_index_opener(settings: Settings) -> Callable[[str, int], ItemIndex]:
    """How a model version opens its retrieval index (`name`, `dim`): dot product, read
    through the same layers as the text index."""
    return lambda name, dim: open_serving_index(settings, dim, name=name, distance="dot")
