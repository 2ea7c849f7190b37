"""Transitional re-exports: the index now lives in `protocol`, `edge`, `server` and `factory`.

Kept only until every importer is committed with the new paths; import from those modules.
"""

from streamrec.models.index.edge import EdgeItemIndex
from streamrec.models.index.factory import open_index
from streamrec.models.index.protocol import (
    IndexedItem,
    IndexUnavailableError,
    ItemIndex,
    Neighbour,
    point_id,
    similar_by_search,
)
from streamrec.models.index.server import ClientItemIndex

__all__ = [
    "ClientItemIndex",
    "EdgeItemIndex",
    "IndexUnavailableError",
    "IndexedItem",
    "ItemIndex",
    "Neighbour",
    "open_index",
    "point_id",
    "similar_by_search",
]
