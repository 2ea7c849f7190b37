"""Integer rows for item ids and the decayed neighbour tables kept over them.

`ItemVocabulary` maps item ids to rows as they are seen; `NeighbourRows` keeps, per key (an
item row, or a pair of rows), its strongest neighbours with decayed weights, bounded in both
directions. The collaborative signals (`collaborative.py`) are built from these two.

>>> vocabulary, table = ItemVocabulary(), NeighbourRows(max_neighbours=2, max_rows=10)
>>> a, b, c = (vocabulary.add(item) for item in "abc")
>>> table.add(a, b, 2.0); table.add(a, c, 1.0)
>>> {vocabulary.names[row]: share for row, share in table.normalised(a).items()}
{'b': 0.6666666666666666, 'c': 0.3333333333333333}
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Sequence

import numpy as np


class ItemVocabulary:
    """item id <-> integer row, growing as items are seen.

    >>> vocabulary = ItemVocabulary()
    >>> vocabulary.add("a"), vocabulary.add("b"), vocabulary.add("a")
    (0, 1, 0)
    >>> vocabulary.get("c") is None, vocabulary.names[1]
    (True, 'b')
    """

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.names: list[str] = []

    def add(self, item_id: str) -> int:
        row = self.rows.get(item_id)
        if row is None:
            row = self.rows[item_id] = len(self.names)
            self.names.append(item_id)
        return row

    def get(self, item_id: str) -> int | None:
        return self.rows.get(item_id)

    def __len__(self) -> int:
        return len(self.names)


class NeighbourRows:
    """key -> {neighbour row: decayed weight}, each row capped to its strongest neighbours."""

    def __init__(self, max_neighbours: int, max_rows: int) -> None:
        self.rows: dict[Hashable, dict[int, float]] = {}
        self.totals: dict[Hashable, float] = {}  # key -> all weight ever added (decayed), for shares
        self.max_neighbours = max_neighbours
        self.max_rows = max_rows

    def add(self, key: Hashable, neighbour: int, weight: float) -> None:
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = {}
            if len(self.rows) > self.max_rows:
                self._drop_weakest_rows()
        row[neighbour] = row.get(neighbour, 0.0) + weight
        self.totals[key] = self.totals.get(key, 0.0) + weight
        if len(row) > 2 * self.max_neighbours:
            kept = heapq.nlargest(self.max_neighbours, row.items(), key=lambda kv: kv[1])
            self.rows[key] = dict(kept)

    def _drop_weakest_rows(self) -> None:
        keep = int(self.max_rows * 0.9)
        strongest = heapq.nlargest(keep, self.totals.items(), key=lambda kv: kv[1])
        self.totals = dict(strongest)
        self.rows = {key: self.rows[key] for key in self.totals if key in self.rows}

    def scale(self, factor: float) -> None:
        for row in self.rows.values():
            for neighbour in row:
                row[neighbour] *= factor
        for key in self.totals:
            self.totals[key] *= factor

    def remap(self, new_row: np.ndarray, key_of: Callable[[Hashable], Hashable | None]) -> None:
        """Renumber after the vocabulary was compacted: `new_row[old] = new` (-1: dropped)."""
        rows, totals = {}, {}
        for key, row in self.rows.items():
            new_key = key_of(key)
            if new_key is None:
                continue
            kept = {int(new_row[n]): w for n, w in row.items() if new_row[n] >= 0}
            if kept:
                rows[new_key] = kept
                totals[new_key] = self.totals.get(key, 0.0)
        self.rows, self.totals = rows, totals

    def normalised(self, key: Hashable) -> dict[int, float]:
        """The row as shares of everything that followed/accompanied `key` (0..1)."""
        row = self.rows.get(key)
        if not row:
            return {}
        total = self.totals.get(key) or 1.0
        return {neighbour: weight / total for neighbour, weight in row.items()}

    def sorted_arrays(self, key: Hashable, shares: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The row as (neighbour rows (R,) ascending, weights (R,)); with `shares` the weights
        are shares of the row's total, as `normalised` (what `lookup_segments` searches).

        >>> table = NeighbourRows(max_neighbours=4, max_rows=4)
        >>> table.add("k", 3, 1.0); table.add("k", 1, 3.0)
        >>> [array.tolist() for array in table.sorted_arrays("k", shares=True)]
        [[1, 3], [0.75, 0.25]]
        """
        neighbours, weights = self.arrays(key)  # (R,), (R,)
        order = np.argsort(neighbours)
        values = weights[order] / (self.totals.get(key) or 1.0) if shares else weights[order]
        return neighbours[order], values

    def arrays(self, key: Hashable) -> tuple[np.ndarray, np.ndarray]:
        """The row as (neighbour rows (R,), weights (R,)); empty arrays if there is none."""
        row = self.rows.get(key)
        if not row:
            return EMPTY_ROWS, EMPTY_WEIGHTS
        return (
            np.fromiter(row.keys(), dtype=np.int64, count=len(row)),
            np.fromiter(row.values(), dtype=np.float64, count=len(row)),
        )


EMPTY_ROWS = np.zeros(0, dtype=np.int64)
EMPTY_WEIGHTS = np.zeros(0, dtype=np.float64)


def lookup_segments(segments: Sequence[tuple[np.ndarray, np.ndarray]], rows: np.ndarray) -> np.ndarray:
    """(B, C) `lookup_sorted(*segments[b], rows[b])` for every b in one search: each user's
    sorted keys are offset by `b * width` (width above every key), so their concatenation is
    sorted too. `rows` (B, C), -1 (or any negative row) matches nothing.

    >>> segments = [(np.array([2, 5]), np.array([0.5, 1.5])), (np.array([5]), np.array([9.0]))]
    >>> lookup_segments(segments, np.array([[5, 2, -1], [2, 5, 5]])).tolist()
    [[1.5, 0.5, 0.0], [0.0, 9.0, 9.0]]
    """
    n_rows = len(rows)
    if n_rows == 0 or not any(len(keys) for keys, _ in segments):
        return np.zeros(rows.shape, dtype=np.float64)
    width = 1 + max(int(rows.max(initial=0)), *(int(keys[-1]) for keys, _ in segments if len(keys)))
    offsets = np.arange(n_rows, dtype=np.int64) * width  # (B,)
    keys = np.concatenate([segment[0] + offset for segment, offset in zip(segments, offsets.tolist())])  # (M,)
    values = np.concatenate([segment[1] for segment in segments])  # (M,)
    wanted = np.where(rows >= 0, rows + offsets[:, None], -1)  # (B, C)
    return lookup_sorted(keys, values, wanted)


def lookup_sorted(keys: np.ndarray, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(C,) `values[i]` where `keys[i] == rows[c]`, else 0; `keys` (M,) sorted ascending.

    >>> lookup_sorted(np.array([2, 5]), np.array([0.5, 1.5]), np.array([5, 3, 2, -1])).tolist()
    [1.5, 0.0, 0.5, 0.0]
    """
    if len(keys) == 0:
        return np.zeros(rows.shape, dtype=np.float64)
    at = np.minimum(np.searchsorted(keys, rows), len(keys) - 1)
    return np.where(keys[at] == rows, values[at], 0.0)
