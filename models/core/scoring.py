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


@dataclass(frozen=True)
class ScoringBatch:
    """One micro-batch of users, padded to the longest history and candidate list."""

    history: torch.Tensor  # (B, L, D) vectors of each user's recent items, zeros where padded
    history_weights: torch.Tensor  # (B, L) event-type x recency weight, 0 where padded
    candidates: torch.Tensor  # (B, C, D) candidate item vectors, zeros where padded
    candidate_mask: torch.Tensor  # (B, C) True where a real candidate sits
    candidate_ids: list[list[str]] | None = None  # (B, <=C) ids of the real candidates
    user_vectors: torch.Tensor | None = None  # (B, D') the scorer's own user vectors, if any


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
        history = batch.history.to(self.device)  # (B, L, D)
        weights = batch.history_weights.to(self.device)  # (B, L)
        candidates = batch.candidates.to(self.device)  # (B, C, D)
        user = torch.einsum("bl,bld->bd", weights, history)  # (B, D)
        user = torch.nn.functional.normalize(user, dim=-1)
        scores = torch.einsum("bd,bcd->bc", user, candidates)  # (B, C)
        mask = batch.candidate_mask.to(self.device)
        return scores.masked_fill(~mask, float("-inf")).cpu()
