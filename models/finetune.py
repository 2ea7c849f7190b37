"""One fine-tuning cycle of the trainer sidecar: from the served weights, on a recent window.

- **From the served weights**, not from scratch: a copy of the serving model is trained; the
  served object itself is never touched.
- **Bounded**: at most `steps` optimiser steps, so a cycle fits its interval on a CPU.
- **Honest evaluation**: the window is cut in time; the candidate trains on the older part
  and both it and the serving model are ranked (all items, full ranking) on the newest
  slice, which neither has trained on. For each held-out event, the user's history is every
  window event of theirs before it.
- **Publish only if not worse**: accepted when `candidate[monitor] >= serving[monitor] - margin`.

Training itself is `training.train_ranker` (the same sampled-softmax objective as pretraining).
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from streamrec.models.evaluation import Case, evaluate
from streamrec.models.item_table import ItemTable
from streamrec.models.pretrain import RankerSequenceModel
from streamrec.models.ranker import Ranker, Step
from streamrec.models.training import TrainConfig, make_windows, train_ranker
from streamrec.models.window import split_newest
from streamrec.stream.messages import Event

_UNBOUNDED = 1_000_000  # epochs/patience: `steps` is what bounds a cycle


@dataclass(frozen=True)
class FineTuneConfig:
    """How one cycle trains and decides."""

    steps: int = 200  # at most this many optimiser steps per cycle
    batch_size: int = 64  # training windows per step
    lr: float = 3e-4  # AdamW learning rate (lower than pretraining: small updates)
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    negatives: int = 512  # sampled negatives per step (plus in-batch ones)
    holdout_fraction: float = 0.2  # newest share of the window kept for evaluation
    margin: float = 0.0  # accept if candidate >= serving - margin on `monitor`
    monitor: str = "hr@10"  # the metric the decision compares
    k: int = 10  # list length of the holdout metrics
    min_events: int = 200  # no cycle with fewer events in the window
    seed: int = 0  # seeds batching, sampling and dropout


@dataclass
class CycleReport:
    """What one cycle did and decided."""

    parent_version: str | None = None
    window_events: int = 0
    train_events: int = 0
    holdout_events: int = 0  # held-out events that could be evaluated
    steps: int = 0
    seconds: float = 0.0
    steps_per_s: float = 0.0
    loss: float | None = None
    candidate: dict[str, float] = field(default_factory=dict)
    serving: dict[str, float] = field(default_factory=dict)
    accepted: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fine_tune(
    serving: Ranker,
    table: ItemTable,
    window_events: Sequence[Event],
    config: FineTuneConfig,
    device: torch.device | str = "cpu",
) -> tuple[Ranker, CycleReport]:
    """Train a copy of `serving` on the window's older part; judge it on the newest slice."""
    started = time.perf_counter()
    device = torch.device(device)
    events = sorted(window_events, key=lambda e: e.ts)
    report = CycleReport(window_events=len(events))
    if len(events) < config.min_events:
        report.reason = f"window has {len(events)} events, fewer than min_events {config.min_events}"
        return serving, report
    train, holdout = split_newest(events, config.holdout_fraction)
    report.train_events = len(train)

    candidate = copy.deepcopy(serving).to(device)
    sequences: dict[str, list[Step]] = defaultdict(list)
    for event in train:
        sequences[event.user_id].append(Step(event.item_id, event.type, event.ts))
    windows = make_windows(sequences, table, candidate.config.max_len, candidate.config.gap_buckets)
    if len(windows) > 0:
        result = train_ranker(
            candidate, table, windows,
            TrainConfig(
                epochs=_UNBOUNDED, patience=_UNBOUNDED, max_steps=config.steps,
                batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
                negatives=min(config.negatives, len(table)), seed=config.seed,
            ),
            device, validate=None, progress=False,
        )
        report.steps = result.steps
        losses = [epoch["loss"] for epoch in result.epochs]
        report.loss = round(sum(losses) / len(losses), 6) if losses else None
    candidate.eval()

    cases = holdout_cases(train, holdout, table)
    report.holdout_events = len(cases)
    if cases:
        for name, model in (("candidate", candidate), ("serving", serving)):
            metrics = evaluate(RankerSequenceModel(model, table, device), cases, table.items, k=config.k)
            figures = {k: float(v) for k, v in metrics.as_dict().items() if k != "users"}
            setattr(report, name, figures)
    report.seconds = round(time.perf_counter() - started, 3)
    report.steps_per_s = round(report.steps / report.seconds, 2) if report.seconds > 0 else 0.0
    report.accepted, report.reason = _decide(report, config)
    return candidate, report


def holdout_cases(train: Sequence[Event], holdout: Sequence[Event], table: ItemTable) -> list[Case]:
    """One case per held-out event whose item the table knows: (user, history before it, target)."""
    history: dict[str, list[Step]] = defaultdict(list)
    for event in train:
        history[event.user_id].append(Step(event.item_id, event.type, event.ts))
    cases: list[Case] = []
    for event in holdout:
        step = Step(event.item_id, event.type, event.ts)
        past = history[event.user_id]
        if event.item_id in table.row_of and any(s.item_id in table.row_of for s in past):
            cases.append((event.user_id, list(past), step))
        past.append(step)
    return cases


def _decide(report: CycleReport, config: FineTuneConfig) -> tuple[bool, str]:
    if report.steps == 0:
        return False, "no training step: no user has two known events in the older part"
    if report.holdout_events == 0:
        return False, "nothing to evaluate: no held-out event of a user with a known history"
    metric = config.monitor
    if metric not in report.candidate:
        raise ValueError(f"monitor {metric!r} is not among the metrics {sorted(report.candidate)}")
    new, old = report.candidate[metric], report.serving[metric]
    accepted = new >= old - config.margin
    sign = ">=" if accepted else "<"
    return accepted, f"{metric} {new:.4f} {sign} {old:.4f} - {config.margin:.4f}"
