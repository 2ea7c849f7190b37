"""Opening the item index the settings ask for: Qdrant Edge (default) or a Qdrant server.

>>> index = open_index(Settings(index_mode="client", qdrant_url=":memory:"), dim=4)
>>> type(index).__name__, index.dim
('ClientItemIndex', 4)
>>> index.close()
"""

from __future__ import annotations

from streamrec.models.index.edge import EdgeItemIndex
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
