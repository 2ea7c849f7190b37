"""The end-to-end bench's bookkeeping: the events of a rate as sent (`Phase`), every list as it
arrived (`Arrivals`), and the figures of a phase from the two (`phase_figures`).

Latency is from the event's send (perf_counter at produce) to its list's arrival at the
consumer, matched by `trigger_event_id`; a list also answers that user's earlier events not yet
answered (`events_covered`, the coalesced ones in `all_events_p99_ms`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from streamrec.consumers.tools.load_rig import percentiles
from streamrec.stream.messages import Event

STEADY_SKIP_S = 2.0  # start of a send window left out of the sustained figures (at most 20 %)


@dataclass
class Phase:
    """The events of one rate (or of the warm-up), as sent."""

    name: str
    sent_at: dict[str, float] = field(default_factory=dict)  # event id -> perf_counter at send
    user_events: dict[str, list[str]] = field(default_factory=dict)  # user -> event ids, in order
    position: dict[str, tuple[str, int]] = field(default_factory=dict)  # event id -> (user, index)
    send_started: float = 0.0
    last_send: float = 0.0

    def record(self, event: Event, at: float) -> None:
        self.sent_at[event.event_id] = at
        sequence = self.user_events.setdefault(event.user_id, [])
        self.position[event.event_id] = (event.user_id, len(sequence))
        sequence.append(event.event_id)
        self.last_send = at

    def last_events(self) -> set[str]:
        """Each user's last event: once all of them have a list, every event is answered."""
        return {sequence[-1] for sequence in self.user_events.values()}


@dataclass
class Arrivals:
    """Every list read from `recommendations`, in arrival order."""

    at: list[float] = field(default_factory=list)  # perf_counter when the fetch returned it
    trigger: list[str] = field(default_factory=list)
    worker_latency_ms: list[float] = field(default_factory=list)
    first_seen: dict[str, int] = field(default_factory=dict)  # trigger id -> first arrival's index
    model_versions: set[str] = field(default_factory=set)

    def add(self, at: float, value: bytes) -> None:
        data = json.loads(value)
        trigger = str(data["trigger_event_id"])
        self.first_seen.setdefault(trigger, len(self.at))
        self.at.append(at)
        self.trigger.append(trigger)
        self.worker_latency_ms.append(float(data.get("latency_ms", 0.0)))
        self.model_versions.add(str(data.get("model_version")))


def phase_figures(phase: Phase, arrivals: Arrivals, duration_s: float) -> dict[str, Any]:
    """Lists, coverage, sustained throughput and latency of one phase, from the arrivals."""
    indices = [n for n, trigger in enumerate(arrivals.trigger) if trigger in phase.position]
    answered: dict[str, int] = {}  # user -> index of their last answered event
    latencies, all_latencies, worker_ms = [], [], []
    covered_at: list[tuple[float, int]] = []  # (arrival, events this list answered)
    duplicates = 0
    for n in indices:
        trigger, at = arrivals.trigger[n], arrivals.at[n]
        if arrivals.first_seen[trigger] != n:
            duplicates += 1
            continue
        user, k = phase.position[trigger]
        latencies.append((at - phase.sent_at[trigger]) * 1000)
        worker_ms.append(arrivals.worker_latency_ms[n])
        first = answered.get(user, -1) + 1
        for event_id in phase.user_events[user][first : k + 1]:
            all_latencies.append((at - phase.sent_at[event_id]) * 1000)
        covered_at.append((at, max(0, k + 1 - first)))
        answered[user] = max(answered.get(user, -1), k)
    steady_from = phase.send_started + min(STEADY_SKIP_S, 0.2 * duration_s)
    steady_s = max(phase.last_send - steady_from, 1e-9)
    in_window = [(at, n) for at, n in covered_at if steady_from <= at <= phase.last_send]
    last_arrival = max((at for at, _ in covered_at), default=None)
    thirds = _latency_by_third(phase, arrivals, indices)
    return {
        "lists_received": len(latencies),
        "duplicate_lists": duplicates,
        "events_covered": sum(n for _, n in covered_at),
        "coalesced_events": sum(n for _, n in covered_at) - len(latencies),
        "lists_per_s": round(len(in_window) / steady_s, 1),  # steady part
        "events_covered_per_s": round(sum(n for _, n in in_window) / steady_s, 1),
        "last_list_after_s": None if last_arrival is None else round(last_arrival - phase.last_send, 3),
        **{f"{name}_ms": value for name, value in percentiles(latencies).items()},
        "all_events_p99_ms": percentiles(all_latencies)["p99"],  # coalesced events included
        **{f"worker_{name}_ms": value for name, value in percentiles(worker_ms).items()},
        "p50_first_third_ms": thirds[0],
        "p50_last_third_ms": thirds[1],
    }


def _latency_by_third(phase: Phase, arrivals: Arrivals, indices: list[int]) -> tuple[float | None, float | None]:
    """p50 latency of the triggers sent in the first and in the last third of the window
    (a latency that climbs through the window is lag building up)."""
    span = max(phase.last_send - phase.send_started, 1e-9)
    first, last = [], []
    for n in indices:
        trigger = arrivals.trigger[n]
        if arrivals.first_seen[trigger] != n:
            continue
        sent = phase.sent_at[trigger]
        latency = (arrivals.at[n] - sent) * 1000
        share = (sent - phase.send_started) / span
        if share < 1 / 3:
            first.append(latency)
        elif share >= 2 / 3:
            last.append(latency)
    return (percentiles(first)["p50"], percentiles(last)["p50"])
