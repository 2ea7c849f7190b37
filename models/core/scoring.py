"""The `Scorer` interface of the core and its first implementation, content similarity.

A scorer sees one micro-batch at once as padded tensors and returns one score per candidate, in
a single batched torch pass. The learned ranker (`serving.RankerScorer`) plugs in behind the same
interface and brings a user tower and a retrieval index of its own (`SequenceScorer`).

>>> import torch
>>> hist = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])            # (B=1, L=2, D=2)
>>> batch = ScoringBatch(
...     history=hist, history_weights=torch.tensor([[3.0, 1.0]]),
...     candidates=torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]]),  # (B=1, C=3, D=2)
...     candidate_mask=torch.tensor([[True, True, False]]))
>>> scores = ContentScorer().score(batch)                       # (B=1, C=3)
>>> bool(scores[0, 0] > scores[0, 1]), bool(scores[0, 2] == float("-inf"))
(True, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

CONTENT_SCORER_VERSION = "content-v1"


PRODUCT_BLOCK = 32  # users per block when candidate vectors are gathered from a table


@dataclass(frozen=True)
class ScoringBatch:
    """One micro-batch of users, padded to the longest history and candidate list.

    The candidates' vectors come either as one (B, C, D) tensor (`candidates`) or as rows
    (B, C) of a table of the batch's distinct items (`item_vectors` (U, D), `item_rows`):
    then they are gathered a block of users at a time where needed, never all at once.
    """

    history: torch.Tensor  # (B, L, D) vectors of each user's recent items, zeros where padded
    history_weights: torch.Tensor  # (B, L) event-type x recency weight, 0 where padded
    candidates: torch.Tensor | None  # (B, C, D) candidate item vectors, zeros where padded
    candidate_mask: torch.Tensor  # (B, C) True where a real candidate sits
    candidate_ids: list[list[str]] | None = None  # (B, <=C) ids of the real candidates
    user_vectors: torch.Tensor | None = None  # (B, D') the scorer's own user vectors, if any
    item_vectors: torch.Tensor | None = None  # (U, D) the distinct candidates' vectors
    item_rows: torch.Tensor | None = None  # (B, C) int64 rows of `item_vectors`
    item_ids: list[str] | None = None  # (U,) the ids of `item_vectors`' rows

    def candidate_vectors(self, users: slice | None = None) -> torch.Tensor:
        """(B, C, D) the candidates' vectors (of the users in `users` only, if given)."""
        users = users if users is not None else slice(None)
        if self.candidates is not None:
            return self.candidates[users]
        if self.item_vectors is None or self.item_rows is None:
            raise ValueError("a scoring batch needs candidates or item_vectors and item_rows")
        return self.item_vectors[self.item_rows[users]]

    def candidate_products(self, queries: torch.Tensor) -> torch.Tensor:
        """(B, C, Q) dot products of each user's candidates with their Q query vectors
        `queries` (B, Q, D), gathering candidate vectors a block of users at a time (in numpy:
        single-threaded gathers and small products, which torch would spread over its thread
        pool for nothing)."""
        n_users, n_candidates = self.candidate_mask.shape
        transposed = queries.numpy().transpose(0, 2, 1)  # (B, D, Q)
        products = np.empty((n_users, n_candidates, queries.shape[1]), dtype=transposed.dtype)
        if self.candidates is not None:
            return torch.from_numpy(np.matmul(self.candidates.numpy(), transposed, out=products))
        if self.item_vectors is None or self.item_rows is None:
            raise ValueError("a scoring batch needs candidates or item_vectors and item_rows")
        table, rows = self.item_vectors.numpy(), self.item_rows.numpy()
        for start in range(0, n_users, PRODUCT_BLOCK):
            block = slice(start, start + PRODUCT_BLOCK)
            np.matmul(table[rows[block]], transposed[block], out=products[block])  # (b, C, D) x (b, D, Q)
        return torch.from_numpy(products)


def content_user_vectors(batch: ScoringBatch) -> torch.Tensor:
    """(B, D) each user's recent item vectors, weighted and normalised."""
    user = torch.einsum("bl,bld->bd", batch.history_weights, batch.history)  # (B, D)
    return torch.nn.functional.normalize(user, dim=-1)


class Scorer(Protocol):
    """Anything that ranks candidates for a batch of users."""

    version: str  # goes into every recommendation's `model_version`

    def score(self, batch: ScoringBatch) -> torch.Tensor:
        """Scores (B, C); padded candidates get -inf."""
        ...


class SequenceScorer(Scorer, Protocol):
    """A scorer with its own user tower and retrieval index (the learned ranker)."""

    history_length: int  # most recent events the user tower reads
    retrieval: Any  # ItemIndex of this version's item vectors (dot product), or None

    def user_vectors(
        self, histories: Sequence[Sequence[Any]], text: Mapping[str, np.ndarray]
    ) -> torch.Tensor:
        """(B, D') from each user's recent events (oldest first) and item text vectors."""
        ...

    def queries(self, users: torch.Tensor) -> np.ndarray:
        """Retrieval queries (B, D') for `retrieval`."""
        ...


class ContentScorer:
    """Cosine similarity between a candidate and the user's weighted mean of recent items."""

    version = CONTENT_SCORER_VERSION

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    @torch.inference_mode()
    def score(self, batch: ScoringBatch) -> torch.Tensor:
        if self.device.type != "cpu":  # one transfer of the whole batch, scored there
            user = content_user_vectors(batch).to(self.device)  # (B, D)
            candidates = batch.candidate_vectors().to(self.device)  # (B, C, D)
            scores = torch.einsum("bd,bcd->bc", user, candidates).cpu()  # (B, C)
        else:
            user = content_user_vectors(batch)  # (B, D)
            scores = batch.candidate_products(user[:, None, :])[..., 0]  # (B, C)
        return scores.masked_fill(~batch.candidate_mask, float("-inf"))
