"""Stand-ins for unit tests of pure logic only (integration and e2e tests use the real parts)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from streamrec.models.index.protocol import IndexedItem, Neighbour, similar_by_search


class BruteForceIndex:
    """Exact search (dot product; cosine for unit vectors) over a dict: the ItemIndex contract."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.items: dict[str, IndexedItem] = {}

    def upsert(self, items: Sequence[IndexedItem]) -> None:
        self.items.update({item.item_id: item for item in items})

    def get(self, item_ids: Sequence[str]) -> dict[str, IndexedItem]:
        return {i: self.items[i] for i in item_ids if i in self.items}

    def search_batch(self, queries, limit, exclude: Sequence[Collection[str]] | None = None, with_items=True):
        out = []
        for row, query in enumerate(queries):
            banned = exclude[row] if exclude else ()
            scored = sorted(
                ((float(item.vector @ query), item) for item in self.items.values() if item.item_id not in banned),
                key=lambda pair: -pair[0],
            )
            out.append([Neighbour(item_id=item.item_id, score=score) for score, item in scored[:limit]])
        return out

    def similar(self, item_ids, limit, exclude=None):
        return similar_by_search(self, item_ids, limit, exclude)

    def optimize(self) -> None:
        pass

    def scan(self, batch_size: int = 1024):
        items = list(self.items.values())
        for start in range(0, len(items), batch_size):
            yield items[start : start + batch_size]

    def count(self) -> int:
        return len(self.items)

    def close(self) -> None:
        pass

    def drop(self) -> None:
        self.items.clear()
