"""Ranking a micro-batch's candidates: features, one blended score, top-K with a reason each.

Features per (user, candidate), each in 0..1 (`FEATURES`):
- `text`: cosine between the candidate's text vector and the user's weighted recent items,
  `text_last` the same to the newest item alone (scaled per user);
- `model`: the serving scorer's score (the ranker's; 0 while the content scorer serves);
- `covisit` (cosine, and `covisit_best` scaled per user), `covisit_seeds` (the share of the
  user's recent items it goes with), `covisit_last` (with the newest item alone), `next`, `next2`, `popular`, `popular_now`,
  `peers` (the share of similar users' similarity behind the candidate), `peers_best` (scaled
  per user) and `follows` (what followed the user's last few items within a few steps,
  scaled per user): the collaborative signals; `next_support` (how often the last item was followed at all) and
  `history` (how many recent items the user has) describe the user, not the candidate
  (`CONTEXT_FEATURES`: they matter only through the blend's residual, never as a reason);
- `trending`: decayed popularity on event time (the worker's trending counts).

`OnlineBlend` weighs them (a linear prior plus a small learned residual that captures how
the signals interact, e.g. transitions that count for more after a well-followed item),
learned test-then-learn from what users consume next (`Recommender.learn`). Users without a
usable history are ranked by a second blend over the
popularity features alone. Reasons are built for the K items shown only, from the feature
that contributed most to each item's score.

Shapes: B users, C candidates (padded), L history items, D text dims, F features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from streamrec.models.core.blend import OnlineBlend, ServedCandidates
from streamrec.models.core.candidate_batch import CandidateBatch, Source
from streamrec.models.core.candidates import Profile
from streamrec.models.core.collaborative import FEATURES as COLLABORATIVE_FEATURES
from streamrec.models.core.collaborative import CollaborativeSignals, distinct_recent
from streamrec.models.core.popularity import TrendingItems
from streamrec.models.core.scoring import ContentScorer, Scorer, ScoringBatch, content_user_vectors
from streamrec.stream.messages import RecommendedItem

FEATURES = ("text", "text_last", "model", *COLLABORATIVE_FEATURES, "trending")
# Context of the user rather than a property of the candidate: they shape the residual's
# interactions and are never given as a reason.
CONTEXT_FEATURES = ("next_support", "history")
# Where the learned blend starts: every signal counts, text and co-visitation most. Chosen
# for any stream (not tuned on one); the online updates move them within a few thousand events.
PRIOR = {"text": 1.0, "text_last": 0.0, "model": 0.5, "covisit": 1.0, "covisit_best": 1.0, "covisit_seeds": 0.0, "covisit_last": 0.0, "next": 1.0,
         "next2": 0.5, "next_support": 0.0, "history": 0.0, "popular": 0.3, "popular_now": 0.3, "trending": 0.3, "peers": 0.5, "peers_best": 0.5, "follows": 1.0}
POPULARITY_FEATURES = ("popular", "popular_now", "trending")
_CONTEXT_COLUMNS = [FEATURES.index(name) for name in CONTEXT_FEATURES]
_NEIGHBOUR = Source.NEIGHBOUR.code
MMR_POOL = 3  # with diversity on, a list is picked from the best MMR_POOL * k candidates

TRENDING_REASON = "trending"
MODEL_REASON = "picked for you after {title}"
SIMILAR_REASON = "similar to {title}"
COVISIT_REASON = "often viewed with {title}"
NEXT_REASON = "often next after {title}"
PEERS_REASON = "chosen by people with recent picks like yours"


def new_blend() -> OnlineBlend:
    """The blend for users with a history: every feature."""
    return OnlineBlend(FEATURES, [PRIOR[name] for name in FEATURES])


def new_cold_blend() -> OnlineBlend:
    """The blend for users without a usable history: popularity at each scale."""
    return OnlineBlend(FEATURES, [PRIOR[name] if name in POPULARITY_FEATURES else 0.0 for name in FEATURES])


@dataclass
class RankedCandidates:
    """One user's list before it becomes messages: items shown, and what it was chosen from."""

    items: list[RecommendedItem]
    served: ServedCandidates | None


class ListRanker:
    """Features -> blended scores -> top-K, for one micro-batch."""

    def __init__(
        self,
        trending: TrendingItems,
        collaborative: CollaborativeSignals | None,
        blend: OnlineBlend,
        cold_blend: OnlineBlend,
        k: int,
        diversity: float = 0.0,
    ) -> None:
        self.diversity = diversity
        self.trending = trending
        self.collaborative = collaborative
        self.blend = blend
        self.cold_blend = cold_blend
        self.k = k

    def rank(
        self,
        profiles: Sequence[Profile],
        candidates: CandidateBatch,
        users: torch.Tensor | None,
        scorer: Scorer,
    ) -> list[RankedCandidates]:
        ranked: list[RankedCandidates] = [RankedCandidates([], None) for _ in profiles]
        warm = [row for row, profile in enumerate(profiles) if profile.history]
        cold = [row for row, profile in enumerate(profiles) if not profile.history]
        if cold:
            for row, result in zip(cold, self._rank_cold([profiles[r] for r in cold], candidates.take(cold))):
                ranked[row] = result
        if warm:
            for row, result in zip(warm, self._rank_warm(
                [profiles[r] for r in warm], candidates.take(warm),
                users[warm] if users is not None else None, scorer,
            )):
                ranked[row] = result
        return ranked

    def _rank_cold(self, profiles: Sequence[Profile], candidates: CandidateBatch) -> list[RankedCandidates]:
        """Users without a usable history: the cold blend over the popularity features."""
        mask = candidates.mask  # (B, C)
        features = np.zeros((*mask.shape, len(FEATURES)), dtype=np.float32)  # (B, C, F)
        self._fill_counts(features, [profile.items for profile in profiles], candidates, mask)
        scores = np.where(mask, self.cold_blend.score(features), -np.inf)  # (B, C)
        top = np.argsort(-scores, axis=1, kind="stable")[:, : self.k]  # (B, k)
        results = []
        for b, n in enumerate(candidates.counts.tolist()):
            if n == 0:
                results.append(RankedCandidates([], None))
                continue
            ids = candidates.ids_of(b)
            items = [
                RecommendedItem(item_id=ids[c], score=round(float(scores[b, c]), 6), reason=TRENDING_REASON)
                for c in top[b, : min(n, self.k)].tolist()
            ]
            results.append(RankedCandidates(items, ServedCandidates(ids, features[b, :n].copy(), warm=False)))
        return results

    def _rank_warm(
        self,
        profiles: Sequence[Profile],
        candidates: CandidateBatch,
        users: torch.Tensor | None,
        scorer: Scorer,
    ) -> list[RankedCandidates]:
        batch = pad(profiles, candidates, users)
        mask = batch.candidate_mask.numpy()  # (B, C)
        queries = torch.stack([content_user_vectors(batch), batch.history[:, 0]], dim=1)  # (B, 2, D)
        products = batch.candidate_products(queries).numpy()  # (B, C, 2) cosines: to the user, to the newest item
        features = np.zeros((*mask.shape, len(FEATURES)), dtype=np.float32)  # (B, C, F)
        features[..., FEATURES.index("text")] = _scale_per_user(products[..., 0], mask)
        features[..., FEATURES.index("text_last")] = _scale_per_user(products[..., 1], mask)
        if not isinstance(scorer, ContentScorer):  # the content scorer's score is `text` already
            model = scorer.score(batch)  # (B, C)
            features[..., FEATURES.index("model")] = _scale_per_user(model.float().numpy(), mask)
        self._fill_counts(features, [profile.items for profile in profiles], candidates, mask)
        scores = np.where(mask, self.blend.score(features), -np.inf)  # (B, C)
        take = min(self.k, scores.shape[1])
        pool = min(scores.shape[1], MMR_POOL * self.k) if self.diversity > 0 else take
        top = np.argsort(-scores, axis=1, kind="stable")[:, :pool]  # (B, pool) padding (-inf) last
        real = np.isfinite(np.take_along_axis(scores, top, axis=1)).sum(axis=1).tolist()  # (B,)
        shown = [top[b, :n].tolist() for b, n in enumerate(real)]
        if self.diversity > 0:
            shown = [mmr(chosen, scores[b], batch.candidate_vectors(slice(b, b + 1))[0].numpy(), take, self.diversity)
                     for b, chosen in enumerate(shown)]
        columns = _padded_columns(shown)  # (B, K)
        users = np.arange(len(shown))[:, None]
        contributions = features[users, columns] * self.blend.weights.astype(np.float32)  # (B, K, F) linear parts
        contributions[..., _CONTEXT_COLUMNS] = -np.inf
        strongest = contributions.argmax(axis=2).tolist()  # (B, K) the feature behind each shown item's reason
        closest = _closest_history(batch, shown, columns)
        results = []
        for b, (profile, chosen) in enumerate(zip(profiles, shown)):
            ids = candidates.ids_of(b)
            reasons = self._reasons(profile, candidates.sources[b], ids, chosen, strongest[b], closest[b])
            items = [
                RecommendedItem(item_id=ids[c], score=round(float(scores[b, c]), 6), reason=reason)
                for c, reason in zip(chosen, reasons)
            ]
            served = ServedCandidates(ids, features[b, : len(ids)].copy(), sources=candidates.sources[b, : len(ids)].copy())
            results.append(RankedCandidates(items, served))
        return results

    def _fill_counts(
        self, features: np.ndarray, user_items: Sequence[Sequence[str]], table: CandidateBatch, mask: np.ndarray
    ) -> None:
        """The collaborative and trending columns of the batch's (B, C, F) features, in place:
        each distinct candidate's counts looked up once (`table`), gathered to (B, C), and
        the per-user columns filled for the whole batch at once. `mask` (B, C): real candidates."""
        if self.collaborative is not None:
            vocabulary_rows = self.collaborative.rows_of_ids(table.ids)  # (U,) -1: never in an event
            rows = np.where(mask, vocabulary_rows[table.rows], -1)  # (B, C)
            start = FEATURES.index(COLLABORATIVE_FEATURES[0])
            features[..., start : start + len(COLLABORATIVE_FEATURES)] = self.collaborative.batch_features(
                user_items, rows
            )
        trending = np.asarray(self.trending.scores(table.ids), dtype=np.float32)[table.rows]  # (B, C)
        trending[~mask] = 0.0
        peak = trending.max(axis=1, initial=0.0, keepdims=True)  # (B, 1)
        features[..., FEATURES.index("trending")] = np.where(peak > 0, trending / np.where(peak > 0, peak, 1.0), 0.0)

    def _reasons(
        self,
        profile: Profile,
        sources: np.ndarray,
        ids: Sequence[str],
        chosen: Sequence[int],
        strongest: Sequence[int],
        closest: Sequence[int],
    ) -> list[str]:
        """A reason for each shown item from the signal that added most to its score
        (`sources` (C,): each candidate's `Source.code`; per shown item, `strongest`: that
        feature's column, `closest`: the history position most text-similar to it)."""
        reasons = []
        last = profile.history[0].title if profile.history else ""
        for position, (c, strongest_feature) in enumerate(zip(chosen, strongest)):
            feature = FEATURES[strongest_feature]
            item_id = ids[c]
            if feature == "text" or (feature == "model" and sources[c] == _NEIGHBOUR):
                reasons.append(SIMILAR_REASON.format(title=profile.history[closest[position]].title))
            elif feature == "text_last":
                reasons.append(SIMILAR_REASON.format(title=last))
            elif feature == "model":
                reasons.append(MODEL_REASON.format(title=last))
            elif feature in ("covisit", "covisit_best", "covisit_seeds", "covisit_last"):
                reasons.append(COVISIT_REASON.format(title=self._covisit_seed(profile, item_id)))
            elif feature in ("next", "next2", "follows"):
                reasons.append(NEXT_REASON.format(title=last))
            elif feature in ("peers", "peers_best"):
                reasons.append(PEERS_REASON)
            else:
                reasons.append(TRENDING_REASON)
        return reasons

    def _covisit_seed(self, profile: Profile, item_id: str) -> str:
        """The title of the user's most recent item that `item_id` was co-visited with."""
        assert self.collaborative is not None
        titles = {item.item_id: item.title for item in profile.history}
        for seed in distinct_recent(profile.items, self.collaborative.config.seed_items):
            if seed in titles and self.collaborative.covisited_with(seed, item_id):
                return titles[seed]
        return profile.history[0].title


def mmr(order: Sequence[int], scores: np.ndarray, vectors: np.ndarray, k: int, diversity: float) -> list[int]:
    """Maximal marginal relevance: `k` of the candidates `order` (best first), each next pick
    maximising `(1 - diversity) * relevance - diversity * (its highest cosine to a pick so far)`,
    relevance being the score scaled to 0..1 over `order`. `scores` (C,), `vectors` (C, D) unit.

    >>> v = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # 0 and 1 alike
    >>> s = np.array([1.0, 0.9, 0.5])
    >>> mmr([0, 1, 2], s, v, 2, diversity=0.0), mmr([0, 1, 2], s, v, 2, diversity=0.5)
    ([0, 1], [0, 2])
    """
    if len(order) <= 1:
        return list(order)[:k]
    pool = np.asarray(order)
    relevance = scores[pool].astype(np.float64)
    span = relevance.max() - relevance.min()
    relevance = (relevance - relevance.min()) / span if span > 0 else np.ones_like(relevance)
    pool_vectors = vectors[pool]  # (P, D)
    closest = np.zeros(len(pool))  # (P,) highest cosine to the picks so far
    free = np.ones(len(pool), dtype=bool)
    picks: list[int] = []
    for _ in range(min(k, len(pool))):
        gain = np.where(free, (1.0 - diversity) * relevance - diversity * closest, -np.inf)
        best = int(np.argmax(gain))
        picks.append(int(pool[best]))
        free[best] = False
        closest = np.maximum(closest, pool_vectors @ pool_vectors[best])
    return picks


def _padded_columns(shown: Sequence[Sequence[int]]) -> np.ndarray:
    """(B, K) each user's shown candidate columns, padded with column 0."""
    columns = np.zeros((len(shown), max((len(chosen) for chosen in shown), default=0)), dtype=np.int64)
    for b, chosen in enumerate(shown):
        columns[b, : len(chosen)] = chosen
    return columns


def _closest_history(batch: ScoringBatch, shown: Sequence[Sequence[int]], columns: np.ndarray) -> list[list[int]]:
    """Per user and shown candidate column: the position of the user's history item whose
    text is most similar to it (one batched product, for the "similar to <title>" reasons).
    `columns` (B, K): `shown`, padded."""
    if columns.shape[1] == 0:
        return [[] for _ in shown]
    users = np.arange(len(shown))[:, None]
    if batch.item_vectors is not None and batch.item_rows is not None:  # gather only the shown ones
        picked = batch.item_vectors.numpy()[batch.item_rows.numpy()[users, columns]]  # (B, K, D)
    else:
        picked = batch.candidate_vectors().numpy()[users, columns]  # (B, K, D)
    similarity = np.einsum("bkd,bld->bkl", picked, batch.history.numpy())  # (B, K, L)
    similarity[np.broadcast_to(batch.history_weights.numpy()[:, None, :] <= 0, similarity.shape)] = -2.0
    best = similarity.argmax(axis=2)  # (B, K)
    return [best[b, : len(chosen)].tolist() for b, chosen in enumerate(shown)]


def _scale_per_user(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, C) scores -> 0..1 per row (min-max over the real candidates), 0 where padded."""
    real = np.where(mask, scores, np.nan)
    with np.errstate(all="ignore"):
        low = np.nanmin(real, axis=1, keepdims=True)
        high = np.nanmax(real, axis=1, keepdims=True)
        span = np.where(high - low > 0, high - low, 1.0)
        scaled = (real - low) / span
    return np.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def pad(profiles: Sequence[Profile], candidates: CandidateBatch, users: torch.Tensor | None = None) -> ScoringBatch:
    """Pack users into padded tensors: histories (B, L, D), and the candidates as rows (B, C)
    of the batch's table of distinct items (U, D)."""
    dim = profiles[0].history[0].vector.shape[0]
    n_users = len(profiles)
    max_history = max(len(p.history) for p in profiles)
    history = np.zeros((n_users, max_history, dim), dtype=np.float32)  # (B, L, D)
    weights = np.zeros((n_users, max_history), dtype=np.float32)  # (B, L)
    for b, profile in enumerate(profiles):
        history[b, : len(profile.history)] = np.stack([item.vector for item in profile.history])
        weights[b, : len(profile.weights)] = profile.weights
    return ScoringBatch(
        history=torch.from_numpy(history),
        history_weights=torch.from_numpy(weights),
        candidates=None,
        candidate_mask=torch.from_numpy(candidates.mask),
        candidate_ids=[candidates.ids_of(b) for b in range(n_users)],
        user_vectors=users,
        item_vectors=torch.from_numpy(candidates.vectors(dim)),
        item_rows=torch.from_numpy(candidates.rows),
        item_ids=candidates.ids.tolist(),
    )
