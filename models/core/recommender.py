"""The pure event -> recommendation pipeline that workers, the evaluator and benchmarks all call.

`Recommender.handle(events, states)` is the one entry point for a micro-batch: group the events
by user, learn them (user state, trending counts, the collaborative signals, the online blend),
retrieve candidates from every source (`candidates.Retriever`), score them in one batched pass
and blend the features (`ranking.ListRanker`), keep top-K with a reason per item and remember
what each user was served. No Faust, no Kafka: state comes in and goes out as plain objects.

While the item index is unavailable (`IndexUnavailableError`: a Qdrant server away), users
get trending lists that need no index call, minus what they consumed, with the reason
`INDEX_UNAVAILABLE_REASON` (see `streamrec.models.index.health`); learning goes on as usual.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from streamrec.models.core.blend import OnlineBlend, ServedMemory
from streamrec.models.core.candidate_recall import CandidateRecall
from streamrec.models.core.candidates import Profile, RetrievalConfig, Retriever, build_profiles
from streamrec.models.core.collaborative import CollaborativeConfig, CollaborativeSignals
from streamrec.models.core.popularity import TrendingItems
from streamrec.models.core.ranking import (
    MODEL_REASON,
    TRENDING_REASON,
    ListRanker,
    new_blend,
    new_cold_blend,
)
from streamrec.models.core.scoring import Scorer, SequenceScorer
from streamrec.models.core.signal_feed import SignalFeed
from streamrec.models.core.state import EVENT_WEIGHTS, UserState
from streamrec.models.index.health import (
    FALLBACK_INDEX_UNAVAILABLE,
    FALLBACK_VERSION,
    INDEX_UNAVAILABLE_REASON,
    IndexHealth,
)
from streamrec.models.index.protocol import IndexUnavailableError, ItemIndex
from streamrec.stream.messages import Event, RecommendedItem
from streamrec.stream.settings import Settings

__all__ = ["MODEL_REASON", "TRENDING_REASON", "Recommender", "RecommenderConfig", "UserBatch"]


@dataclass(frozen=True)
class RecommenderConfig:
    """Knobs of the pipeline (a subset of `Settings`)."""

    k: int = 10  # items per list
    seed_items: int = 5  # most recent distinct items used as retrieval queries
    neighbours_per_item: int = 20  # neighbours fetched per query
    profile_items: int = 20  # most recent items that make up the user vector
    recency_half_life_s: float = 86_400.0  # an event this old counts half as much
    history_length: int = 50  # recent events kept per user (a new user's state)
    collaborative: bool = True  # co-visitation, transitions, popularity as sources and features
    diversity: float = 0.0  # MMR re-ranking of a list: 0 = by score, towards 1 = unlike items first

    @classmethod
    def from_settings(cls, settings: Settings) -> RecommenderConfig:
        return cls(
            k=settings.k,
            seed_items=settings.seed_items,
            neighbours_per_item=settings.neighbours_per_item,
            profile_items=min(settings.history_length, 20),
            recency_half_life_s=settings.recency_half_life_s,
            history_length=settings.history_length,
            collaborative=settings.collaborative,
            diversity=settings.diversity,
        )

    def retrieval(self) -> RetrievalConfig:
        return RetrievalConfig(self.seed_items, self.neighbours_per_item, self.profile_items,
                               self.recency_half_life_s, self.k)


@dataclass
class UserBatch:
    """One user's slice of a micro-batch: their state and the new events (oldest first)."""

    state: UserState
    events: Sequence[Event]


def group_by_user(
    events: Sequence[Event], states: Mapping[str, UserState | None], history_length: int = 50
) -> list[UserBatch]:
    """One `UserBatch` per user in order of first appearance, events in order; a user without
    a stored state (absent or None) starts a new one.

    >>> from streamrec.stream.messages import Event
    >>> evs = [Event(event_id=str(n), user_id=u, item_id="i", type="view", ts=float(n)) for n, u in enumerate("aba")]
    >>> [(b.state.user_id, [e.event_id for e in b.events]) for b in group_by_user(evs, {})]
    [('a', ['0', '2']), ('b', ['1'])]
    """
    by_user: dict[str, list[Event]] = {}
    for event in events:
        by_user.setdefault(event.user_id, []).append(event)
    return [
        UserBatch(states.get(user_id) or UserState(user_id, max_history=history_length), user_events)
        for user_id, user_events in by_user.items()
    ]


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
class HandledBatch:
    """What `Recommender.handle` did with a micro-batch: one entry per user, in order."""

    users: list[UserBatch]  # each user's (updated) state and events
    lists: list[RankedList]  # each user's new list, its trigger the user's last event
    outcomes: list[OnlineOutcome]  # the live hit-rate: events checked against the last lists
    learn_s: float = 0.0  # time spent learning (state, counts, blend)
    rank_s: float = 0.0  # time spent retrieving, scoring and ranking

    @property
    def states(self) -> dict[str, UserState]:
        return {user.state.user_id: user.state for user in self.users}


class Recommender:
    """State update -> candidates from every source -> one batched scoring pass -> blended
    top-K with reasons.

    >>> # See tests/unit/test_recommender.py for runnable end-to-end use.
    """

    def __init__(
        self,
        index: ItemIndex,
        scorer: Scorer,
        trending: TrendingItems,
        config: RecommenderConfig | None = None,
        index_health: IndexHealth | None = None,
        collaborative: CollaborativeConfig | None = None,
    ) -> None:
        self.index = index
        self.scorer = scorer
        self.trending = trending
        self.config = config or RecommenderConfig()
        self.canary: Canary | None = None
        self.index_health = index_health or IndexHealth()
        # Told (reason, number of lists) whenever lists are served without the index.
        self.on_fallback: Callable[[str, int], None] | None = None
        cfg = self.config
        self.collaborative = CollaborativeSignals(collaborative) if cfg.collaborative else None
        # Set by a worker that learns `collaborative` from every user's events (a broadcast
        # read): then this worker's own events are handed to the feed, never learned twice.
        self.signal_feed: SignalFeed | None = None
        self.blend: OnlineBlend = new_blend()
        self.cold_blend: OnlineBlend = new_cold_blend()
        self.served = ServedMemory()  # what each user's last list was chosen from (the blend learns)
        self.candidate_recall = CandidateRecall()  # next items among the candidates, users with a history
        self.cold_recall = CandidateRecall()  # the same for lists of the cold blend
        self.retriever = Retriever(index, trending, self.collaborative, cfg.retrieval())
        self.ranker = ListRanker(trending, self.collaborative, self.blend, self.cold_blend, cfg.k, cfg.diversity)

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

    def handle(self, events: Sequence[Event], states: Mapping[str, UserState | None]) -> HandledBatch:
        """The one batch entry point: group by user, learn, rank, remember what was served.

        `states` holds each user's stored state (absent or None: a new user); the updated
        states come back in the result. One list per user per batch, triggered by the user's
        last event in it.
        """
        return self.handle_users(group_by_user(events, states, self.config.history_length))

    def handle_users(self, users: Sequence[UserBatch]) -> HandledBatch:
        """`handle` for a batch already grouped by user."""
        started = time.perf_counter()
        outcomes = self.learn(users)
        learned = time.perf_counter()
        lists = self.recommend([user.state for user in users])
        for ranked_list, user in zip(lists, users):
            ranked_list.trigger = user.events[-1] if user.events else None
        self.remember_served(users, lists)
        return HandledBatch(list(users), lists, outcomes, learned - started, time.perf_counter() - learned)

    def learn(self, users: Sequence[UserBatch]) -> list[OnlineOutcome]:
        """Apply every new event to its user's state, the trending counts and the collaborative
        signals (through `signal_feed` when one is set); the blends learn from what each user
        consumed after their last list.

        Before an event is learned, it is checked against the last list served to its user:
        the outcomes are the live hit-rate of each model version. An event the state holds
        already is skipped (`UserState.learn` is idempotent); its user still gets a list.
        """
        outcomes = []
        signals = self.collaborative
        for user in users:
            state = user.state
            first = True
            for event in user.events:
                if state.has_learned(event.event_id):
                    continue  # read again (after a crash, or forwarded twice): counted once
                if state.served_version is not None:
                    outcomes.append(OnlineOutcome(state.served_version, event.item_id in state.served))
                if first:  # what the user took next: the blend's lesson
                    self._learn_blend(state, event.item_id)
                    first = False
                weight = EVENT_WEIGHTS[event.type]
                if self.signal_feed is not None:
                    self.signal_feed.learn_local(event)
                elif signals is not None:
                    signals.learn([i.item_id for i in state.recent], event.item_id, weight, user_id=event.user_id)
                state.learn(event)
                self.trending.learn(event.item_id, event.ts, weight)
        return outcomes

    def _learn_blend(self, state: UserState, consumed: str) -> None:
        served = self.served.take(state.user_id)
        if served is None:
            return
        row = (self.candidate_recall if served.warm else self.cold_recall).observe(served, consumed)
        if row is None:
            return  # not among the candidates: nothing to say about their order
        blend = self.blend if served.warm else self.cold_blend
        blend.learn(served.features, row)

    def process_batch(self, users: Sequence[UserBatch]) -> list[RankedList]:
        """The lists of `handle_users` (learn, then one list per user)."""
        return self.handle_users(users).lists

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
                RecommendedItem(item_id=item_id, score=round(score, 6), reason=INDEX_UNAVAILABLE_REASON)
                for item_id, score in top
                if not state.has_consumed(item_id)
            ][:k]
            lists.append(RankedList(state.user_id, items, None, FALLBACK_VERSION))
        return lists

    def _recommend_with(self, scorer: Scorer, states: Sequence[UserState]) -> list[RankedList]:
        sequence_scorer = _sequence_scorer(scorer)
        profiles, known = build_profiles(states, self.index, sequence_scorer, self.config.retrieval())
        users = self._user_vectors(profiles, known, sequence_scorer)
        candidates = self.retriever.retrieve(states, profiles, users, sequence_scorer)
        lists = []
        for state, ranked in zip(states, self.ranker.rank(profiles, candidates, users, scorer)):
            if ranked.served is not None:
                self.served.remember(state.user_id, ranked.served)
            lists.append(RankedList(state.user_id, ranked.items, None, scorer.version))
        return lists

    @staticmethod
    def _user_vectors(profiles: Sequence[Profile], known: Mapping, scorer: SequenceScorer | None):
        """The sequence scorer's user vectors (B, D'), one pass for the batch; None without one."""
        if scorer is None:
            return None
        text = {item_id: item.vector for item_id, item in known.items()}
        return scorer.user_vectors([profile.events for profile in profiles], text)


def _sequence_scorer(scorer: Scorer) -> SequenceScorer | None:
    """The scorer, when it brings a user tower and a retrieval index (the ranker)."""
    if getattr(scorer, "retrieval", None) is not None:
        return scorer  # type: ignore[return-value]
    return None
