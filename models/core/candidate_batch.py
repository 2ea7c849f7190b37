"""A micro-batch's candidates as integer rows of one table of its distinct items.

Every source (text neighbours, the ranker's retrieval, co-visitation, transitions, popular
items) hands over, per user, an ordered list of item ids; `CandidateCollector` maps them to
rows of one table (the catalogue items the batch needs, each fetched once) and forms each
user's candidates in array operations: the first source to name an item wins, in the order
the sources were added, and an item named twice for one user counts once. Ranking then reads
the (B, C) rows: vectors, counts and trending scores are gathered from per-item arrays, never
looked up per candidate.

>>> import numpy as np
>>> from streamrec.models.index.protocol import IndexedItem
>>> catalogue = {i: IndexedItem(i, np.ones(2, dtype=np.float32), i.upper()) for i in "abc"}
>>> collector = CandidateCollector(2, consumed=[set(), {"b"}])
>>> collector.add([0, 1], [["a", "x"], ["a"]], Source.NEIGHBOUR)   # "x": not in the catalogue
>>> collector.add([0, 1], [["b", "a"], ["b", "c"]], Source.COVISIT, skip_consumed=True)
>>> batch = collector.build(lambda ids: {i: catalogue[i] for i in ids if i in catalogue})
>>> batch.ids_of(0), batch.ids_of(1), batch.sources[1, :2].tolist() == [Source.NEIGHBOUR.code, Source.COVISIT.code]
(['a', 'b'], ['a', 'c'], True)
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from streamrec.models.index.protocol import IndexedItem, Neighbour


class Source(enum.Enum):
    """Where a candidate came from; it decides the reason shown with the item."""

    NEIGHBOUR = "neighbour"  # text-similar to one of the user's recent items
    MODEL = "model"  # the ranker's retrieval (user vector against item vectors)
    COVISIT = "covisit"  # often consumed near one of the user's recent items
    NEXT = "next"  # often consumed right after the user's last item
    PEERS = "peers"  # consumed by users whose recent items overlap the user's
    TRENDING = "trending"  # popular now or overall

    @property
    def code(self) -> int:
        """The source as a small integer (the `sources` arrays of a `CandidateBatch`)."""
        return _CODES[self]


_CODES = {source: code for code, source in enumerate(Source)}
PADDING = ""  # the id of row 0 of every table: where a user has fewer candidates than C


@dataclass(frozen=True)
class CandidateBatch:
    """Every user's candidates: `rows` (B, C) of the table `items` (U,) (row 0: padding),
    `sources` (B, C) each candidate's `Source.code`, `counts` (B,) real candidates per user
    (they come first in each row)."""

    items: list[IndexedItem | None]  # (U,) row 0 is None (padding)
    ids: np.ndarray  # (U,) object: the item ids by row, PADDING at row 0
    rows: np.ndarray  # (B, C) int64
    sources: np.ndarray  # (B, C) int8
    counts: np.ndarray  # (B,) int64

    @property
    def mask(self) -> np.ndarray:
        """(B, C) True where a real candidate sits."""
        return np.arange(self.rows.shape[1])[None, :] < self.counts[:, None]

    def ids_of(self, user: int) -> list[str]:
        """User `user`'s candidate ids, in order."""
        return self.ids[self.rows[user, : self.counts[user]]].tolist()

    def vectors(self, dim: int) -> np.ndarray:
        """(U, D) the table's vectors, zeros at the padding row."""
        table = np.zeros((len(self.items), dim), dtype=np.float32)
        if len(self.items) > 1:
            table[1:] = np.stack([item.vector for item in self.items[1:]])  # type: ignore[union-attr]
        return table

    def take(self, users: Sequence[int]) -> CandidateBatch:
        """The batch of some of its users (same table), in the order given."""
        picked = np.asarray(users, dtype=np.int64)
        counts = self.counts[picked]
        width = max(1, int(counts.max(initial=0)))
        return CandidateBatch(self.items, self.ids, self.rows[picked, :width], self.sources[picked, :width], counts)


class CandidateCollector:
    """Builds a `CandidateBatch` from the sources' id lists, added in order of precedence.

    `consumed[b]`: what user b consumed; sources that do not leave those out themselves
    (the counts, popular items) ask for them to be skipped."""

    def __init__(self, n_users: int, consumed: Sequence[Collection[str]]) -> None:
        self.n_users = n_users
        self.consumed = consumed
        self._owners: list[np.ndarray] = []  # per add: (M,) the user of each id
        self._ids: list[str] = []  # every id added, in order
        self._sources: list[np.ndarray] = []  # per add: (M,) source codes
        self._known: dict[str, IndexedItem] = {}  # items the sources handed over with their ids

    def add(
        self, owners: Sequence[int], id_lists: Sequence[Sequence[str]], source: Source, skip_consumed: bool = False
    ) -> None:
        """`id_lists[n]`: ordered candidates of user `owners[n]` from `source`."""
        lengths = []
        for owner, ids in zip(owners, id_lists):
            if skip_consumed:
                consumed = self.consumed[owner]
                ids = [item_id for item_id in ids if item_id not in consumed]
            self._ids += ids
            lengths.append(len(ids))
        self._owners.append(np.repeat(np.asarray(owners, dtype=np.int64), lengths))
        self._sources.append(np.full(sum(lengths), source.code, dtype=np.int8))

    def add_hits(self, owners: Sequence[int], results: Sequence[Sequence[Neighbour]], source: Source) -> None:
        """Search hits: their items are kept (no second lookup for those)."""
        for hits in results:
            for hit in hits:
                if hit.item is not None:
                    self._known[hit.item_id] = hit.item
        self.add(owners, [[hit.item_id for hit in hits] for hits in results], source)

    def add_shared(self, items: Sequence[IndexedItem], per_user: int, source: Source) -> None:
        """One ranked list for everyone: each user's first `per_user` not consumed."""
        ids = [item.item_id for item in items]
        for item in items:
            self._known.setdefault(item.item_id, item)
        self.add(
            range(self.n_users),
            [list(islice((i for i in ids if i not in consumed), per_user)) for consumed in self.consumed],
            source,
        )

    def build(self, fetch: Callable[[Sequence[str]], Mapping[str, IndexedItem]]) -> CandidateBatch:
        """The batch; `fetch` (the index's `get`) is asked once for the items no source
        handed over. Ids it does not know (seen in events only) are left out."""
        first_seen: dict[str, int] = {}  # each distinct id -> its number, in order of first mention
        number = first_seen.setdefault
        mentions = np.fromiter((number(item_id, len(first_seen)) for item_id in self._ids), dtype=np.int64,
                               count=len(self._ids))  # (M,)
        known = self._known
        missing = sorted(item_id for item_id in first_seen if item_id not in known)
        if missing:
            known = {**known, **fetch(missing)}
        items: list[IndexedItem | None] = [None]
        table_row = np.zeros(len(first_seen), dtype=np.int64)  # (distinct,) 0: not in the catalogue
        for distinct, item_id in enumerate(first_seen):
            item = known.get(item_id)
            if item is not None:
                table_row[distinct] = len(items)
                items.append(item)
        ids = np.empty(len(items), dtype=object)  # (U,)
        ids[:] = [PADDING, *(item.item_id for item in items[1:])]  # type: ignore[union-attr]
        empty = np.zeros(0, dtype=np.int64)
        rows = table_row[mentions]  # (M,)
        owners = np.concatenate(self._owners) if self._owners else empty  # (M,)
        sources = np.concatenate(self._sources) if self._sources else np.zeros(0, dtype=np.int8)  # (M,)
        real = rows > 0
        rows, owners, sources = rows[real], owners[real], sources[real]
        # First mention of each (user, item) wins; then each user's candidates in mention order.
        _, first = np.unique(owners * len(items) + rows, return_index=True)
        first.sort()
        first = first[np.argsort(owners[first], kind="stable")]  # (M',) by user, then mention order
        counts = np.bincount(owners[first], minlength=self.n_users)  # (B,)
        width = max(1, int(counts.max(initial=0)))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # (B,)
        columns = np.arange(len(first)) - np.repeat(starts, counts)  # (M',)
        table_rows = np.zeros((self.n_users, width), dtype=np.int64)  # (B, C)
        table_sources = np.zeros((self.n_users, width), dtype=np.int8)  # (B, C)
        table_rows[owners[first], columns] = rows[first]
        table_sources[owners[first], columns] = sources[first]
        return CandidateBatch(items, ids, table_rows, table_sources, counts)
