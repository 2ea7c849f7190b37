"""The trainer sidecar's core: a sliding window of events, and fine-tuning cycles over it.

No Kafka here: `streamrec trainer` feeds it from the topics on the wall clock, and an
evaluator can feed it a replayed file on the replay's clock; both run the same cycles.

A cycle starts from the weights being served (`serving_version`; the store's newest when
no message named one; a fresh model when the store is empty, which is how the very first
version is born), fine-tunes a copy for a bounded number of steps on the older part of the
window, evaluates it against the served weights on the newest slice it did not train on,
and saves it to the model store only if it is not worse. Publishing the saved version is
the caller's job.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from streamrec.models.index.protocol import IndexedItem
from streamrec.models.learning.finetune import CycleReport, FineTuneConfig, fine_tune
from streamrec.models.learning.item_table import ItemTable
from streamrec.models.learning.ranker import Ranker, RankerConfig
from streamrec.models.learning.serving import load_ranker
from streamrec.models.learning.store import Manifest, ModelStore
from streamrec.models.learning.window import EventWindow
from streamrec.stream.messages import Event
from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContinualConfig:
    """When to fine-tune and on what (a subset of `Settings`)."""

    window_events: int = 20_000  # the window keeps at most this many events ...
    window_s: float = 86_400.0  # ... none older than this behind the newest (event time, s)
    every_events: int = 1_000  # a cycle after this many new events ...
    every_s: float = 60.0  # ... or this many seconds with new events, whichever comes first
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)

    @classmethod
    def from_settings(cls, settings: Settings) -> ContinualConfig:
        return cls(
            window_events=settings.trainer_window_events,
            window_s=settings.trainer_window_s,
            every_events=settings.trainer_every_events,
            every_s=settings.trainer_every_s,
            finetune=FineTuneConfig(
                steps=settings.trainer_steps,
                holdout_fraction=settings.trainer_holdout,
                margin=settings.trainer_margin,
                k=settings.k,
                monitor=f"hr@{settings.k}",
                min_events=settings.trainer_min_events,
            ),
        )


@dataclass(frozen=True)
class CycleInput:
    """What one cycle works on: copies, so the stream can go on filling the window meanwhile."""

    events: list[Event]
    vectors: dict[str, np.ndarray]  # item id -> text vector (T,)
    serving_version: str | None
    closed_at: float  # when the window was cut (the caller's clock)


@dataclass
class CycleOutcome:
    report: CycleReport
    manifest: Manifest | None  # the saved version when the candidate was accepted
    closed_at: float


class ContinualTrainer:
    """Window + catalogue vectors + the decision when to run a cycle, and the cycle itself."""

    def __init__(
        self,
        store: ModelStore,
        config: ContinualConfig,
        device: torch.device | str = "cpu",
        model_config: RankerConfig | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.device = torch.device(device)
        self.model_config = model_config  # for the first version, when the store is empty
        self.window = EventWindow(config.window_events, config.window_s)
        self.vectors: dict[str, np.ndarray] = {}
        self.serving_version: str | None = None  # told by model-updates; None: the newest
        self.new_events = 0
        self.last_cycle_at: float | None = None

    def add_items(self, items: Sequence[IndexedItem]) -> None:
        for item in items:
            self.vectors[item.item_id] = item.vector

    def add_events(self, events: Sequence[Event]) -> None:
        self.window.extend(events)
        self.new_events += len(events)

    def due(self, now: float) -> bool:
        """Enough new events, or enough time with some; and enough in the window at all."""
        if self.new_events == 0 or len(self.window) < self.config.finetune.min_events:
            return False
        if self.new_events >= self.config.every_events:
            return True
        if self.last_cycle_at is None:  # the first look starts the interval's clock
            self.last_cycle_at = now
        return now - self.last_cycle_at >= self.config.every_s

    def cut(self, now: float) -> CycleInput:
        """Close the window for a cycle (resets the counters that make the next one due)."""
        self.new_events = 0
        self.last_cycle_at = now
        return CycleInput(self.window.events(), dict(self.vectors), self.serving_version, now)

    def run(self, cycle: CycleInput, steps: int | None = None) -> CycleOutcome:
        """Fine-tune from the served weights, evaluate, save if not worse (thread-safe: it
        touches only `cycle` and the store). `steps` overrides the configured budget (a first
        version trained from scratch needs more than a routine cycle)."""
        config = self.config.finetune if steps is None else replace(self.config.finetune, steps=steps)
        base, version = self._serving_model(cycle.serving_version)
        items = sorted(cycle.vectors)
        if not items:
            raise ValueError("no catalogue items: the trainer has not read any from `items` yet")
        table = ItemTable.from_vectors(
            items, np.stack([cycle.vectors[i] for i in items]), base.config.id_buckets
        )
        candidate, report = fine_tune(
            base, table, cycle.events, config, self.device, parent_version=version
        )
        manifest = None
        if report.accepted:
            figures = report.to_dict()
            manifest = self.store.save(
                candidate.state_dict(),
                candidate.config.to_dict(),
                parent=version,
                data={
                    "source": "trainer",
                    "window_events": report.window_events,
                    "window_from_ts": cycle.events[0].ts if cycle.events else None,
                    "window_to_ts": cycle.events[-1].ts if cycle.events else None,
                    "items": len(items),
                },
                metrics={
                    **{k: v for k, v in figures["candidate"].items()},
                    **{f"serving_{k}": v for k, v in figures["serving"].items()},
                    "steps": report.steps,
                    "loss": report.loss,
                },
            )
        log.info(
            "cycle from %s: %s; %s", version or "a fresh model", "published" if manifest else "kept", report.reason
        )
        return CycleOutcome(report, manifest, cycle.closed_at)

    def _serving_model(self, version: str | None) -> tuple[Ranker, str | None]:
        if version is None:
            newest = self.store.latest()
            version = newest.version if newest is not None else None
        if version is None:
            dim = len(next(iter(self.vectors.values()))) if self.vectors else 384
            config = self.model_config or RankerConfig(text_dim=dim)
            torch.manual_seed(self.config.finetune.seed)
            return Ranker(config), None
        manifest, tensors = self.store.load(version)
        return load_ranker(manifest, tensors), version
