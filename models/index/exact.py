"""Exact search over a catalogue held in memory: one matrix product per micro-batch.

A catalogue of a few hundred thousand items fits in memory as one float32 matrix (10k
text vectors: 15 MB). Searching it exactly is one (Q, D) x (D, N) product, consumed items
masked out, and a partial sort: no graph walk, no per-query filter object, no recall loss,
and the same answer whatever a user has consumed (a filtered HNSW search slows down as the
exclusion set grows). `ExactItemIndex` keeps such a copy in front of a Qdrant backend:

- writes go through to the backend (it stays the durable copy a restart reads back) and
  into memory;
- reads (`get`, `search_batch`, `similar`, `scan`, `count`) are answered from memory while
  the whole catalogue fits in `max_items`; past that, it lets the memory go and passes every
  read to the backend (its HNSW search), saying so in the log. docs/benchmarks.md has the
  measured crossover.

A worker reads it through `CachedItemIndex` (factory.open_serving_index): the neighbour
lists of its users' recent items are kept there, so most seeds cost a lookup, not a product.

Scores are the backend's: cosine (vectors and queries normalised) or dot product.

>>> import numpy as np
>>> from streamrec.models.index.server import ClientItemIndex
>>> index = ExactItemIndex(ClientItemIndex(":memory:", dim=2), max_items=100)
>>> unit = lambda x, y: np.array([x, y], dtype=np.float32) / np.hypot(x, y)
>>> index.upsert([IndexedItem("tea", unit(1, 0), "tea"), IndexedItem("mate", unit(0.9, 0.1), "mate"),
...               IndexedItem("cake", unit(0, 1), "cake")])
>>> [n.item_id for n in index.similar(["tea"], limit=2)[0]]
['mate', 'cake']
>>> [n.item_id for n in index.search_batch(unit(1, 0)[None], limit=2, exclude=[{"tea"}])[0]]
['mate', 'cake']
>>> index.in_memory, index.count()
(True, 3)
>>> index.close()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterator, Sequence

import numpy as np

from streamrec.models.index.protocol import IndexedItem, IndexUnavailableError, ItemIndex, Neighbour

log = logging.getLogger(__name__)

QUERY_BLOCK = 256  # queries per matrix product: bounds the (block, N) score matrix's memory
_BANNED = -np.inf


class ExactItemIndex:
    """`ItemIndex` answering reads exactly from an in-memory copy of `inner`'s items.

    `max_items`: the most items kept in memory (0: never; every read goes to `inner`).
    """

    def __init__(self, inner: ItemIndex, max_items: int) -> None:
        if max_items < 0:
            raise ValueError(f"max_items must be >= 0, got {max_items}")
        self.inner = inner
        self.dim = inner.dim
        self.distance: str = getattr(inner, "distance", "cosine")
        self.max_items = max_items
        self._lock = threading.Lock()  # the catalogue may write from another thread
        self._rows: dict[str, int] = {}  # item id -> row of `_matrix`
        self._items: list[IndexedItem] = []  # by row; vectors as the backend stores them
        self._matrix = np.zeros((0, self.dim), dtype=np.float32)  # (capacity, D); rows < n used
        self._ids_by_row: tuple[list[IndexedItem], np.ndarray] | None = None  # `_id_array`'s memory
        self._wanted = max_items > 0  # memory is to hold the catalogue (until it outgrows it)
        self._loaded = False
        try:
            self._load()
        except IndexUnavailableError as exc:  # a server away at start: load when it answers
            log.warning("cannot read the catalogue into memory yet (%s); trying again at the next read", exc)

    @property
    def in_memory(self) -> bool:
        """Whether reads are answered from memory. Reading the catalogue in is tried again
        here while it never succeeded (the backend was away): a read then fails with the
        backend's `IndexUnavailableError`, as a read of the backend itself would."""
        if self._wanted and not self._loaded:
            self._load()
        return self._loaded

    # --- memory ------------------------------------------------------------------------
    def _load(self) -> None:
        """Read the backend's items into memory, unless there are more than `max_items`."""
        if not self._wanted or self._loaded:
            return
        total = self.inner.count()
        if total > self.max_items:
            log.warning("the catalogue holds %d items, more than the %d searched exactly in memory "
                        "(STREAMREC_EXACT_SEARCH_MAX_ITEMS): searching the index's HNSW graph",
                        total, self.max_items)
            self._wanted = False
            return
        with self._lock:
            for page in self.inner.scan(batch_size=4096):
                self._keep(page)
            self._loaded = True

    def _keep(self, items: Sequence[IndexedItem]) -> None:
        """Add or replace `items` in memory (caller holds the lock or owns the index)."""
        stored = [self._stored(item) for item in items]
        new = [item.item_id for item in stored if item.item_id not in self._rows]
        need = len(self._items) + len(dict.fromkeys(new))
        if need > len(self._matrix):
            grown = np.zeros((max(need, 2 * len(self._matrix), 1024), self.dim), dtype=np.float32)
            grown[: len(self._items)] = self._matrix[: len(self._items)]
            self._matrix = grown  # readers holding the old matrix keep a valid snapshot
        for item in stored:
            row = self._rows.get(item.item_id)
            if row is None:
                row = self._rows[item.item_id] = len(self._items)
                self._items.append(item)
            else:
                self._items[row] = item
            self._matrix[row] = item.vector

    def _stored(self, item: IndexedItem) -> IndexedItem:
        """The item as the backend keeps it: cosine vectors normalised, dot vectors as given."""
        vector = np.asarray(item.vector, dtype=np.float32)  # (D,)
        if self.distance == "cosine":
            vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        return IndexedItem(item.item_id, vector, item.title)

    def _let_go(self) -> None:
        log.warning("the catalogue outgrew the %d items searched exactly in memory "
                    "(STREAMREC_EXACT_SEARCH_MAX_ITEMS): searching the index's HNSW graph from now on",
                    self.max_items)
        self._wanted = self._loaded = False
        self._rows, self._items = {}, []
        self._matrix = np.zeros((0, self.dim), dtype=np.float32)

    def _snapshot(self) -> tuple[np.ndarray, list[IndexedItem], dict[str, int]]:
        """The matrix rows in use now, the items by row and the id -> row map. Writers only
        append rows or replace them in place, so a reader that ignores rows past the
        snapshot's matrix sees one consistent catalogue without holding the lock."""
        with self._lock:
            return self._matrix[: len(self._items)], self._items, self._rows

    # --- writes ----------------------------------------------------------------------
    def upsert(self, items: Sequence[IndexedItem]) -> None:
        """Write through to the backend (it checks the items), then into memory."""
        self.inner.upsert(items)
        if not self.in_memory or not items:
            return
        with self._lock:
            fresh = {item.item_id for item in items} - self._rows.keys()
            if len(self._items) + len(fresh) > self.max_items:
                self._let_go()
            else:
                self._keep(items)

    # --- reads -----------------------------------------------------------------------
    def get(self, item_ids: Sequence[str]) -> dict[str, IndexedItem]:
        if not self.in_memory:
            return self.inner.get(item_ids)
        with self._lock:
            rows, items = self._rows, self._items
            return {i: items[rows[i]] for i in item_ids if i in rows}

    def search_batch(
        self,
        queries: np.ndarray,
        limit: int,
        exclude: Sequence[Collection[str]] | None = None,
        with_items: bool = True,
    ) -> list[list[Neighbour]]:
        """Nearest items per query (Q, D), best first, none in exclude[q]; a zero query gets none."""
        if not self.in_memory:
            return self.inner.search_batch(queries, limit, exclude, with_items)
        queries = np.asarray(queries, dtype=np.float32)  # (Q, D)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries have shape {queries.shape}, index expects (Q, {self.dim})")
        if not np.all(np.isfinite(queries)):
            raise ValueError("queries contain NaN or Inf")
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"{len(exclude)} exclusion sets for {len(queries)} queries")
        norms = np.linalg.norm(queries, axis=1)  # (Q,)
        if self.distance == "cosine":
            queries = queries / np.maximum(norms, 1e-12)[:, None]
        return self._nearest(queries, norms > 0, limit, exclude, with_items)

    def similar(
        self, item_ids: Sequence[str], limit: int, exclude: Sequence[Collection[str]] | None = None
    ) -> list[list[Neighbour]]:
        """Per item: up to `limit` nearest other items, best first, none in exclude[row]
        (the item itself never); unknown items get none."""
        if not self.in_memory:
            return self.inner.similar(item_ids, limit, exclude)
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if exclude is not None and len(exclude) != len(item_ids):
            raise ValueError(f"{len(exclude)} exclusion sets for {len(item_ids)} items")
        matrix, _, rows = self._snapshot()
        known = [row for row, item_id in enumerate(item_ids) if rows.get(item_id, len(matrix)) < len(matrix)]
        answers: list[list[Neighbour]] = [[] for _ in item_ids]
        if known:
            queries = matrix[[rows[item_ids[row]] for row in known]]  # (Q, D)
            banned = [(*(exclude[row] if exclude is not None else ()), item_ids[row]) for row in known]
            hits = self._nearest(queries, np.ones(len(known), dtype=bool), limit, banned, True)
            for row, found in zip(known, hits):
                answers[row] = found
        return answers

    def neighbour_lists(self, queries: np.ndarray, limit: int) -> list[tuple[tuple[str, ...], np.ndarray]]:
        """Per query (Q, D): the ids and scores (float32) of its `limit` nearest items, best
        first, as `search_batch` finds them but as arrays, without a `Neighbour` per hit (what
        `CachedItemIndex` keeps). Only while the catalogue is in memory."""
        queries = np.asarray(queries, dtype=np.float32)  # (Q, D)
        norms = np.linalg.norm(queries, axis=1)  # (Q,)
        if self.distance == "cosine":
            queries = queries / np.maximum(norms, 1e-12)[:, None]
        matrix, items, _ = self._snapshot()
        ids = self._id_array(items)
        lists = []
        for columns, scores, count in self._top(queries, matrix, limit, None, {}):
            for row_columns, row_scores, row_count in zip(columns, scores, count.tolist()):
                row_count = row_count if norms[len(lists)] > 0 else 0  # a zero query finds nothing
                lists.append((tuple(ids[row_columns[:row_count]].tolist()), row_scores[:row_count]))
        return lists

    def _nearest(
        self,
        queries: np.ndarray,  # (Q, D), normalised for cosine
        live: np.ndarray,  # (Q,) bool: False for a zero query (no direction, no neighbours)
        limit: int,
        exclude: Sequence[Collection[str]] | None,
        with_items: bool,
    ) -> list[list[Neighbour]]:
        matrix, items, rows = self._snapshot()
        answers: list[list[Neighbour]] = [[] for _ in range(len(queries))]
        start = 0
        for columns, scores, count in self._top(queries, matrix, limit, exclude, rows):
            for offset, (row_columns, row_scores, row_count) in enumerate(
                zip(columns.tolist(), scores.tolist(), count.tolist())
            ):
                if not live[start + offset]:
                    continue
                picked = [items[c] for c in row_columns[:row_count]]
                if with_items:
                    answers[start + offset] = [Neighbour(i.item_id, v, i) for i, v in zip(picked, row_scores)]
                else:
                    answers[start + offset] = [Neighbour(i.item_id, v) for i, v in zip(picked, row_scores)]
            start += len(columns)
        return answers

    def _top(
        self,
        queries: np.ndarray,  # (Q, D)
        matrix: np.ndarray,  # (N, D)
        limit: int,
        exclude: Sequence[Collection[str]] | None,
        rows: dict[str, int],
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per block of queries: the columns (b, take) and scores (b, take) of the best items,
        best first, and how many of them are real (b,) (left-out items sort last)."""
        n = len(matrix)
        if n == 0:
            for start in range(0, len(queries), QUERY_BLOCK):
                b = min(QUERY_BLOCK, len(queries) - start)
                yield np.zeros((b, 0), dtype=np.int64), np.zeros((b, 0), dtype=np.float32), np.zeros(b, dtype=np.int64)
            return
        take = min(limit, n)
        for start in range(0, len(queries), QUERY_BLOCK):
            block = slice(start, min(start + QUERY_BLOCK, len(queries)))
            scores = queries[block] @ matrix.T  # (b, N)
            if exclude is not None:
                for offset, banned in enumerate(exclude[block]):
                    if banned:
                        columns = [c for c in map(rows.get, banned) if c is not None and c < n]
                        scores[offset, columns] = _BANNED
            if take < n:
                top = np.argpartition(-scores, take - 1, axis=1)[:, :take]  # (b, take) unordered
            else:
                top = np.broadcast_to(np.arange(n), (scores.shape[0], n))
            top_scores = np.take_along_axis(scores, top, axis=1)  # (b, take)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            top_scores = np.take_along_axis(top_scores, order, axis=1)
            yield np.take_along_axis(top, order, axis=1), top_scores, np.isfinite(top_scores).sum(axis=1)

    def _id_array(self, items: list[IndexedItem]) -> np.ndarray:
        """The item ids by row as an object array, remembered until rows are added or the
        memory is let go (a row replaced in place keeps its id)."""
        cached = self._ids_by_row
        if cached is None or cached[0] is not items or len(cached[1]) != len(items):
            ids = np.empty(len(items), dtype=object)  # (N,)
            ids[:] = [item.item_id for item in items]
            cached = self._ids_by_row = (items, ids)
        return cached[1]

    def scan(self, batch_size: int = 1024) -> Iterator[list[IndexedItem]]:
        if not self.in_memory:
            yield from self.inner.scan(batch_size)
            return
        matrix, items, _ = self._snapshot()
        for start in range(0, len(matrix), batch_size):
            yield items[start : min(start + batch_size, len(matrix))]

    def count(self) -> int:
        if not self.in_memory:
            return self.inner.count()
        with self._lock:
            return len(self._items)

    # --- the rest of the contract, passed through ------------------------------------
    def optimize(self) -> None:
        """Build the backend's HNSW graph only once reads go to it (in memory, none is read)."""
        if not self.in_memory:
            self.inner.optimize()

    def close(self) -> None:
        self.inner.close()

    def drop(self) -> None:
        with self._lock:
            self._rows, self._items = {}, []
            self._matrix = np.zeros((0, self.dim), dtype=np.float32)
        self.inner.drop()
