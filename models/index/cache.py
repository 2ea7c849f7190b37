"""An item index with the reads every micro-batch repeats served from memory.

A worker asks the index the same two questions over and over: the vectors of its users'
recent items, and the neighbours of those items. Both change only when the catalogue
changes, so `CachedItemIndex` keeps them (bounded, least recently used out first) in front of
any `ItemIndex` backend and asks Qdrant only for what it has not seen yet.

Answers are exactly those of the backend:
- an item's neighbour list is kept unfiltered, `depth` deep; a user's consumed items are
  dropped from it in memory, and when too few remain the backend's filtered search answers;
- an upsert forgets the vectors of the items written and every neighbour list the new
  vectors would enter (a new item scoring above the list's last entry) or that holds one of
  them; the rest stays valid.

>>> import numpy as np
>>> from streamrec.models.index.protocol import IndexedItem
>>> from streamrec.models.index.server import ClientItemIndex
>>> index = CachedItemIndex(ClientItemIndex(":memory:", dim=2), items=100, neighbour_lists=100)
>>> unit = lambda x, y: np.array([x, y], dtype=np.float32) / np.hypot(x, y)
>>> index.upsert([IndexedItem("tea", unit(1, 0), "tea"), IndexedItem("mate", unit(0.9, 0.1), "mate"),
...               IndexedItem("cake", unit(0, 1), "cake")])
>>> [n.item_id for n in index.similar(["tea"], limit=2)[0]]
['mate', 'cake']
>>> index.upsert([IndexedItem("chai", unit(0.95, 0.05), "chai")])  # enters tea's list
>>> [n.item_id for n in index.similar(["tea"], limit=2, exclude=[{"mate"}])[0]]
['chai', 'cake']
>>> index.close()
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np

from streamrec.models.index.protocol import IndexedItem, ItemIndex, Neighbour, similar_by_search


class CachedItemIndex:
    """`ItemIndex` in front of another one: item vectors and neighbour lists kept in memory.

    `items`: most item vectors kept; `neighbour_lists`: most items whose neighbour list is
    kept; `depth`: neighbours kept per list (a request for `limit` excluding `e` items is
    answered from memory when at least `limit` survive the exclusion).
    """

    def __init__(
        self, inner: ItemIndex, items: int = 50_000, neighbour_lists: int = 50_000, depth: int = 60
    ) -> None:
        if items < 1 or neighbour_lists < 1 or depth < 1:
            raise ValueError("cache sizes and depth must be >= 1")
        self.inner = inner
        self.dim = inner.dim
        self.distance: str = getattr(inner, "distance", "cosine")
        self.item_capacity = items
        self.list_capacity = neighbour_lists
        self.depth = depth
        self._items: OrderedDict[str, IndexedItem] = OrderedDict()
        # item id -> its neighbours' ids (interned) and scores (float32), best first: ~0.8 KB
        # a list at depth 60, where Neighbour objects took 11 KB
        self._lists: OrderedDict[str, _NeighbourList] = OrderedDict()
        self._lock = threading.Lock()  # the catalogue may write from another thread
        self.hits = 0  # neighbour lists asked for that were kept
        self.misses = 0  # ... that had to be fetched (or were unknown)

    # --- writes ----------------------------------------------------------------------
    def upsert(self, items: Sequence[IndexedItem]) -> None:
        """Write through to the backend, then forget what the new vectors change."""
        if not items:
            self.inner.upsert(items)
            return
        written = {item.item_id for item in items}
        # Only items that were in the index already can sit in a kept list.
        replaced = set(self.inner.get(sorted(written))) if self._lists else set()
        self.inner.upsert(items)
        with self._lock:
            for item_id in written:
                self._items.pop(item_id, None)
            self._forget_lists_entered_by(items, replaced)

    def _forget_lists_entered_by(self, items: Sequence[IndexedItem], replaced: set[str]) -> None:
        if not self._lists:
            return
        new = np.stack([np.asarray(item.vector, dtype=np.float32) for item in items])  # (M, D)
        if self.distance == "cosine":
            new /= np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
        keys = [key for key in self._lists if key in self._items]
        stale = {key for key in self._lists if key not in self._items or key in replaced}
        if keys:
            anchors = np.stack([self._items[key].vector for key in keys])  # (K, D)
            best_new = (anchors @ new.T).max(axis=1)  # (K,) each list's best new score
            for key, score in zip(keys, best_new.tolist()):
                ids, scores = self._lists[key]
                floor = float(scores[-1]) if len(ids) >= self.depth else -np.inf
                if score >= floor or (replaced and not replaced.isdisjoint(ids)):
                    stale.add(key)
        for key in stale:
            self._lists.pop(key, None)

    # --- reads -----------------------------------------------------------------------
    def get(self, item_ids: Sequence[str]) -> dict[str, IndexedItem]:
        found: dict[str, IndexedItem] = {}
        missing: list[str] = []
        with self._lock:
            for item_id in dict.fromkeys(item_ids):
                item = self._items.get(item_id)
                if item is None:
                    missing.append(item_id)
                else:
                    self._items.move_to_end(item_id)
                    found[item_id] = item
        if missing:
            fetched = self.inner.get(missing)
            self._remember(fetched.values())
            found.update(fetched)
        return found

    def search_batch(
        self,
        queries: np.ndarray,
        limit: int,
        exclude: Sequence[Collection[str]] | None = None,
        with_items: bool = True,
    ) -> list[list[Neighbour]]:
        """The backend's search (arbitrary queries are not cached); the hits' items are, and
        come from memory where kept (a backend that holds its items in memory, such as
        `ExactItemIndex`, hands them over itself)."""
        if getattr(self.inner, "in_memory", False):
            return self.inner.search_batch(queries, limit, exclude, with_items)
        results = self.inner.search_batch(queries, limit, exclude, with_items=False)
        if not with_items:
            return results
        items = self.get([n.item_id for hits in results for n in hits])
        return [
            [Neighbour(n.item_id, n.score, items[n.item_id]) for n in hits if n.item_id in items]
            for hits in results
        ]

    def similar(
        self, item_ids: Sequence[str], limit: int, exclude: Sequence[Collection[str]] | None = None
    ) -> list[list[Neighbour]]:
        """Per item: up to `limit` nearest other items, best first, none in `exclude[row]`
        (the item itself never). Unknown items get no neighbours."""
        return [
            [Neighbour(answer[0][c], float(answer[1][c])) for c in columns] if columns is not None else answer
            for answer, columns in self._answers(item_ids, limit, exclude)
        ]

    def similar_ids(
        self, item_ids: Sequence[str], limit: int, exclude: Sequence[Collection[str]] | None = None
    ) -> list[list[str]]:
        """`similar`'s answers as item ids only (what a candidate source needs): no object
        per hit."""
        return [
            [answer[0][c] for c in columns] if columns is not None else [hit.item_id for hit in answer]
            for answer, columns in self._answers(item_ids, limit, exclude)
        ]

    def _answers(
        self, item_ids: Sequence[str], limit: int, exclude: Sequence[Collection[str]] | None
    ) -> list[tuple[Any, list[int] | None]]:
        """Per item: (its kept list, the columns of it that answer) or, where the kept list
        cannot tell, (the backend's filtered answer, None)."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if exclude is not None and len(exclude) != len(item_ids):
            raise ValueError(f"{len(exclude)} exclusion sets for {len(item_ids)} items")
        answers: list[tuple[Any, list[int] | None] | None] = [None] * len(item_ids)
        unlisted: list[int] = []
        with self._lock:
            for row, item_id in enumerate(item_ids):
                kept = self._lists.get(item_id)
                if kept is None:
                    unlisted.append(row)
                    continue
                self._lists.move_to_end(item_id)
                answers[row] = _kept_answer(kept, exclude[row] if exclude else (), item_id, limit, self.depth)
        self.hits += len(item_ids) - len(unlisted)
        self.misses += len(unlisted)
        if unlisted:
            self._fill_lists([item_ids[row] for row in unlisted])
            with self._lock:
                for row in unlisted:
                    kept = self._lists.get(item_ids[row])
                    if kept is not None:
                        answers[row] = _kept_answer(
                            kept, exclude[row] if exclude else (), item_ids[row], limit, self.depth
                        )
        short = [row for row, answer in enumerate(answers) if answer is None]
        if short:  # the exclusion ate the kept list, or an unknown item: ask with the filter
            filtered = similar_by_search(
                self, [item_ids[row] for row in short], limit,
                [exclude[row] for row in short] if exclude is not None else None,
            )
            for row, hits in zip(short, filtered):
                answers[row] = (hits, None)
        return answers  # type: ignore[return-value]

    def _fill_lists(self, item_ids: Sequence[str]) -> None:
        known = self.get(item_ids)
        wanted = [item_id for item_id in dict.fromkeys(item_ids) if item_id in known]
        if not wanted:
            return
        queries = np.stack([known[item_id].vector for item_id in wanted])  # (Q, D)
        with self._lock:
            for item_id, (ids, scores) in zip(wanted, self._nearest_lists(queries)):
                if item_id in ids:  # itself, normally first
                    at = ids.index(item_id)
                    ids, scores = ids[:at] + ids[at + 1 :], np.delete(scores, at)
                self._lists[item_id] = (ids[: self.depth], scores[: self.depth])
                self._lists.move_to_end(item_id)
            while len(self._lists) > self.list_capacity:
                self._lists.popitem(last=False)

    def _nearest_lists(self, queries: np.ndarray) -> list[_NeighbourList]:
        """Each query's `depth + 1` nearest items (itself among them) as interned ids and
        float32 scores: from an in-memory backend as arrays, else from its search."""
        if getattr(self.inner, "in_memory", False):  # ExactItemIndex: no Neighbour per hit
            lists = self.inner.neighbour_lists(queries, self.depth + 1)
        else:
            lists = [
                (tuple(n.item_id for n in hits), np.array([n.score for n in hits], dtype=np.float32))
                for hits in self.inner.search_batch(queries, self.depth + 1, with_items=False)
            ]
        return [(tuple(map(sys.intern, ids)), scores.astype(np.float32, copy=False)) for ids, scores in lists]

    def _remember(self, items: Any) -> None:
        with self._lock:
            for item in items:
                self._items[item.item_id] = item
                self._items.move_to_end(item.item_id)
            while len(self._items) > self.item_capacity:
                self._items.popitem(last=False)

    # --- the rest of the contract, passed through ------------------------------------
    def scan(self, batch_size: int = 1024) -> Iterator[list[IndexedItem]]:
        return self.inner.scan(batch_size)

    def count(self) -> int:
        return self.inner.count()

    def optimize(self) -> None:
        """Let the backend build its search structures (Qdrant Edge: the HNSW graph)."""
        optimize = getattr(self.inner, "optimize", None)
        if callable(optimize):
            optimize()

    def close(self) -> None:
        self.inner.close()

    def drop(self) -> None:
        with self._lock:
            self._items.clear()
            self._lists.clear()
        self.inner.drop()


_NeighbourList = tuple[tuple[str, ...], np.ndarray]  # ids, (n,) float32 scores


def _kept_answer(
    kept: _NeighbourList, banned: Collection[str], item_id: str, limit: int, depth: int
) -> tuple[_NeighbourList, list[int]] | None:
    """The kept list and the columns of its first `limit` neighbours not banned; None when
    the list cannot tell (it was cut at `depth` and fewer than `limit` survived)."""
    ids = kept[0]
    columns = list(islice((c for c, n in enumerate(ids) if n not in banned and n != item_id), limit))
    if len(columns) == limit or len(ids) < depth:
        return kept, columns
    return None
