"""An online learned blend of candidate features: softmax regression trained test-then-learn.

Each candidate of a user carries a few features (text similarity, the model's score,
co-visitation, transitions, popularity at two scales, each scaled per user). A list ranks
candidates by `weights · features`. When the user's next event arrives, the list that was
served is judged: if the consumed item was among the candidates, one step of softmax
cross-entropy (the consumed item against the other candidates) moves the weights, with
AdaGrad steps so features of any scale learn at the same pace. No dataset-specific tuning:
the weights follow whatever stream the worker sees, from a prior where every signal counts.

>>> blend = OnlineBlend(("a", "b"), prior=(0.0, 0.0))
>>> features = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # (C=2, F=2)
>>> for _ in range(50):
...     blend.learn(features, consumed=1)          # users keep taking the candidate "b" is high on
>>> bool(blend.weights[1] > blend.weights[0])
True
>>> [int(i) for i in np.argsort(-blend.score(features))]
[1, 0]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LEARNING_RATE = 0.05
L2 = 1e-4  # pulls unused weights slowly back towards the prior


class OnlineBlend:
    """weights (F,) over named features; `score` ranks, `learn` takes one softmax step."""

    def __init__(self, names: Sequence[str], prior: Sequence[float], learning_rate: float = LEARNING_RATE) -> None:
        if len(names) != len(prior):
            raise ValueError("one prior weight per feature")
        self.names = tuple(names)
        self.prior = np.asarray(prior, dtype=np.float64)
        self.weights = self.prior.copy()
        self.learning_rate = learning_rate
        self._squares = np.full(len(names), 1e-2)  # AdaGrad's sum of squared gradients
        self.updates = 0

    def score(self, features: np.ndarray) -> np.ndarray:
        """(C,) or (B, C) blended scores of (C, F) or (B, C, F) features."""
        return features @ self.weights.astype(features.dtype)

    def learn(self, features: np.ndarray, consumed: int) -> None:
        """One step: `features` (C, F) of the candidates served, `consumed` the row taken."""
        logits = features.astype(np.float64) @ self.weights  # (C,)
        logits -= logits.max()
        p = np.exp(logits)
        p /= p.sum()
        gradient = features.T.astype(np.float64) @ p - features[consumed]  # (F,)
        gradient += L2 * (self.weights - self.prior)
        self._squares += gradient * gradient
        self.weights -= self.learning_rate * gradient / np.sqrt(self._squares)
        self.updates += 1

    def as_dict(self) -> dict[str, float]:
        return {name: round(float(w), 4) for name, w in zip(self.names, self.weights)}


@dataclass
class ServedCandidates:
    """What a user's last list was chosen from: candidate ids and their features (C, F)."""

    ids: list[str]
    features: np.ndarray
    warm: bool = True  # ranked by the blend for users with a history (else the cold one)


class ServedMemory:
    """The candidates behind each user's last list, for the last `capacity` users served
    (bounded; lost on restart, which only costs a few blend updates)."""

    def __init__(self, capacity: int = 20_000) -> None:
        self.capacity = capacity
        self._served: OrderedDict[str, ServedCandidates] = OrderedDict()

    def remember(self, user_id: str, served: ServedCandidates) -> None:
        self._served[user_id] = served
        self._served.move_to_end(user_id)
        while len(self._served) > self.capacity:
            self._served.popitem(last=False)

    def take(self, user_id: str) -> ServedCandidates | None:
        return self._served.pop(user_id, None)
