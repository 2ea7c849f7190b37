"""Candidate retrieval for a micro-batch: every source's items for every user, in few index calls.

Sources (each with its own reason, see `Source`):
- text neighbours of the user's recent items (the item index, Qdrant);
- the ranker's retrieval (user vector against the version's item vectors), when a ranker serves;
- co-visitation and transitions from the collaborative signals (`CollaborativeSignals`);
- popular and trending items, for everyone (and all a cold user gets).

Items already consumed are left out; items not in the catalogue (seen in events only) never
become candidates, since nothing could be shown for them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import zip_longest

import numpy as np
import torch

from streamrec.models.core.candidate_batch import CandidateBatch, CandidateCollector, Source
from streamrec.models.core.collaborative import CollaborativeSignals
from streamrec.models.core.popularity import TrendingItems
from streamrec.models.core.scoring import SequenceScorer
from streamrec.models.core.state import EVENT_WEIGHTS, Interaction, UserState
from streamrec.models.index.protocol import IndexedItem, ItemIndex

_MIN_WEIGHT = 1e-6
POPULAR_REFRESH_EVENTS = 32  # the popular candidates are looked up again after this many events


@dataclass
class Profile:
    """What retrieval and scoring need of one user."""

    history: list[IndexedItem] = field(default_factory=list)  # newest first, in the catalogue
    weights: list[float] = field(default_factory=list)  # event type x recency, per history item
    seeds: list[IndexedItem] = field(default_factory=list)
    events: list[Interaction] = field(default_factory=list)  # a sequence scorer's input, oldest first
    items: list[str] = field(default_factory=list)  # every recent item id, oldest first (counts)


@dataclass(frozen=True)
class RetrievalConfig:
    seed_items: int = 5
    neighbours_per_item: int = 20
    profile_items: int = 20
    recency_half_life_s: float = 86_400.0
    k: int = 10


def build_profiles(
    states: Sequence[UserState], index: ItemIndex, sequence_scorer: SequenceScorer | None, cfg: RetrievalConfig
) -> tuple[list[Profile], dict[str, IndexedItem]]:
    """Every user's profile, with the vectors of their recent items fetched in one index call."""
    sequence_length = sequence_scorer.history_length if sequence_scorer is not None else 0
    recents = [state.recent for state in states]
    events_per_user = [recent[-sequence_length:] if sequence_length else [] for recent in recents]
    recent_per_user = []
    for recent in recents:
        seen: dict[str, tuple[str, float]] = {}
        for interaction in reversed(recent):  # newest first
            if interaction.item_id not in seen:
                seen[interaction.item_id] = (interaction.type, interaction.ts)
            if len(seen) >= cfg.profile_items:
                break
        recent_per_user.append(seen)
    wanted = sorted(
        {item for recent in recent_per_user for item in recent}
        | {event.item_id for events in events_per_user for event in events}
    )
    known = index.get(wanted) if wanted else {}
    profiles = []
    for state, recent, events, all_recent in zip(states, recent_per_user, events_per_user, recents):
        now = state.last_ts or 0.0
        profile = Profile(items=[interaction.item_id for interaction in all_recent])
        for item_id, (kind, ts) in recent.items():
            item = known.get(item_id)
            if item is None:  # seen in events before its catalogue entry: skip
                continue
            decay = math.pow(0.5, max(0.0, now - ts) / cfg.recency_half_life_s)
            profile.history.append(item)
            profile.weights.append(max(EVENT_WEIGHTS.get(kind, 1.0) * decay, _MIN_WEIGHT))
        profile.seeds = profile.history[: cfg.seed_items]
        if profile.history:
            profile.events = [event for event in events if event.item_id in known]
        profiles.append(profile)
    return profiles, known


class Retriever:
    """Candidates per user from every source, a few batched index calls per micro-batch."""

    def __init__(
        self,
        index: ItemIndex,
        trending: TrendingItems,
        collaborative: CollaborativeSignals | None,
        config: RetrievalConfig,
    ) -> None:
        self.index = index
        self.trending = trending
        self.collaborative = collaborative
        self.config = config
        self._popular_cache: tuple[tuple[int, int], list[IndexedItem]] | None = None

    def retrieve(
        self,
        states: Sequence[UserState],
        profiles: Sequence[Profile],
        users: torch.Tensor | None,
        scorer: SequenceScorer | None,
    ) -> CandidateBatch:
        """Every user's candidates from every source, in order of precedence: text neighbours
        of the recent items (or of the content user vector), the ranker's retrieval,
        transitions, co-visitation, popular items."""
        cfg = self.config
        limit = max(cfg.neighbours_per_item, cfg.k)  # enough to fill a list
        seeds: list[str] = []  # item ids whose text neighbours are candidates
        seed_rows: list[int] = []
        queries: list[np.ndarray] = []  # each (D,): the content user vector, without a ranker
        query_rows: list[int] = []
        model_rows = [row for row, profile in enumerate(profiles) if profile.history and scorer]
        for row, profile in enumerate(profiles):
            for seed in profile.seeds:
                seeds.append(seed.item_id)
                seed_rows.append(row)
            if scorer is None and len(profile.history) > 1:
                queries.append(content_user_vector(profile))
                query_rows.append(row)
        consumed = [state.consumed_ids for state in states]
        collector = CandidateCollector(len(states), consumed)
        if seeds:
            exclude = [consumed[row] for row in seed_rows]
            similar_ids = getattr(self.index, "similar_ids", None)  # a cached index: ids, no hit objects
            if similar_ids is not None:
                collector.add(seed_rows, similar_ids(seeds, limit, exclude), Source.NEIGHBOUR)
            else:
                collector.add_hits(seed_rows, self.index.similar(seeds, limit=limit, exclude=exclude), Source.NEIGHBOUR)
        if queries:
            results = self.index.search_batch(
                np.stack(queries),  # (Q, D)
                limit=limit,
                exclude=[consumed[row] for row in query_rows],
            )
            collector.add_hits(query_rows, results, Source.NEIGHBOUR)
        if scorer is not None and users is not None and model_rows:
            model_queries = scorer.queries(users[model_rows])  # (Q', D')
            results = scorer.retrieval.search_batch(
                model_queries, limit=limit, exclude=[consumed[row] for row in model_rows]
            )
            # Model-space vectors: the items' text vectors are fetched from the catalogue.
            collector.add(model_rows, [[hit.item_id for hit in hits] for hits in results], Source.MODEL)
        self._add_collaborative(profiles, collector)
        # Popular and trending items of the catalogue: each user's first 3k not consumed, of one
        # list the same for the whole batch (a user's candidates never depend on batch mates),
        # 6k long so that k are left after a long history's items are removed.
        collector.add_shared(self.popular_in_catalogue(6 * cfg.k), 3 * cfg.k, Source.TRENDING)
        return collector.build(self.index.get)

    def _add_collaborative(self, profiles: Sequence[Profile], collector: CandidateCollector) -> None:
        """Items that came next, then co-visited items, for users with any recent item."""
        signals = self.collaborative
        if signals is None:
            return
        owners = [row for row, profile in enumerate(profiles) if profile.items]
        collector.add(owners, [[item for item, _ in signals.next_after(profiles[row].items)] for row in owners],
                      Source.NEXT, skip_consumed=True)
        followers = signals.followers_batch([profiles[row].items for row in owners])
        collector.add(owners, [[item for item, _ in hits] for hits in followers], Source.NEXT, skip_consumed=True)
        covisited = signals.covisited_batch([profiles[row].items for row in owners])
        collector.add(owners, [[item for item, _ in hits] for hits in covisited], Source.COVISIT, skip_consumed=True)
        peers = signals.similar_users_batch([profiles[row].items for row in owners])
        collector.add(owners, [[item for item, _ in hits] for hits in peers], Source.PEERS, skip_consumed=True)

    def popular_in_catalogue(self, n: int) -> list[IndexedItem]:
        """At least `n` of the most popular items that the catalogue holds (when it has them):
        the trending, all-time and "now" rankings interleaved (first of each, then second of
        each, ...), so any prefix mixes the three; asking the counts for more while items
        outside the catalogue crowd the top.
        Recomputed every `POPULAR_REFRESH_EVENTS` events (the ranking scores them fresh), and
        whenever fewer than `n` were found (the catalogue may have grown since)."""
        key = (n, self.trending.learned // POPULAR_REFRESH_EVENTS)
        if self._popular_cache is not None and self._popular_cache[0] == key:
            return self._popular_cache[1]
        found = self._popular_in_catalogue(n)
        if len(found) >= n:
            self._popular_cache = (key, found)
            return found
        self._popular_cache = None
        return found + self._catalogue_fill(n - len(found), {item.item_id for item in found})

    def _catalogue_fill(self, n: int, taken: set[str]) -> list[IndexedItem]:
        """Up to `n` catalogue items not in `taken`, in the index's order: what a list is
        filled with while too few catalogue items have been counted (a new shop, or counts
        crowded by items outside the catalogue), so it never comes out short."""
        fill: list[IndexedItem] = []
        for page in self.index.scan(batch_size=max(64, 2 * n)):
            fill += [item for item in page if item.item_id not in taken]
            if len(fill) >= n:
                break
        return fill[:n]

    def _popular_in_catalogue(self, n: int) -> list[IndexedItem]:
        want = n
        while True:
            rankings = [[item for item, _ in self.trending.top(want)]]
            if self.collaborative is not None:
                rankings.append([item for item, _ in self.collaborative.most_popular(want)])
                rankings.append([item for item, _ in self.collaborative.most_popular(want, now=True)])
            ranked = list(dict.fromkeys(item for tier in zip_longest(*rankings) for item in tier if item is not None))
            known = self.index.get(ranked) if ranked else {}
            found = [known[item] for item in ranked if item in known]
            exhausted = len(ranked) < want or want >= 64 * n
            if len(found) >= n or exhausted:
                return found
            want *= 4


def content_user_vector(profile: Profile) -> np.ndarray:
    """Weighted mean of the user's recent item vectors, normalised; (D,)."""
    vectors = np.stack([item.vector for item in profile.history])  # (L, D)
    weights = np.asarray(profile.weights, dtype=np.float32)  # (L,)
    mean = weights @ vectors  # (D,)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean).astype(np.float32)
