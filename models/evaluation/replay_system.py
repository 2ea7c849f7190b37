"""The workers' core behind the prequential harness: what a worker would serve, replayed.

`CoreSystem` holds what a worker holds (user states, the item index, the `Recommender` with
its scorer and trending counts) and answers the harness with `Recommender.recommend`, the call
a worker makes after every micro-batch; it learns with `Recommender.learn`. With a
`ContinualTrainer` it also runs the trainer sidecar on the replay's clock: the same window,
interval and publish-only-if-not-worse guardrail, each accepted version swapped in with
`open_scorer` (what a worker's hot swap loads). Differences from production, on purpose:
a cycle runs synchronously (the version serves from the next micro-batch, where a live
trainer takes ~8 s), and items enter the catalogue just before their first event is learned
(so the harness's candidates are the items seen so far, like the baselines').

The first version is trained from scratch on the stream so far (`Bootstrap`), with more
steps than a routine cycle; the "frozen" variant serves it without fine-tuning afterwards, so
the curves show what continual training adds.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from streamrec.models.core.encoder import TextEncoder
from streamrec.models.core.pipeline import Pipeline
from streamrec.models.core.recommender import group_by_user
from streamrec.models.core.scoring import ContentScorer
from streamrec.models.core.state import UserState
from streamrec.models.index.factory import retrieval_index_opener
from streamrec.models.index.protocol import IndexedItem, ItemIndex
from streamrec.models.learning.continual import ContinualConfig, ContinualTrainer, CycleOutcome
from streamrec.models.learning.item_table import TextEncoderLike, embed_cached
from streamrec.models.learning.ranker import RankerConfig
from streamrec.models.learning.serving import RankerScorer, open_scorer
from streamrec.models.learning.store import DirectoryModelStore, ModelStore
from streamrec.stream.messages import Event
from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)

ScorerOpener = Callable[[str], RankerScorer]  # version -> a scorer with its retrieval vectors


@dataclass
class Bootstrap:
    """The first version, trained once at `after_events` and shared by the variants that
    start from it (their trainers have seen the same events by then)."""

    after_events: int
    steps: int
    retry_every: int = 1_000  # a refused first version is tried again this many events later
    outcome: CycleOutcome | None = None

    @property
    def version(self) -> str | None:
        manifest = self.outcome.manifest if self.outcome is not None else None
        return manifest.version if manifest is not None else None

    def retry_later(self, events_seen: int) -> None:
        """The first version was refused (the guardrail judged it worse than what serves):
        train one again, on a larger window, `retry_every` events from now."""
        self.outcome = None
        self.after_events = events_seen + self.retry_every

    def train(self, trainer: ContinualTrainer, now: float) -> bool:
        """Train the first version with `trainer`'s window unless done; True if it ran now."""
        if self.outcome is not None:
            return False
        self.outcome = trainer.run(trainer.cut(now), steps=self.steps)
        return True


@dataclass
class VersionChange:
    events_seen: int
    version: str
    reason: str


@dataclass
class CoreSystem:
    """One variant of the full system: content scorer, frozen ranker, or continual ranker."""

    # The blend learns from the lists the worker served (which item of the list the user took
    # next), and a worker serves a list after every event: the harness asks for all of them.
    serves_every_event: ClassVar[bool] = True
    name: str
    pipeline: Pipeline
    catalogue: Mapping[str, IndexedItem]  # every item the stream may touch, embedded once
    open_version: ScorerOpener | None = None  # for variants that serve a ranker
    trainer: ContinualTrainer | None = None  # its window feeds the first version and the cycles
    bootstrap: Bootstrap | None = None  # where the first version comes from
    fine_tune: bool = False  # run the trainer's cycles on the replay clock after that
    max_history: int = 50
    states: dict[str, UserState] = field(default_factory=dict)
    indexed: set[str] = field(default_factory=set)
    events_seen: int = 0
    timeline: list[VersionChange] = field(default_factory=list)
    cycles: list[dict[str, Any]] = field(default_factory=list)
    training_seconds: float = 0.0
    optimized_at: int = 0  # catalogue size at the last index optimisation

    def recommend(self, user_ids: Sequence[str], k: int) -> list[list[str]]:
        states = [self.states.get(user) or UserState(user, max_history=self.max_history) for user in user_ids]
        ranked = self.pipeline.recommender.recommend(states)
        return [[item.item_id for item in ranked_list.items[:k]] for ranked_list in ranked]

    def learn(self, events: Sequence[Event]) -> None:
        new = [self.catalogue[e.item_id] for e in events if e.item_id not in self.indexed and e.item_id in self.catalogue]
        if new:
            unique = list({item.item_id: item for item in new}.values())
            self.pipeline.store_items(unique)
            if len(self.indexed) + len(unique) >= 1.25 * self.optimized_at:  # HNSW rebuilds: O(log N)
                self.pipeline.optimize_index()
                self.optimized_at = len(self.indexed) + len(unique)
            self.indexed.update(item.item_id for item in unique)
            if self.trainer is not None:
                self.trainer.add_items(unique)
        users = group_by_user(events, self.states, self.max_history)
        self.states.update((user.state.user_id, user.state) for user in users)
        self.pipeline.recommender.learn(users)
        if self.trainer is not None:
            self.trainer.add_events(events)
        self.events_seen += len(events)
        self._train(events[-1].ts if events else 0.0)

    def report(self) -> dict[str, Any]:
        accepted = sum(1 for cycle in self.cycles if cycle["accepted"])
        return {
            "serving": self.pipeline.recommender.model_version,
            "blend": self.pipeline.recommender.blend.as_dict(),
            "cold_blend": self.pipeline.recommender.cold_blend.as_dict(),
            "candidate_recall": self.pipeline.recommender.candidate_recall.as_dict(),
            "versions": [vars(change) for change in self.timeline],
            "cycles": len(self.cycles),
            "cycles_published": accepted,
            "training_seconds": round(self.training_seconds, 1),
            "cycle_log": self.cycles,
        }

    # --- the trainer on the replay clock -------------------------------------------------
    def _train(self, now: float) -> None:
        trainer, bootstrap = self.trainer, self.bootstrap
        if trainer is None or self.open_version is None:
            return
        if not self.timeline:  # no version served yet: the first one comes from the bootstrap
            if bootstrap is None or self.events_seen < bootstrap.after_events:
                return
            started = time.perf_counter()
            if bootstrap.train(trainer, now):
                self.training_seconds += time.perf_counter() - started
                self._log_cycle(bootstrap.outcome)
            version = bootstrap.version
            if version is None:
                if bootstrap.outcome is not None and bootstrap.outcome.report:
                    log.info("%s: no first version yet (%s)", self.name, bootstrap.outcome.report.reason)
                bootstrap.retry_later(self.events_seen)
                return
            trainer.serving_version = version
            trainer.cut(now)  # the next routine cycle counts from here
            self._serve(version, "first version, trained on the stream so far")
            return
        if not self.fine_tune or not trainer.due(now):
            return
        started = time.perf_counter()
        outcome = trainer.run(trainer.cut(now))
        self.training_seconds += time.perf_counter() - started
        self._log_cycle(outcome)
        if outcome.manifest is not None:
            trainer.serving_version = outcome.manifest.version
            self._serve(outcome.manifest.version, outcome.report.reason)

    def _serve(self, version: str, reason: str) -> None:
        assert self.open_version is not None
        recommender = self.pipeline.recommender
        old = recommender.scorer
        recommender.scorer = self.open_version(version)
        retrieval: ItemIndex | None = getattr(old, "retrieval", None)
        if retrieval is not None:
            retrieval.drop()
        self.timeline.append(VersionChange(self.events_seen, version, reason))

    def _log_cycle(self, outcome: CycleOutcome | None) -> None:
        if outcome is None:
            return
        report = outcome.report
        self.cycles.append({
            "events_seen": self.events_seen,
            "accepted": report.accepted,
            "reason": report.reason,
            "steps": report.steps,
            "seconds": report.seconds,
            "loss": report.loss,
            "candidate": report.candidate,
            "serving": report.serving,
        })


def bootstrap_steps(default_steps: int, events: int, batch_size: int = 64, epochs: float = 10.0) -> int:
    """Steps for the first version: about `epochs` passes over `events` windows, at least a
    routine cycle's.

    >>> bootstrap_steps(200, 20_000)
    3125
    """
    return max(default_steps, math.ceil(events * epochs / batch_size))



VARIANTS = ("content", "ranker-frozen", "ranker")  # the full system last: it is the one judged
VARIANT_NAMES = {
    "content": "streamrec content scorer",
    "ranker-frozen": "streamrec ranker, no fine-tuning",
    "ranker": "streamrec (ranker + trainer)",
}


@dataclass
class ReplayPlan:
    """How the full system runs on a replay (the evaluation command fills it from flags)."""

    settings: Settings  # the workers' and trainer's settings (k, window, steps, ...)
    work_dir: Path  # indexes and the model store of this replay
    device: torch.device
    bootstrap_after: int  # stream position where the first version is trained
    bootstrap_steps: int
    window_s: float = math.inf  # the trainer window's age bound on the replay clock
    every_s: float = math.inf  # time-based cycles on the replay clock (inf: by count only)


def build_core_systems(
    plan: ReplayPlan,
    catalogue: Mapping[str, IndexedItem],
    encoder: TextEncoder,
    variants: Sequence[str] = VARIANTS,
) -> list[CoreSystem]:
    """One `CoreSystem` per variant, each with its own index and states (shared model store)."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    store = DirectoryModelStore(plan.work_dir / "models")
    base = ContinualConfig.from_settings(plan.settings)
    bootstrap = Bootstrap(plan.bootstrap_after, plan.bootstrap_steps, retry_every=base.every_events)
    config = replace(base, window_s=plan.window_s, every_s=plan.every_s)
    text_dim = len(next(iter(catalogue.values())).vector) if catalogue else 384
    systems = []
    for variant in variants:
        settings = plan.settings.model_copy(update={
            "data_dir": plan.work_dir / variant,
            "index_mode": "edge",
            "index_path": None,
            "model_dir": plan.work_dir / "models",
            "model_version": None,
        })
        pipeline = Pipeline.from_settings(settings, scorer=ContentScorer(plan.device), encoder=encoder)
        system = CoreSystem(VARIANT_NAMES[variant], pipeline, catalogue, max_history=settings.history_length)
        if variant != "content":
            system.open_version = _opener(settings, store, pipeline, plan.device)
            system.trainer = ContinualTrainer(
                store, config, plan.device, model_config=RankerConfig(text_dim=text_dim)
            )
            system.bootstrap = bootstrap
            system.fine_tune = variant == "ranker"
        systems.append(system)
    return systems


def _opener(settings: Settings, store: ModelStore, pipeline: Pipeline, device: torch.device) -> ScorerOpener:
    def open_version(version: str) -> RankerScorer:
        scorer = open_scorer(
            store, version, pipeline.index,
            retrieval_index_opener(settings),
            settings.collection, device,
        )
        assert scorer is not None  # a version was named
        return scorer

    return open_version


def embed_catalogue(
    items: Sequence[str], texts: Sequence[str], titles: Sequence[str], encoder: TextEncoderLike,
    cache_dir: Path | None,
) -> dict[str, IndexedItem]:
    """Every item's text vector (cached on disk), as the worker's catalogue would hold it."""
    vectors = embed_cached(texts, encoder, cache_dir)  # (N, T)
    return {item: IndexedItem(item, vector, title) for item, vector, title in zip(items, vectors, titles)}
