"""The baselines: one family, each learning events one at a time and recommending from what it
learned (`learn(events)`, `recommend(user_ids, k)`, the harness's `StreamSystem`).

Global popularity, time-decayed popularity (the core's `TrendingItems`, the same class the
workers' trending fallback uses), item co-occurrence over the user's last N items, last-item
transitions (first-order Markov) and River's online matrix factorisation (`FunkMF`,
`BiasedMF`, trained on each event as a positive and sampled seen items as negatives).
Two drivers run them: the prequential replay (`prequential.prequential`, test-then-learn) and
leave-one-out (`metrics.evaluate_learner`: learn every user's history, then rank each held-out
item).

All rank the items seen so far minus the user's consumed ones (`ItemSpace`), ties broken by
popularity. Count matrices are dense float32 over the items seen (growing by doubling, so
10k items take a 16,384-square matrix: 1 GiB), and a user's scores are one row sum, microseconds.

>>> from streamrec.stream.messages import Event
>>> def ev(n, user, item):
...     return Event(event_id=str(n), user_id=user, item_id=item, type="view", ts=float(n))
>>> model = MarkovBaseline()
>>> model.learn([ev(0, "u1", "a")]); model.learn([ev(1, "u1", "b")]); model.learn([ev(2, "u2", "a")])
>>> model.recommend(["u2"], k=2)   # after a came b; a itself is consumed
[['b']]
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence

import numpy as np

from streamrec.models.core.popularity import TrendingItems
from streamrec.models.core.state import EVENT_WEIGHTS
from streamrec.stream.messages import Event

_TIE_BREAK = 1e-6  # popularity share added to a model's scores to order equal ones


class ItemSpace:
    """Items seen so far as columns, popularity counts, and what each user consumed."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.column: dict[str, int] = {}
        self.counts = np.zeros(1024, dtype=np.float64)  # (capacity,)
        self.consumed: dict[str, set[int]] = {}

    @property
    def n(self) -> int:
        return len(self.items)

    def learn(self, event: Event) -> tuple[int, bool]:
        """Count the event; returns (its item's column, whether the item is new)."""
        column = self.column.get(event.item_id)
        new = column is None
        if column is None:
            column = self.column[event.item_id] = len(self.items)
            self.items.append(event.item_id)
            if column >= len(self.counts):
                self.counts = np.concatenate([self.counts, np.zeros_like(self.counts)])
        self.counts[column] += 1
        self.consumed.setdefault(event.user_id, set()).add(column)
        return column, new

    def popularity(self) -> np.ndarray:
        """(N,) share of all events per item seen."""
        counts = self.counts[: self.n]
        return counts / max(float(counts.sum()), 1.0)

    def top_k(self, user_ids: Sequence[str], scores: np.ndarray, k: int) -> list[list[str]]:
        """Best `k` item ids per row of `scores` (B, N), the user's consumed items left out."""
        scores = np.array(scores[:, : self.n], dtype=np.float64) + _TIE_BREAK * self.popularity()
        lists = []
        for row, user in enumerate(user_ids):
            consumed = self.consumed.get(user)
            if consumed:
                scores[row, list(consumed)] = -np.inf
            lists.append(self._best(scores[row], k))
        return lists

    def _best(self, row: np.ndarray, k: int) -> list[str]:
        take = min(k, len(row))
        if take == 0:
            return []
        top = np.argpartition(-row, take - 1)[:take]
        top = top[np.argsort(-row[top], kind="stable")]
        top = top[np.isfinite(row[top])]  # (<= take,) consumed items (-inf) left out
        return [self.items[c] for c in top.tolist()]


class _Baseline:
    """Keeps the item space; subclasses add what they learn and how they score."""

    name = "baseline"

    def __init__(self) -> None:
        self.space = ItemSpace()

    def learn(self, events: Sequence[Event]) -> None:
        for event in events:
            self._learn(event, *self.space.learn(event))

    def _learn(self, event: Event, column: int, new: bool) -> None:
        pass

    def recommend(self, user_ids: Sequence[str], k: int) -> list[list[str]]:
        if self.space.n == 0:
            return [[] for _ in user_ids]
        return self.space.top_k(user_ids, self._scores(user_ids), k)

    def _scores(self, user_ids: Sequence[str]) -> np.ndarray:
        """(B, N) scores over the items seen; popularity breaks ties afterwards."""
        return np.zeros((len(user_ids), self.space.n))


class PopularityBaseline(_Baseline):
    """The most interacted-with items so far, the same list for everyone."""

    name = "popularity"


class DecayedPopularityBaseline(_Baseline):
    """Trending: event weights that halve every `half_life_s` of event time (the core's class)."""

    def __init__(self, half_life_s: float = 3_600.0) -> None:
        super().__init__()
        self.trending = TrendingItems(half_life_s=half_life_s, capacity=10**9)
        self.name = f"decayed popularity ({_duration(half_life_s)})"

    def _learn(self, event: Event, column: int, new: bool) -> None:
        self.trending.learn(event.item_id, event.ts, EVENT_WEIGHTS[event.type])

    def _scores(self, user_ids: Sequence[str]) -> np.ndarray:
        row = np.array(self.trending.scores(self.space.items))  # (N,)
        return np.broadcast_to(row, (len(user_ids), len(row)))


class _PairCounts:
    """A square count matrix over item columns that grows with the item space."""

    def __init__(self) -> None:
        self.matrix = np.zeros((256, 256), dtype=np.float32)

    def ensure(self, n: int) -> None:
        size = len(self.matrix)
        if n <= size:
            return
        while size < n:
            size *= 2
        grown = np.zeros((size, size), dtype=np.float32)
        old = len(self.matrix)
        grown[:old, :old] = self.matrix
        self.matrix = grown


class CooccurrenceBaseline(_Baseline):
    """Items that others consumed near the user's last `window` items (newest weighted most).

    Counts are cosine-normalised, `c(i, j) / sqrt(n_i n_j)`, so that an item is not listed
    merely for being popular (raw counts: HR@10 0.067 on MovieLens, normalised: 0.090).
    """

    def __init__(self, window: int = 20, decay: float = 0.9, normalise: bool = True) -> None:
        super().__init__()
        self.window = window
        self.decay = decay
        self.normalise = normalise
        self.pairs = _PairCounts()
        self.recent: dict[str, deque[int]] = {}
        self.name = f"co-occurrence (last {window})"

    def _learn(self, event: Event, column: int, new: bool) -> None:
        self.pairs.ensure(self.space.n)
        recent = self.recent.setdefault(event.user_id, deque(maxlen=self.window))
        others = [c for c in set(recent) if c != column]
        if others:
            self.pairs.matrix[column, others] += 1.0
            self.pairs.matrix[others, column] += 1.0
        recent.append(column)

    def _scores(self, user_ids: Sequence[str]) -> np.ndarray:
        n = self.space.n
        scores = np.zeros((len(user_ids), n), dtype=np.float32)
        scale = (1.0 / np.sqrt(self.space.counts[:n] + 1.0)).astype(np.float32)  # (N,)
        for row, user in enumerate(user_ids):
            recent = list(self.recent.get(user, ()))[::-1]  # newest first
            if recent:
                weights = self.decay ** np.arange(len(recent), dtype=np.float32)  # (R,)
                if self.normalise:
                    weights = weights * scale[recent]
                scores[row] = weights @ self.pairs.matrix[recent, :n]  # (N,)
                if self.normalise:
                    scores[row] *= scale
        return scores


class MarkovBaseline(_Baseline):
    """What followed the user's last item in everyone's streams so far."""

    name = "last-item Markov"

    def __init__(self) -> None:
        super().__init__()
        self.transitions = _PairCounts()
        self.last: dict[str, int] = {}

    def _learn(self, event: Event, column: int, new: bool) -> None:
        self.transitions.ensure(self.space.n)
        previous = self.last.get(event.user_id)
        if previous is not None and previous != column:
            self.transitions.matrix[previous, column] += 1.0
        self.last[event.user_id] = column

    def _scores(self, user_ids: Sequence[str]) -> np.ndarray:
        n = self.space.n
        scores = np.zeros((len(user_ids), n), dtype=np.float32)
        for row, user in enumerate(user_ids):
            last = self.last.get(user)
            if last is not None:
                scores[row] = self.transitions.matrix[last, :n]
        return scores


class RiverMFBaseline(_Baseline):
    """River's online matrix factorisation on implicit feedback.

    Each event is learned as a positive (y=1) and `negatives` items drawn uniformly from the
    items seen so far as negatives (y=0), one SGD step each; all items are then ranked by the
    model's predicted score (user and item factors, plus biases for `BiasedMF`).
    """

    def __init__(self, kind: str = "FunkMF", n_factors: int = 16, lr: float = 0.05,
                 l2: float = 0.001, negatives: int = 4, seed: int = 0) -> None:
        from river import optim, reco

        super().__init__()
        if kind not in ("FunkMF", "BiasedMF"):
            raise ValueError(f"kind must be FunkMF or BiasedMF, got {kind!r}")
        init = optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed)
        if kind == "FunkMF":
            self.model = reco.FunkMF(n_factors=n_factors, optimizer=optim.SGD(lr), l2=l2,
                                     initializer=init, seed=seed)
        else:
            self.model = reco.BiasedMF(n_factors=n_factors, bias_optimizer=optim.SGD(lr),
                                       latent_optimizer=optim.SGD(lr), l2_bias=l2, l2_latent=l2,
                                       latent_initializer=init, seed=seed)
        self.biased = kind == "BiasedMF"
        self.negatives = negatives
        self.factors = np.zeros((1024, n_factors), dtype=np.float64)  # (capacity, F) item rows
        self.biases = np.zeros(1024, dtype=np.float64)  # (capacity,)
        self.rng = random.Random(seed)
        self.name = f"River {kind}"

    def _learn(self, event: Event, column: int, new: bool) -> None:
        touched = [column]
        self.model.learn_one(event.user_id, event.item_id, 1.0)
        for _ in range(self.negatives):
            other = self.rng.randrange(self.space.n)
            if other != column:
                self.model.learn_one(event.user_id, self.space.items[other], 0.0)
                touched.append(other)
        if self.space.n > len(self.factors):  # grow the mirrors of River's item weights
            self.factors = np.concatenate([self.factors, np.zeros_like(self.factors)])
            self.biases = np.concatenate([self.biases, np.zeros_like(self.biases)])
        for row in touched:  # River keeps weights in dicts: mirror the rows it changed
            item = self.space.items[row]
            self.factors[row] = self.model.i_latents[item]
            if self.biased:
                self.biases[row] = self.model.i_biases[item]

    def _scores(self, user_ids: Sequence[str]) -> np.ndarray:
        n = self.space.n
        users = np.stack([self.model.u_latents[user] for user in user_ids])  # (B, F)
        scores = users @ self.factors[:n].T  # (B, N)
        return scores + self.biases[None, :n] if self.biased else scores


def default_baselines(half_life_s: float = 3_600.0, seed: int = 0) -> list[_Baseline]:
    """Every baseline of the harness, with the settings the evaluation docs report."""
    return [
        PopularityBaseline(),
        DecayedPopularityBaseline(half_life_s),
        CooccurrenceBaseline(window=20),
        MarkovBaseline(),
        RiverMFBaseline("FunkMF", seed=seed),
        RiverMFBaseline("BiasedMF", seed=seed),
    ]


def _duration(seconds: float) -> str:
    """'1h', '1d', '90s': a half-life as people write it."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
