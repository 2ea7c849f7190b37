"""One fine-tuning cycle of the trainer sidecar: from the served weights, on a recent window.

- **From the served weights**, not from scratch: a copy of the serving model is trained; the
  served object itself is never touched (not its weights, mode or device).
- **Bounded**: at most `steps` optimiser steps, and the last weights are kept (no early
  stopping, no return to an earlier epoch), so a cycle's cost is known before it starts.
- **Honest evaluation**: the window is cut in time; the candidate trains on the older part
  and both it and the serving model rank all items (minus the user's history) for each event
  of the newest slice, which neither has trained on. A held-out event's history is every
  window event of that user before it: the older part and earlier held-out events.
- **Publish only if not worse**: accepted when `candidate[monitor] >= serving[monitor] - margin`,
  after at least one training step and on at least one held-out event.

Training is `training.train_steps` (the sampled-softmax objective of pretraining); the figures
are `evaluation.evaluate`'s full ranking. A cycle on a tiny window:

>>> import numpy as np
>>> from streamrec.models.learning.ranker import RankerConfig
>>> from streamrec.models.data.synthetic import SyntheticWorld
>>> world = SyntheticWorld(seed=1, n_items=20, n_users=4, n_categories=2)
>>> items = [item.item_id for item in world.items(ts=0.0)]
>>> vectors = np.random.default_rng(0).normal(size=(len(items), 8))  # (N, T) made-up text
>>> vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
>>> table = ItemTable.from_vectors(items, vectors, id_buckets=64)
>>> torch.manual_seed(0) and None
>>> serving = Ranker(RankerConfig(text_dim=8, dim=8, max_len=5, layers=1, heads=1, id_buckets=64))
>>> config = FineTuneConfig(steps=3, batch_size=8, negatives=8, min_events=20)
>>> candidate, report = fine_tune(serving, table, world.events(60, start_ts=0.0), config)
>>> candidate is not serving, report.steps, report.window_events, report.train_events
(True, 3, 60, 48)
>>> report.reason.startswith("hr@10 ") and report.accepted == (">=" in report.reason)
True
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from streamrec.models.evaluation.metrics import Case, evaluate
from streamrec.models.learning.item_table import ItemTable
from streamrec.models.learning.pretrain import RankerSequenceModel
from streamrec.models.learning.ranker import Ranker, Step
from streamrec.models.learning.training import TrainConfig, make_windows, train_steps
from streamrec.models.learning.window import split_newest
from streamrec.stream.messages import Event


@dataclass(frozen=True)
class FineTuneConfig:
    """How one cycle trains and decides."""

    steps: int = 200  # at most this many optimiser steps per cycle
    batch_size: int = 64  # training windows per step
    lr: float = 3e-4  # AdamW learning rate (lower than pretraining: small updates)
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    negatives: int = 512  # uniformly sampled negatives per step (plus in-batch ones)
    holdout_fraction: float = 0.2  # newest share of the window kept for evaluation, in (0, 1)
    margin: float = 0.0  # accept if candidate[monitor] >= serving[monitor] - margin
    monitor: str = "hr@10"  # the metric the decision compares: hr@k, ndcg@k, mrr or coverage@k
    k: int = 10  # list length of the holdout metrics
    min_events: int = 200  # no cycle with fewer events in the window
    seed: int = 0  # seeds batching, negative sampling and dropout

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.negatives, self.k) < 1:
            raise ValueError(f"steps, batch_size, negatives and k must be >= 1 in {self}")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be within (0, 1), got {self.holdout_fraction}")
        known = (f"hr@{self.k}", f"ndcg@{self.k}", "mrr", f"coverage@{self.k}")
        if self.monitor not in known:
            raise ValueError(f"monitor {self.monitor!r} is not one of {known}")


@dataclass
class CycleReport:
    """What one cycle did and decided."""

    parent_version: str | None = None  # the served version the candidate started from
    window_events: int = 0  # events in the window the cycle was given
    train_events: int = 0  # the older part, trained on
    holdout_events: int = 0  # held-out events evaluated (known item, user with a known history)
    steps: int = 0  # optimiser steps taken
    seconds: float = 0.0  # the whole cycle: training and both evaluations
    steps_per_s: float = 0.0  # training speed (training time only)
    loss: float | None = None  # weighted mean training loss over the cycle; None without steps
    candidate: dict[str, float] = field(default_factory=dict)  # holdout metrics of the candidate
    serving: dict[str, float] = field(default_factory=dict)  # ... and of the serving model
    accepted: bool = False  # publish the candidate?
    reason: str = ""  # why, for people: "hr@10 0.3100 >= 0.2800 - 0.0000"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fine_tune(
    serving: Ranker,
    table: ItemTable,
    window_events: Sequence[Event],
    config: FineTuneConfig,
    device: torch.device | str = "cpu",
    *,
    parent_version: str | None = None,
) -> tuple[Ranker, CycleReport]:
    """Train a copy of `serving` on the window's older part; judge both on the newest slice.

    Returns the candidate (a new object, in eval mode; untrained when the cycle did not run)
    and the report. Items missing from `table` are skipped, in training and in evaluation.
    """
    started = time.perf_counter()
    device = torch.device(device)
    events = sorted(window_events, key=lambda e: e.ts)  # stable: arrival order among equals
    report = CycleReport(parent_version=parent_version, window_events=len(events))
    candidate = copy.deepcopy(serving).to(device)
    if len(events) < config.min_events:
        report.reason = (
            f"window has {len(events)} events, fewer than min_events {config.min_events}"
        )
        report.seconds = round(time.perf_counter() - started, 3)
        return candidate.eval(), report
    train, holdout = split_newest(events, config.holdout_fraction)
    report.train_events = len(train)

    sequences: dict[str, list[Step]] = defaultdict(list)
    for event in train:
        sequences[event.user_id].append(Step(event.item_id, event.type, event.ts))
    windows = make_windows(sequences, table, candidate.config.max_len, candidate.config.gap_buckets)
    if len(windows) > 0:
        train_config = TrainConfig(
            batch_size=config.batch_size,
            lr=config.lr,
            weight_decay=config.weight_decay,
            negatives=config.negatives,
            seed=config.seed,
        )
        training_started = time.perf_counter()
        result = train_steps(candidate, table, windows, config.steps, train_config, device)
        training_seconds = time.perf_counter() - training_started
        report.steps = result.steps
        report.loss = None if result.loss is None else round(result.loss, 6)
        report.steps_per_s = round(result.steps / training_seconds, 2)
    candidate.eval()

    cases = holdout_cases(train, holdout, table)
    report.holdout_events = len(cases)
    if cases:
        # Evaluation switches to eval mode and moves to `device`: never the served object.
        reference = copy.deepcopy(serving).to(device)
        report.candidate = _holdout_metrics(candidate, table, cases, config.k, device)
        report.serving = _holdout_metrics(reference, table, cases, config.k, device)
    report.accepted, report.reason = _decide(report, config)
    report.seconds = round(time.perf_counter() - started, 3)
    return candidate, report


def holdout_cases(train: Sequence[Event], holdout: Sequence[Event], table: ItemTable) -> list[Case]:
    """One case per held-out event: (user, every window event of theirs before it, target).

    Skipped: targets the table does not know, users with no known item before the target
    (nothing to personalise from; both models would rank from an empty history), and repeats
    of an item the user consumed before: judged the way it serves, and a worker never
    recommends a consumed item (offline, a model that learned "repeat the recent items" would
    otherwise look great and serve badly).
    """
    history: dict[str, list[Step]] = defaultdict(list)
    for event in train:
        history[event.user_id].append(Step(event.item_id, event.type, event.ts))
    cases: list[Case] = []
    for event in holdout:
        step = Step(event.item_id, event.type, event.ts)
        past = history[event.user_id]
        known = event.item_id in table.row_of and any(s.item_id in table.row_of for s in past)
        if known and all(s.item_id != event.item_id for s in past):
            cases.append((event.user_id, list(past), step))
        past.append(step)
    return cases


def _holdout_metrics(
    model: Ranker, table: ItemTable, cases: Sequence[Case], k: int, device: torch.device
) -> dict[str, float]:
    """Full-ranking figures of `model` on the cases: hr@k, ndcg@k, mrr, coverage@k."""
    metrics = evaluate(RankerSequenceModel(model, table, device), cases, table.items, k=k)
    return {name: float(value) for name, value in metrics.as_dict().items() if name != "users"}


def _decide(report: CycleReport, config: FineTuneConfig) -> tuple[bool, str]:
    if report.steps == 0:
        return False, "no training step: no user has two known events in the older part"
    if report.holdout_events == 0:
        return False, "nothing to evaluate: no held-out event of a user with a known history"
    metric = config.monitor
    new, old = report.candidate[metric], report.serving[metric]
    accepted = new >= old - config.margin
    sign = ">=" if accepted else "<"
    slack = f"- {config.margin:.4f}" if config.margin >= 0 else f"+ {-config.margin:.4f}"
    return accepted, f"{metric} {new:.4f} {sign} {old:.4f} {slack}"
