"""An online learned blend of candidate features: softmax regression trained test-then-learn.

Each candidate of a user carries a few features (text similarity, the model's score,
co-visitation, transitions, popularity at two scales, each scaled per user). A list ranks
candidates by `weights · features`. When the user's next event arrives, the list that was
served is judged: if the consumed item was among the candidates, one step of softmax
cross-entropy (the consumed item against the other candidates) moves the weights, with
AdaGrad steps (whose sums forget, so they keep following a drifting stream) so features of
any scale learn at the same pace. No dataset-specific tuning:
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
# AdaGrad's sums of squared gradients keep this share per update (RMSProp-like): plain
# AdaGrad's steps shrink as 1/sqrt(updates) and stop following a stream whose signals drift;
# with forgetting they settle at the size of the last ~100 updates' gradients.
SQUARES_KEPT = 0.99
L2 = 1e-4  # pulls unused weights slowly back towards the prior
HIDDEN_UNITS = 16  # the residual's width


class OnlineBlend:
    """Linear weights (F,) over named features plus a small learned residual; `score` ranks,
    `learn` takes one softmax step.

    score(x) = w·x + v·relu(W x + b), with W (H, F), b (H,), v (H,). The residual starts at
    zero (v = 0), so a new blend ranks exactly as its linear prior and the hidden units grow
    only as far as the stream shows that features interact (e.g. a transition share that
    means more where the user's last item has a long row). `hidden=0`: linear only.
    """

    def __init__(
        self,
        names: Sequence[str],
        prior: Sequence[float],
        learning_rate: float = LEARNING_RATE,
        hidden: int | None = None,
        seed: int = 0,
    ) -> None:
        if len(names) != len(prior):
            raise ValueError("one prior weight per feature")
        self.names = tuple(names)
        self.prior = np.asarray(prior, dtype=np.float64)
        self.weights = self.prior.copy()
        self.learning_rate = learning_rate
        self._squares = np.full(len(names), 1e-2)  # AdaGrad's sum of squared gradients
        hidden = HIDDEN_UNITS if hidden is None else hidden
        rng = np.random.default_rng(seed)
        f = len(names)
        self.hidden_in = rng.normal(0.0, 1.0 / np.sqrt(max(f, 1)), size=(hidden, f))  # (H, F)
        self.hidden_bias = np.zeros(hidden)  # (H,)
        self.hidden_out = np.zeros(hidden)  # (H,) zero: the residual starts switched off
        self._squares_in = np.full((hidden, f), 1e-2)
        self._squares_bias = np.full(hidden, 1e-2)
        self._squares_out = np.full(hidden, 1e-2)
        self.updates = 0

    def score(self, features: np.ndarray) -> np.ndarray:
        """(C,) or (B, C) blended scores of (C, F) or (B, C, F) features."""
        dtype = features.dtype
        linear = features @ self.weights.astype(dtype)
        if not len(self.hidden_out) or not self.hidden_out.any():
            return linear
        activations = np.maximum(features @ self.hidden_in.T.astype(dtype) + self.hidden_bias.astype(dtype), 0)  # (..., H)
        return linear + activations @ self.hidden_out.astype(dtype)

    def learn(self, features: np.ndarray, consumed: int) -> None:
        """One step: `features` (C, F) of the candidates served, `consumed` the row taken."""
        x = features.astype(np.float64)  # (C, F)
        pre = x @ self.hidden_in.T + self.hidden_bias  # (C, H)
        active = pre > 0
        h = np.where(active, pre, 0.0)  # (C, H)
        logits = x @ self.weights + h @ self.hidden_out  # (C,)
        logits -= logits.max()
        p = np.exp(logits)
        p /= p.sum()
        g = p.copy()
        g[consumed] -= 1.0  # (C,) d loss / d score
        gradient = x.T @ g + L2 * (self.weights - self.prior)  # (F,)
        self._squares *= SQUARES_KEPT
        self._squares += gradient * gradient
        self.weights -= self.learning_rate * gradient / np.sqrt(self._squares)
        if len(self.hidden_out):
            back = (g[:, None] * active) * self.hidden_out  # (C, H) d loss / d pre-activation
            grad_out = h.T @ g + L2 * self.hidden_out  # (H,)
            grad_in = back.T @ x  # (H, F)
            grad_bias = back.sum(axis=0)  # (H,)
            for value, grad, squares in (
                (self.hidden_out, grad_out, self._squares_out),
                (self.hidden_in, grad_in, self._squares_in),
                (self.hidden_bias, grad_bias, self._squares_bias),
            ):
                squares *= SQUARES_KEPT
                squares += grad * grad
                value -= self.learning_rate * grad / np.sqrt(squares)
        self.updates += 1

    def as_dict(self) -> dict[str, float]:
        return {name: round(float(w), 4) for name, w in zip(self.names, self.weights)}


@dataclass
class ServedCandidates:
    """What a user's last list was chosen from: candidate ids and their features (C, F)."""

    ids: list[str]
    features: np.ndarray
    warm: bool = True  # ranked by the blend for users with a history (else the cold one)
    sources: np.ndarray | None = None  # (C,) each candidate's `Source.code`, when known


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
