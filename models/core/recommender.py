"""The pure event -> recommendation pipeline that workers, the evaluator and benchmarks all call.

One call handles one micro-batch: learn every user's new events, retrieve candidates from the
item index (text neighbours of recent items; the user vector's nearest items, through the
ranker's own retrieval index when a ranker serves; consumed items excluded; trending items for
users without a usable history), score all candidates in one batched pass, keep top-K with a
reason per item. No Faust, no Kafka: state comes in and goes out as plain objects.

While the item index is unavailable (`IndexUnavailableError`: a Qdrant server away), users
get trending lists that need no index call, minus what they consumed, with the reason
`INDEX_UNAVAILABLE_REASON` (see `streamrec.models.index.health`); learning goes on as usual.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from streamrec.models.core.popularity import TrendingItems
from streamrec.models.core.scoring import Scorer, ScoringBatch, SequenceScorer
from streamrec.models.core.state import EVENT_WEIGHTS, Interaction, UserState
from streamrec.models.index.base import IndexedItem, IndexUnavailableError, ItemIndex, Neighbour
from streamrec.models.index.health import (
    FALLBACK_INDEX_UNAVAILABLE,
    FALLBACK_VERSION,
    INDEX_UNAVAILABLE_REASON,
    IndexHealth,
)
from streamrec.stream.messages import Event, RecommendedItem
from streamrec.stream.settings import Settings

TRENDING_REASON = "trending"
MODEL_REASON = "picked for you after {title}"
_MIN_WEIGHT = 1e-6


@dataclass(frozen=True)
class RecommenderConfig:
    """Knobs of the pipeline (a subset of `Settings`)."""

    k: int = 10  # items per list
    seed_items: int = 5  # most recent distinct items used as retrieval queries
    neighbours_per_item: int = 20  # neighbours fetched per query
    profile_items: int = 20  # most recent items that make up the user vector
    recency_half_life_s: float = 86_400.0  # an event this old counts half as much

    @classmethod
    def from_settings(cls, settings: Settings) -> RecommenderConfig:
        return cls(
            k=settings.k,
            seed_items=settings.seed_items,
            neighbours_per_item=settings.neighbours_per_item,
            profile_items=min(settings.history_length, 20),
            recency_half_life_s=settings.recency_half_life_s,
        )


@dataclass
class UserBatch:
    """One user's slice of a micro-batch: their state and the new events (oldest first)."""

    state: UserState
    events: Sequence[Event]


@dataclass
class RankedList:
    """The top-K list for one user, the newest event that triggered it, the model that ranked it."""

    user_id: str
    items: list[RecommendedItem]
    trigger: Event | None
    model_version: str = ""


@dataclass(frozen=True)
class OnlineOutcome:
    """Test-then-learn, live: was an event's item in the last list served to its user?"""

    model_version: str  # the version that ranked that list
    hit: bool


@dataclass(frozen=True)
class Canary:
    """A second scorer served to a fixed share of users, chosen by a stable hash of the id."""

    scorer: Scorer
    fraction: float  # 0..1 share of users

    def serves(self, user_id: str) -> bool:
        """Stable across processes and restarts (blake2b, not Python's salted `hash`).

        >>> canary = Canary(scorer=None, fraction=0.5)  # type: ignore[arg-type]
        >>> canary.serves("u1") == canary.serves("u1"), Canary(None, 0.0).serves("u1")  # type: ignore[arg-type]
        (True, False)
        """
        digest = hashlib.blake2b(user_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.fraction


@dataclass
class _Profile:
    """What retrieval and scoring need of one user."""

    history: list[IndexedItem] = field(default_factory=list)  # newest first
    weights: list[float] = field(default_factory=list)
    seeds: list[IndexedItem] = field(default_factory=list)
    events: list[Interaction] = field(default_factory=list)  # a sequence scorer's input, oldest first


class Source(enum.Enum):
    """Where a candidate came from; it decides the reason shown with the item."""

    NEIGHBOUR = "neighbour"  # text-similar to one of the user's recent items
    MODEL = "model"  # the ranker's retrieval (user vector against item vectors)
    TRENDING = "trending"


Candidates = dict[str, tuple[IndexedItem, Source]]  # item id -> (text-space item, source)


class Recommender:
    """State update -> candidates -> one batched scoring pass -> top-K with reasons.

    >>> # See tests/unit/test_recommender.py for runnable end-to-end use.
    """

    def __init__(
        self,
        index: ItemIndex,
        scorer: Scorer,
        trending: TrendingItems,
        config: RecommenderConfig | None = None,
        index_health: IndexHealth | None = None,
    ) -> None:
        self.index = index
        self.scorer = scorer
        self.trending = trending
        self.config = config or RecommenderConfig()
        self.canary: Canary | None = None
        self.index_health = index_health or IndexHealth()
        # Told (reason, number of lists) whenever lists are served without the index.
        self.on_fallback: Callable[[str, int], None] | None = None

    @property
    def model_version(self) -> str:
        return self.scorer.version

    @property
    def sequence_scorer(self) -> SequenceScorer | None:
        """The scorer, when it brings a user tower and a retrieval index (the ranker)."""
        return _sequence_scorer(self.scorer)

    def scorer_for(self, user_id: str) -> Scorer:
        """The canary's scorer for the users in its share, else the main one."""
        canary = self.canary
        return canary.scorer if canary is not None and canary.serves(user_id) else self.scorer

    def learn(self, users: Sequence[UserBatch]) -> list[OnlineOutcome]:
        """Apply every new event to its user's state and to the trending counts.

        Before an event is learned, it is checked against the last list served to its user:
        the outcomes are the live hit-rate of each model version. An event the state holds
        already is skipped (`UserState.learn` is idempotent); its user still gets a list.
        """
        outcomes = []
        for user in users:
            for event in user.events:
                state = user.state
                if state.has_learned(event.event_id):
                    continue  # read again (after a crash, or forwarded twice): counted once
                if state.served_version is not None:
                    outcomes.append(OnlineOutcome(state.served_version, event.item_id in state.served))
                state.learn(event)
                self.trending.learn(event.item_id, event.ts, EVENT_WEIGHTS[event.type])
        return outcomes

    def process_batch(self, users: Sequence[UserBatch]) -> list[RankedList]:
        """Learn the batch's events, then rank for every user in it (one list per user)."""
        self.learn(users)
        ranked = self.recommend([user.state for user in users])
        for ranked_list, user in zip(ranked, users):
            ranked_list.trigger = user.events[-1] if user.events else None
        self.remember_served(users, ranked)
        return ranked

    @staticmethod
    def remember_served(users: Sequence[UserBatch], ranked: Sequence[RankedList]) -> None:
        """Record each published list in its user's state (for the online hit-rate)."""
        for user, ranked_list in zip(users, ranked):
            user.state.serve(ranked_list.model_version, [item.item_id for item in ranked_list.items])

    def recommend(self, states: Sequence[UserState]) -> list[RankedList]:
        """Top-K lists for the given users as they are now (no learning); one scoring pass
        per model version served (two while a canary runs)."""
        arms: dict[int, tuple[Scorer, list[int]]] = {}
        for row, state in enumerate(states):
            scorer = self.scorer_for(state.user_id)
            arms.setdefault(id(scorer), (scorer, []))[1].append(row)
        ranked: list[RankedList | None] = [None] * len(states)
        for scorer, rows in arms.values():
            arm = [states[r] for r in rows]
            for row, ranked_list in zip(rows, self._recommend_or_fall_back(scorer, arm)):
                ranked[row] = ranked_list
        return [ranked_list for ranked_list in ranked if ranked_list is not None]

    def _recommend_or_fall_back(self, scorer: Scorer, states: Sequence[UserState]) -> list[RankedList]:
        """The normal lists; trending ones while the item index is unavailable."""
        health = self.index_health
        if health.should_try():
            try:
                if not health.available:
                    self.index.count()  # a probe that reaches the server (not a cache)
                    health.recovered()
                return self._recommend_with(scorer, states)
            except IndexUnavailableError as exc:
                health.failed(exc)
        lists = self._trending_lists(states)
        if self.on_fallback is not None and lists:
            self.on_fallback(FALLBACK_INDEX_UNAVAILABLE, len(lists))
        return lists

    def _trending_lists(self, states: Sequence[UserState]) -> list[RankedList]:
        """Top-K trending items per user, minus what they consumed; no index call.

        Trending counts come from events, so an item seen in events but never in the
        catalogue can appear here (the normal path drops those).
        """
        k = self.config.k
        longest = max((state.n_consumed for state in states), default=0)
        top = self.trending.top(k + min(longest, 4 * k))
        lists = []
        for state in states:
            items = [
                RecommendedItem.model_construct(
                    item_id=item_id, score=round(score, 6), reason=INDEX_UNAVAILABLE_REASON
                )
                for item_id, score in top
                if not state.has_consumed(item_id)
            ][:k]
            lists.append(RankedList(state.user_id, items, None, FALLBACK_VERSION))
        return lists

    def _recommend_with(self, scorer: Scorer, states: Sequence[UserState]) -> list[RankedList]:
        profiles, text = self._profiles(states, scorer)
        users = self._user_vectors(profiles, text, scorer)
        candidates = self._retrieve(states, profiles, users, scorer)
        return [
            RankedList(state.user_id, items, None, scorer.version)
            for state, items in zip(states, self._rank(states, profiles, candidates, users, scorer))
        ]

    # --- stages -----------------------------------------------------------------------
    def _profiles(
        self, states: Sequence[UserState], scorer: Scorer
    ) -> tuple[list[_Profile], dict[str, np.ndarray]]:
        """Fetch the vectors of every user's recent items in one index call."""
        cfg = self.config
        sequence_scorer = _sequence_scorer(scorer)
        sequence_length = sequence_scorer.history_length if sequence_scorer is not None else 0
        events_per_user = [list(state.recent)[-sequence_length:] if sequence_length else [] for state in states]
        recent_per_user = []
        for state in states:
            seen: dict[str, tuple[str, float]] = {}
            for interaction in reversed(state.recent):  # newest first
                if interaction.item_id not in seen:
                    seen[interaction.item_id] = (interaction.type, interaction.ts)
                if len(seen) >= cfg.profile_items:
                    break
            recent_per_user.append(seen)
        wanted = sorted(
            {item for recent in recent_per_user for item in recent}
            | {event.item_id for events in events_per_user for event in events}
        )
        known = self.index.get(wanted) if wanted else {}
        profiles = []
        for state, recent, events in zip(states, recent_per_user, events_per_user):
            now = state.last_ts or 0.0
            profile = _Profile()
            for item_id, (kind, ts) in recent.items():
                item = known.get(item_id)
                if item is None:  # seen in events before its catalogue entry: skip
                    continue
                age = max(0.0, now - ts)
                decay = math.pow(0.5, age / cfg.recency_half_life_s)
                profile.history.append(item)
                profile.weights.append(max(EVENT_WEIGHTS.get(kind, 1.0) * decay, _MIN_WEIGHT))
            profile.seeds = profile.history[: cfg.seed_items]
            if profile.history:
                profile.events = [event for event in events if event.item_id in known]
            profiles.append(profile)
        return profiles, {item_id: item.vector for item_id, item in known.items()}

    def _user_vectors(
        self, profiles: Sequence[_Profile], text: dict[str, np.ndarray], scorer: Scorer
    ) -> torch.Tensor | None:
        """The sequence scorer's user vectors (B, D'), one pass for the batch; None without one."""
        scorer = _sequence_scorer(scorer)
        if scorer is None:
            return None
        return scorer.user_vectors([profile.events for profile in profiles], text)

    def _retrieve(
        self,
        states: Sequence[UserState],
        profiles: Sequence[_Profile],
        users: torch.Tensor | None,
        scorer: Scorer,
    ) -> list[Candidates]:
        """Candidates per user: text neighbours of recent items, the user vector's nearest
        items (the ranker's retrieval index, else the text index), and trending items."""
        cfg = self.config
        limit = max(cfg.neighbours_per_item, cfg.k)  # enough to fill a list
        scorer = _sequence_scorer(scorer)
        seeds: list[str] = []  # item ids whose neighbours are candidates
        seed_rows: list[int] = []
        queries: list[np.ndarray] = []  # each (D,): the content user vector, without a ranker
        query_rows: list[int] = []
        model_rows = [row for row, profile in enumerate(profiles) if profile.history and scorer]
        for row, profile in enumerate(profiles):
            for seed in profile.seeds:
                seeds.append(seed.item_id)
                seed_rows.append(row)
            if scorer is None and len(profile.history) > 1:
                queries.append(_user_vector(profile))
                query_rows.append(row)
        candidates: list[Candidates] = [{} for _ in states]
        consumed = {row: states[row].consumed for row in {*seed_rows, *query_rows, *model_rows}}
        if seeds:
            results = self.index.similar(
                seeds, limit=limit, exclude=[consumed[row] for row in seed_rows]
            )
            self._collect(candidates, seed_rows, results, Source.NEIGHBOUR)
        if queries:
            results = self.index.search_batch(
                np.stack(queries),  # (Q, D)
                limit=limit,
                exclude=[consumed[row] for row in query_rows],
            )
            self._collect(candidates, query_rows, results, Source.NEIGHBOUR)
        if scorer is not None and users is not None and model_rows:
            model_queries = scorer.queries(users[model_rows])  # (Q', D')
            results = scorer.retrieval.search_batch(
                model_queries, limit=limit, exclude=[consumed[row] for row in model_rows]
            )
            # The retrieval index holds model vectors; scoring reads text vectors.
            wanted = sorted({n.item_id for hits in results for n in hits})
            text = self.index.get(wanted) if wanted else {}
            bare = [[Neighbour(n.item_id, n.score) for n in hits] for hits in results]
            self._collect(candidates, model_rows, bare, Source.MODEL, text)
        self._add_trending(states, candidates)
        return candidates

    def _collect(
        self,
        candidates: list[Candidates],
        owners: Sequence[int],
        results: Sequence[Sequence[Neighbour]],
        source: Source,
        known: dict[str, IndexedItem] | None = None,
    ) -> None:
        """Add search hits to their users' candidates (the first source to find one wins)."""
        known = dict(known or {})
        # Hits carry their items; fetch (once per batch) only those an index left bare.
        bare = sorted({n.item_id for hits in results for n in hits if n.item is None} - set(known))
        if bare:
            known.update(self.index.get(bare))
        for row, hits in zip(owners, results):
            for hit in hits:
                item = hit.item or known.get(hit.item_id)
                if item is not None:
                    candidates[row].setdefault(item.item_id, (item, source))

    def _add_trending(self, states: Sequence[UserState], candidates: list[Candidates]) -> None:
        """Top trending items (those in the catalogue) join every user's candidates."""
        cfg = self.config
        # Ask for enough that k survive after removing a user's consumed items.
        longest = max((state.n_consumed for state in states), default=0)
        top = self.trending.top(cfg.k + min(longest, 4 * cfg.k))
        known = self.index.get([item_id for item_id, _ in top]) if top else {}
        for state, user_candidates in zip(states, candidates):
            added = 0
            for item_id, _ in top:
                if added >= cfg.k:
                    break
                if item_id in known and not state.has_consumed(item_id):
                    user_candidates.setdefault(item_id, (known[item_id], Source.TRENDING))
                    added += 1

    def _rank(
        self,
        states: Sequence[UserState],
        profiles: Sequence[_Profile],
        candidates: Sequence[Candidates],
        users: torch.Tensor | None,
        scorer: Scorer,
    ) -> list[list[RecommendedItem]]:
        cfg = self.config
        warm = [row for row, profile in enumerate(profiles) if profile.history]
        lists: list[list[RecommendedItem]] = [[] for _ in states]
        for row, (profile, user_candidates) in enumerate(zip(profiles, candidates)):
            if not profile.history:  # cold user: trending order, trending reason
                ordered = sorted(
                    user_candidates, key=lambda item_id: -self.trending.score(item_id)
                )
                lists[row] = [
                    RecommendedItem.model_construct(  # built from checked values: no re-validation
                        item_id=item_id,
                        score=round(self.trending.score(item_id), 6),
                        reason=TRENDING_REASON,
                    )
                    for item_id in ordered[: cfg.k]
                ]
        if not warm:
            return lists
        batch, ids = _pad(
            [profiles[row] for row in warm],
            [candidates[row] for row in warm],
            users[warm] if users is not None else None,
        )
        scores = scorer.score(batch)  # (B, C)
        # For the reason: which history item each candidate is most like.
        similarity = torch.einsum("bcd,bld->bcl", batch.candidates, batch.history)  # (B, C, L)
        similarity = similarity.masked_fill(batch.history_weights[:, None, :] <= 0, -2.0)
        closest = similarity.argmax(dim=-1)  # (B, C)
        top = torch.topk(scores, k=min(cfg.k, scores.shape[1]), dim=-1)
        for b, row in enumerate(warm):
            ranked = []
            for score, column in zip(top.values[b].tolist(), top.indices[b].tolist()):
                if not math.isfinite(score):
                    break
                item_id = ids[b][column]
                _, source = candidates[row][item_id]
                if source is Source.NEIGHBOUR:
                    reason = f"similar to {profiles[row].history[int(closest[b, column])].title}"
                elif source is Source.MODEL:
                    reason = MODEL_REASON.format(title=profiles[row].history[0].title)
                else:
                    reason = TRENDING_REASON
                ranked.append(
                    RecommendedItem.model_construct(item_id=item_id, score=round(score, 6), reason=reason)
                )
            lists[row] = ranked
        return lists


def _sequence_scorer(scorer: Scorer) -> SequenceScorer | None:
    """The scorer, when it brings a user tower and a retrieval index (the ranker)."""
    if getattr(scorer, "retrieval", None) is not None:
        return scorer  # type: ignore[return-value]
    return None


def _user_vector(profile: _Profile) -> np.ndarray:
    """Weighted mean of the user's recent item vectors, normalised; (D,)."""
    vectors = np.stack([item.vector for item in profile.history])  # (L, D)
    weights = np.asarray(profile.weights, dtype=np.float32)  # (L,)
    mean = weights @ vectors  # (D,)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean).astype(np.float32)


def _pad(
    profiles: Sequence[_Profile],
    candidates: Sequence[Candidates],
    users: torch.Tensor | None = None,
) -> tuple[ScoringBatch, list[list[str]]]:
    """Pack users into padded tensors; also return candidate ids per row."""
    dim = profiles[0].history[0].vector.shape[0]
    n_users = len(profiles)
    max_history = max(len(p.history) for p in profiles)
    max_candidates = max(1, max(len(c) for c in candidates))
    history = np.zeros((n_users, max_history, dim), dtype=np.float32)  # (B, L, D)
    weights = np.zeros((n_users, max_history), dtype=np.float32)  # (B, L)
    cand = np.zeros((n_users, max_candidates, dim), dtype=np.float32)  # (B, C, D)
    mask = np.zeros((n_users, max_candidates), dtype=bool)  # (B, C)
    ids: list[list[str]] = []
    for b, (profile, user_candidates) in enumerate(zip(profiles, candidates)):
        history[b, : len(profile.history)] = np.stack([item.vector for item in profile.history])
        weights[b, : len(profile.weights)] = profile.weights
        row_ids = list(user_candidates)
        if row_ids:
            cand[b, : len(row_ids)] = np.stack([user_candidates[i][0].vector for i in row_ids])
            mask[b, : len(row_ids)] = True
        ids.append(row_ids)
    batch = ScoringBatch(
        history=torch.from_numpy(history),
        history_weights=torch.from_numpy(weights),
        candidates=torch.from_numpy(cand),
        candidate_mask=torch.from_numpy(mask),
        candidate_ids=ids,
        user_vectors=users,
    )
    return batch, ids
