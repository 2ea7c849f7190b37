"""Baselines for the evaluation harness: popularity, item co-occurrence, last-item Markov.

Each implements `evaluation.SequenceModel` (fit on training sequences, score every item per
history), with sparse count matrices so a 10k-item catalogue fits in well under a minute.

>>> from streamrec.models.learning.ranker import Step
>>> train = {"u1": [Step("a", "view", 0), Step("b", "view", 1)], "u2": [Step("a", "view", 0), Step("b", "view", 1)]}
>>> model = MarkovModel(); model.fit(train, ["a", "b", "c"])
>>> int(np.argmax(model.score([[Step("a", "view", 5)]])[0]))   # after a comes b
1
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import sparse

from streamrec.models.learning.ranker import Step

_TIE_BREAK = 1e-6  # popularity share added to break ties among equal counts


class _Base:
    name = "base"

    def fit(self, train: Mapping[str, Sequence[Step]], items: Sequence[str]) -> None:
        self.column = {item: n for n, item in enumerate(items)}
        self.n_items = len(items)
        counts = np.zeros(self.n_items, dtype=np.float64)
        for steps in train.values():
            for step in steps:
                if step.item_id in self.column:
                    counts[self.column[step.item_id]] += 1
        self.popularity = counts / max(counts.sum(), 1.0)  # (N,)
        self._fit(train)

    def _fit(self, train: Mapping[str, Sequence[Step]]) -> None:
        pass

    def _rows(self, history: Sequence[Step]) -> list[int]:
        return [self.column[s.item_id] for s in history if s.item_id in self.column]


class PopularityModel(_Base):
    """Most interacted-with items first, the same list for everyone."""

    name = "popularity"

    def score(self, histories: Sequence[Sequence[Step]]) -> np.ndarray:
        return np.tile(self.popularity.astype(np.float32), (len(histories), 1))  # (B, N)


class ItemCooccurrenceModel(_Base):
    """Items that appeared near the user's recent items in others' sequences.

    Counts pairs within `window` steps of each other in training sequences; a user's score
    sums the rows of their last `window` items, the newest weighted most (`decay` per step).
    """

    def __init__(self, window: int = 20, decay: float = 0.9) -> None:
        self.window = window
        self.decay = decay
        self.name = f"co-occurrence (last {window})"

    def _fit(self, train: Mapping[str, Sequence[Step]]) -> None:
        rows, cols = [], []
        for steps in train.values():
            ids = self._rows(steps)
            for n, item in enumerate(ids):
                for other in ids[max(0, n - self.window) : n]:
                    if other != item:
                        rows += [item, other]
                        cols += [other, item]
        data = np.ones(len(rows), dtype=np.float32)
        self.pairs = sparse.csr_matrix((data, (rows, cols)), shape=(self.n_items, self.n_items))

    def score(self, histories: Sequence[Sequence[Step]]) -> np.ndarray:
        weights = sparse.lil_matrix((len(histories), self.n_items), dtype=np.float32)
        for b, history in enumerate(histories):
            recent = self._rows(history)[-self.window :]
            for age, item in enumerate(reversed(recent)):
                weights[b, item] += self.decay**age
        scores = (weights.tocsr() @ self.pairs).toarray()  # (B, N)
        return (scores + _TIE_BREAK * self.popularity).astype(np.float32)


class MarkovModel(_Base):
    """What followed the user's last item in others' sequences (first-order transitions)."""

    name = "last-item Markov"

    def _fit(self, train: Mapping[str, Sequence[Step]]) -> None:
        rows, cols = [], []
        for steps in train.values():
            ids = self._rows(steps)
            rows += ids[:-1]
            cols += ids[1:]
        data = np.ones(len(rows), dtype=np.float32)
        self.transitions = sparse.csr_matrix((data, (rows, cols)), shape=(self.n_items, self.n_items))

    def score(self, histories: Sequence[Sequence[Step]]) -> np.ndarray:
        scores = np.tile(_TIE_BREAK * self.popularity.astype(np.float32), (len(histories), 1))  # (B, N)
        for b, history in enumerate(histories):
            ids = self._rows(history)
            if ids:
                scores[b] += self.transitions.getrow(ids[-1]).toarray()[0]
        return scores
