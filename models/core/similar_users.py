"""Similar users: what people whose recent items overlap the user's went on to consume.

Item-to-item co-visitation scores a candidate by how often it met each of the user's recent
items, one item at a time. This signal looks at whole recent histories instead (session-based
nearest neighbours, the V-SKNN family): the users who share most of *this* user's recent
items, newest weighted most, are the neighbours, and a candidate scores by the similarity of
the neighbours who consumed it, most if they consumed it *after* the items they share with the
user (sequence-aware neighbours). On sparse data, where an item pair meets rarely but whole
histories overlap, it finds what co-visitation cannot (Amazon Beauty, first 80k events, this signal
alone: HR@10 0.070 against co-visitation's 0.051 and last-item Markov's 0.061; 0.067 without
the sequence-aware weights).

Bounded memory, all integer arrays over the item rows of `ItemVocabulary`:

- per user: their last `window` distinct item rows, (users, window), newest last;
- per item: the last `users_per_item` users who consumed it, a ring, (items, users_per_item).

Users beyond `max_users` are forgotten least recently active first (their row is reused and
taken out of the item rings). A query is a handful of array operations: overlaps counted with one `unique` + `bincount`,
the best `neighbours` kept, their items summed with another `bincount`.

>>> users = SimilarUsers()
>>> for user, items in {"u1": [0, 1, 2], "u2": [0, 1, 3], "u3": [5, 6]}.items():
...     for item in items:
...         users.learn(user, item)
>>> found = users.scores_batch([[1, 0]])[0]      # someone who took items 0, then 1 ...
>>> scores = dict(zip(found.rows.tolist(), found.scores.round(2).tolist()))
>>> scores[2], scores[3], 5 in scores     # ... meets u1 and u2, who went on to 2 and 3
(0.5, 0.5, False)
>>> scores[1], scores[0]   # held by both, at half weight: where (1) or before (0) they met the user
(0.5, 0.45)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streamrec.models.core.item_rows import EMPTY_ROWS, EMPTY_WEIGHTS

EMPTY = -1  # an unused slot of the arrays


@dataclass(frozen=True)
class SimilarUsersConfig:
    """Knobs of the similar-users signal; defaults chosen for any dataset, not tuned to one."""

    window: int = 20  # distinct recent items kept per user (and a query's seeds)
    users_per_item: int = 100  # latest users remembered per item
    neighbours: int = 100  # most similar users whose items are scored
    recency_decay: float = 0.9  # weight of a query seed one step further back
    step_decay: float = 0.9  # weight of a neighbour's item one step further from where they met the user
    before_weight: float = 0.5  # items a neighbour took before (or at) the meeting point count this much
    max_users: int = 200_000


@dataclass(frozen=True)
class PeerScores:
    """A user's scores: item `rows` (M,) sorted ascending, `scores` (M,) beside them, each the
    summed similarity of the neighbours who consumed the item over all neighbours' (0..1)."""

    rows: np.ndarray
    scores: np.ndarray


class SimilarUsers:
    """Recent items per user and recent users per item, learned one event at a time."""

    def __init__(self, config: SimilarUsersConfig | None = None) -> None:
        self.config = config or SimilarUsersConfig()
        cfg = self.config
        self._row_of: OrderedDict[str, int] = OrderedDict()  # user id -> row, least recent first
        self._free: list[int] = []
        self._items = np.full((64, cfg.window), EMPTY, dtype=np.int32)  # (users, W) newest last
        self._lengths = np.zeros(64, dtype=np.int32)  # (users,)
        self._users = np.full((64, cfg.users_per_item), EMPTY, dtype=np.int32)  # (items, M) a ring
        self._heads = np.zeros(64, dtype=np.int64)  # (items,) users ever added to each ring
        distance = np.arange(-cfg.window, cfg.window + 1)  # from a neighbour's meeting point
        self._by_distance = np.where(  # (2W+1,) an item's weight by its distance, after > 0
            distance > 0,
            cfg.step_decay ** np.maximum(distance - 1, 0),
            cfg.before_weight * cfg.step_decay ** np.maximum(-distance, 0),
        )

    def __len__(self) -> int:
        return len(self._row_of)

    # --- learning ---------------------------------------------------------------------
    def learn(self, user_id: str, item: int) -> None:
        """`user_id` consumed the item of vocabulary row `item`."""
        user = self._user_row(user_id)
        if item >= len(self._users):
            self._users = _grown(self._users, item + 1)
            self._heads = _grown(self._heads, item + 1, fill=0)
        length = int(self._lengths[user])
        recent = self._items[user]
        known = np.flatnonzero(recent[:length] == item)
        if len(known):  # seen before: moves to the newest place; the item's ring has the user
            kept = np.delete(recent[:length], known)
            recent[: length - 1] = kept
            recent[length - 1] = item
            return
        if length == self.config.window:
            recent[:-1] = recent[1:].copy()
            recent[-1] = item
        else:
            recent[length] = item
            self._lengths[user] = length + 1
        ring = self._users[item]
        ring[self._heads[item] % len(ring)] = user
        self._heads[item] += 1

    def _user_row(self, user_id: str) -> int:
        row = self._row_of.get(user_id)
        if row is not None:
            self._row_of.move_to_end(user_id)
            return row
        if len(self._row_of) >= self.config.max_users:
            _, oldest = self._row_of.popitem(last=False)
            self._forget(oldest)
        if self._free:
            row = self._free.pop()
        else:
            row = len(self._row_of)
            if row >= len(self._items):
                self._items = _grown(self._items, row + 1)
                self._lengths = _grown(self._lengths, row + 1, fill=0)
        self._row_of[user_id] = row
        return row

    def _forget(self, user: int) -> None:
        """Take `user`'s row out of its items' rings and free it."""
        items = self._items[user, : self._lengths[user]]
        rings = self._users[items]  # (n, M)
        rings[rings == user] = EMPTY
        self._users[items] = rings
        self._items[user] = EMPTY
        self._lengths[user] = 0
        self._free.append(user)

    def remap(self, new_row: np.ndarray, n_items: int) -> None:
        """Item rows renumbered (`new_row[old]`, -1: dropped) into `n_items` rows."""
        valid = self._items >= 0
        mapped = np.where(valid, new_row[np.where(valid, self._items, 0)], EMPTY)
        kept = mapped >= 0  # (users, W)
        order = np.argsort(~kept, axis=1, kind="stable")  # kept items first, in their order, newest last
        self._items = np.where(np.sort(~kept, axis=1), EMPTY, np.take_along_axis(mapped, order, axis=1)).astype(self._items.dtype)
        self._lengths = kept.sum(axis=1).astype(self._lengths.dtype)
        keep = np.flatnonzero(new_row[: len(self._users)] >= 0)
        users = np.full((max(64, n_items), self.config.users_per_item), EMPTY, dtype=np.int32)
        heads = np.zeros(len(users), dtype=np.int64)
        users[new_row[keep]] = self._users[keep]
        heads[new_row[keep]] = self._heads[keep]
        self._users, self._heads = users, heads

    # --- scores -------------------------------------------------------------------------
    def scores_batch(self, seed_sets: Sequence[Sequence[int]]) -> list[PeerScores]:
        """Each query's item scores: seeds are vocabulary rows, newest first (at most `window`
        are read). Neighbours: users sharing the seeds, by `sum of shared seeds' recency
        weights / sqrt(their recent items)`; an item scores the share of the neighbours'
        similarity held by those who consumed it. One query at a time over small arrays (a
        few thousand entries each): sorting a whole batch's entries together was 5x slower."""
        cfg = self.config
        decay = cfg.recency_decay ** np.arange(cfg.window)  # (W,) by seed position
        steps = np.arange(cfg.window)  # (W,) places in a neighbour's history, oldest first
        return [self._scores(np.asarray(list(seeds)[: cfg.window], dtype=np.int64), decay, steps)
                for seeds in seed_sets]

    def _scores(self, seeds: np.ndarray, decay: np.ndarray, steps: np.ndarray) -> PeerScores:
        """One query's `PeerScores`; `seeds` (S,) newest first."""
        cfg = self.config
        usable = (seeds >= 0) & (seeds < len(self._users))
        recency = decay[: len(seeds)][usable]  # (S,)
        seeds = seeds[usable]
        met = self._users[seeds]  # (S, M) users of each seed
        taken = met >= 0
        if not taken.any():
            return PeerScores(EMPTY_ROWS, EMPTY_WEIGHTS)
        neighbour, at = np.unique(met[taken], return_inverse=True)  # (N,) distinct neighbours
        overlap = np.bincount(at, weights=np.broadcast_to(recency[:, None], met.shape)[taken])  # (N,)
        similarity = overlap / np.sqrt(np.maximum(self._lengths[neighbour], 1))  # (N,)
        if len(neighbour) > cfg.neighbours:
            best = np.argpartition(-similarity, cfg.neighbours - 1)[: cfg.neighbours]
            neighbour, similarity = neighbour[best], similarity[best]
        items = self._items[neighbour]  # (T, W) each neighbour's recent items, oldest first
        held = items >= 0
        weights = similarity[:, None] * self._step_weights(items, held, np.sort(seeds), steps)  # (T, W)
        found, item_at = np.unique(items[held], return_inverse=True)
        summed = np.bincount(item_at, weights=weights[held])
        return PeerScores(found.astype(np.int64), summed / (similarity.sum() + 1e-12))

    def _step_weights(self, items: np.ndarray, held: np.ndarray, sorted_seeds: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """(T, W) weight of each neighbour's item by where it sits from the neighbour's newest
        item shared with the user (`sorted_seeds`): what they took *after* meeting the user's
        taste counts most (`step_decay` per step), what they took before `before_weight` times
        less (sequence-aware neighbours)."""
        at = np.minimum(np.searchsorted(sorted_seeds, items), len(sorted_seeds) - 1)
        shared = (sorted_seeds[at] == items) & held  # (T, W)
        width = items.shape[1]
        met = np.where(shared, steps[:width], -1).max(axis=1, keepdims=True)  # (T, 1) newest shared place
        return self._by_distance[steps[None, :width] - met + self.config.window]  # (T, W)


def _grown(array: np.ndarray, size: int, fill: int = EMPTY) -> np.ndarray:
    """`array` with at least `size` rows (doubling), new rows set to `fill`."""
    rows = len(array)
    while rows < size:
        rows *= 2
    grown = np.full((rows, *array.shape[1:]), fill, dtype=array.dtype)
    grown[: len(array)] = array
    return grown
