"""`streamrec soak`: one worker under steady load for minutes, its memory, lag and latency watched.

Starts the Tansu dev broker and a real worker process (`consumers/load_rig.py`, as the end-to-end
bench does), produces a synthetic catalogue and waits until the worker has indexed it, then sends
events of `users` synthetic users at `rate` per second for `duration_s`, generated a second's
worth at a time (the driver's own memory stays flat too). Every `sample_s` it samples:

- the worker's resident memory (and the broker's and its own: Tansu's memory storage keeps every
  message, so the broker's grows with the log by design), the worker's CPU;
- the worker's consumer lag (`streamrec_consumer_lag`, ingest and recommend topics), its
  de-duplication set (`streamrec_dedup_ids`), the events it counted and the dead letters;
- events sent, lists received, events those lists answer (a list answers its trigger and the
  user's earlier events not yet answered) and the backlog (sent - answered);
- latency p50/p99 of the lists that arrived since the last sample (event sent -> list received).

After the last event it waits at most `drain_max_s` for the backlog to drain (a worker that fell
behind does not hold the run up), then at most `LAG_SETTLE_S` for the lag gauge to read 0,
stops everything and writes the report: the samples as JSON, a markdown summary with the
verdicts (`judge`): RSS flat over the last half, lag not growing over the last half, the rate
held. The verdicts read the last half only, so start-up and the first fill are left out.
Ctrl-C stops cleanly and still writes the report of what was measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.consumers.tools.bench_report import write_figures
from streamrec.consumers.tools.load_rig import (
    MIB,
    Rig,
    index_catalogue,
    percentiles,
    reading_lists,
    running_rig,
    send_at_rate,
)
from streamrec.consumers.tools.processes import cpu_seconds, own_cpu_seconds, rss_bytes
from streamrec.consumers.tools.scrape import sample_total, scrape_samples
from streamrec.consumers.worker.metrics import SAMPLE_S
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.stream.messages import Event
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings

DEFAULT_RATE = 1_000.0  # events per second offered
DEFAULT_USERS = 100_000
DEFAULT_DURATION_S = 600.0  # seconds of load
DEFAULT_SAMPLE_S = 5.0
DEFAULT_ITEMS = 2_000  # catalogue (embedded by the worker with MiniLM, ~300 items/s)
DEFAULT_DRAIN_MAX_S = 60.0  # after the last event, wait at most this long for the backlog
LAG_SETTLE_S = 3 * SAMPLE_S  # ... then at most this long for the lag gauge to read 0
POLL_S = 0.1
RSS_FLAT_MIB_PER_MIN = 1.0  # "RSS bounded": slope over the last half at most this
LAG_FLAT_SHARE = 0.02  # "lag not growing": slope at most this share of the rate (and 1 msg/s)
HELD_SHARE = 0.95  # "rate held": answered at least this share of the rate offered
FILLING_SHARE = 0.01  # a bounded structure that grew by more than this share is still filling
STALL_S = 30.0  # no event counted and none answered for this long, with a backlog: a stall
BUSY_BROKER_CORES = 0.8  # a stalled worker beside a broker this busy: the broker is the bottleneck
TIMELINE_ROWS = 24  # samples shown in the markdown timeline (all are in the JSON)
EVENT_ID_PREFIX = "soak-"


def _say(text: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"[soak] {text}", flush=True)


# --- what was sent and what came back, in arrays sized once --------------------------------
@dataclass
class Ledger:
    """Every event planned (by number) and every user (by index): what was sent, what a list
    answered, and the latency of each list; numpy arrays, so memory does not grow in the run."""

    total: int
    user_index: dict[str, int]
    history_length: int
    sent_at: np.ndarray = field(init=False)  # (total,) perf_counter at send
    user_of: np.ndarray = field(init=False)  # (total,) the event's user
    ordinal: np.ndarray = field(init=False)  # (total,) its place in the user's events, from 1
    latency_ms: np.ndarray = field(init=False)  # (total,) send -> list received, NaN: no list
    worker_ms: np.ndarray = field(init=False)  # (total,) the list's latency_ms (event ts -> list made)
    sent_per_user: np.ndarray = field(init=False)  # (users,)
    answered_per_user: np.ndarray = field(init=False)  # (users,) ordinal of the newest event answered
    sent: int = 0
    lists: int = 0
    covered: int = 0  # events answered by a list
    duplicate_lists: int = 0  # a second list for the same trigger
    foreign_lists: int = 0  # lists whose trigger is not a soak event
    window: list[int] = field(default_factory=list)  # triggers answered since the last sample

    def __post_init__(self) -> None:
        users = len(self.user_index)
        self.sent_at = np.full(self.total, np.nan)
        self.user_of = np.zeros(self.total, dtype=np.int32)
        self.ordinal = np.zeros(self.total, dtype=np.int32)
        self.latency_ms = np.full(self.total, np.nan, dtype=np.float32)
        self.worker_ms = np.full(self.total, np.nan, dtype=np.float32)
        self.sent_per_user = np.zeros(users, dtype=np.int32)
        self.answered_per_user = np.zeros(users, dtype=np.int32)

    def on_sent(self, event: Event, at: float) -> None:
        n = int(event.event_id.removeprefix(EVENT_ID_PREFIX))
        user = self.user_index[event.user_id]
        self.sent_per_user[user] += 1
        self.sent_at[n], self.user_of[n], self.ordinal[n] = at, user, self.sent_per_user[user]
        self.sent += 1

    def on_list(self, at: float, value: bytes) -> None:
        data = json.loads(value)
        trigger = str(data.get("trigger_event_id", ""))
        number = trigger.removeprefix(EVENT_ID_PREFIX)
        if not trigger.startswith(EVENT_ID_PREFIX) or not number.isdigit() or int(number) >= self.total:
            self.foreign_lists += 1
            return
        n = int(number)
        if not np.isnan(self.latency_ms[n]):
            self.duplicate_lists += 1
            return
        self.lists += 1
        self.latency_ms[n] = (at - self.sent_at[n]) * 1000.0
        self.worker_ms[n] = float(data.get("latency_ms", np.nan))
        user, ordinal = self.user_of[n], self.ordinal[n]
        if ordinal > self.answered_per_user[user]:
            self.covered += int(ordinal - self.answered_per_user[user])
            self.answered_per_user[user] = ordinal
        self.window.append(n)

    @property
    def backlog(self) -> int:
        return self.sent - self.covered

    def users_seen(self) -> int:
        return int(np.count_nonzero(self.sent_per_user))

    def interactions_held(self) -> int:
        """Interactions the worker's user states hold now: each user's answered events, up to
        the history length (a bounded structure that is still filling while this grows)."""
        return int(np.minimum(self.answered_per_user, self.history_length).sum())

    def take_window(self) -> tuple[dict[str, float | None], dict[str, float | None]]:
        """Latency percentiles of the lists that arrived since the last call (driver, worker)."""
        rows, self.window = self.window, []
        return percentiles(self.latency_ms[rows]), percentiles(self.worker_ms[rows])


def soak_events(world: SyntheticWorld, total: int, chunk: int) -> Iterator[Event]:
    """`total` synthetic events numbered `soak-0` ..., generated `chunk` at a time."""
    for stream, start in enumerate(range(0, total, chunk)):
        events = world.events(min(chunk, total - start), start_ts=time.time(), stream=stream)
        for k, event in enumerate(events):
            yield event.model_copy(update={"event_id": f"{EVENT_ID_PREFIX}{start + k}"})


# --- sampling -------------------------------------------------------------------------------
@dataclass
class Sampler:
    """Takes a sample of the worker, the broker and the ledger; remembers the previous one."""

    rig: Rig
    ledger: Ledger
    started: float  # perf_counter when the load started
    duration_s: float
    phase: str = "load"
    samples: list[dict[str, Any]] = field(default_factory=list)
    _last: tuple[float, tuple[float, float, float], int, int] = field(init=False)
    # perf_counter, CPU seconds (worker, broker, driver), sent, answered

    def __post_init__(self) -> None:
        self._last = (self.started, self._cpu(), 0, 0)

    def _cpu(self) -> tuple[float, float, float]:
        return cpu_seconds(self.rig.worker.pid), cpu_seconds(self.rig.broker_pid), own_cpu_seconds()

    async def sample(self) -> dict[str, Any]:
        rig, ledger = self.rig, self.ledger
        scraped = await asyncio.to_thread(scrape_samples, rig.settings.metrics_port)
        now, cpu = time.perf_counter(), self._cpu()
        last = self._last
        wall = max(now - last[0], 1e-9)
        driver, worker = ledger.take_window()
        sample: dict[str, Any] = {
            "t_s": round(now - self.started, 1),
            "phase": self.phase,
            "sent": ledger.sent,
            "lists": ledger.lists,
            "answered": ledger.covered,
            "backlog": ledger.backlog,
            "sent_per_s": round((ledger.sent - last[2]) / wall, 1),
            "answered_per_s": round((ledger.covered - last[3]) / wall, 1),
            "users_seen": ledger.users_seen(),
            "interactions_held": ledger.interactions_held(),
            "worker_rss_mib": _mib(rss_bytes(rig.worker.pid)),
            "broker_rss_mib": _mib(rss_bytes(rig.broker_pid)),
            "driver_rss_mib": _mib(rss_bytes("self")),
            "worker_cores": round((cpu[0] - last[1][0]) / wall, 2),
            "broker_cores": round((cpu[1] - last[1][1]) / wall, 2),
            "driver_cores": round((cpu[2] - last[1][2]) / wall, 2),
            "p50_ms": driver["p50"],
            "p99_ms": driver["p99"],
            "worker_p99_ms": worker["p99"],
            **_worker_figures(scraped, rig.settings),
        }
        self._last = (now, cpu, ledger.sent, ledger.covered)
        self.samples.append(sample)
        return sample

    async def every(self, sample_s: float, quiet: bool) -> None:
        """Forever: a sample every `sample_s` (after the previous one) and its progress line."""
        while True:
            await asyncio.sleep(sample_s)
            self.rig.check()
            _say(progress_line(await self.sample(), self.duration_s), quiet)


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / MIB, 1)


def _worker_figures(scraped: dict[str, float] | None, settings: Settings) -> dict[str, float | None]:
    """The worker's own counters and gauges; None for each while /metrics does not answer."""
    names = ("lag", "lag_ingest", "lag_recommend", "dedup_ids", "events_counted", "dead_letters",
             "worker_lists")
    if scraped is None:
        return dict.fromkeys(names)
    topics = settings.topics
    ingest = sample_total(scraped, "streamrec_consumer_lag", topic=topics.events)
    recommend = sample_total(scraped, "streamrec_consumer_lag", topic=topics.events_by_user)
    return {
        "lag": ingest + recommend,
        "lag_ingest": ingest,
        "lag_recommend": recommend,
        "dedup_ids": sample_total(scraped, "streamrec_dedup_ids"),
        "events_counted": sample_total(scraped, "streamrec_events_total"),
        "dead_letters": sample_total(scraped, "streamrec_dead_letters_total"),
        "worker_lists": sample_total(scraped, "streamrec_recommendations_total"),
    }


def progress_line(sample: dict[str, Any], duration_s: float) -> str:
    lag = "-" if sample["lag"] is None else f"{sample['lag']:.0f}"
    dedup = "-" if sample["dedup_ids"] is None else f"{sample['dedup_ids']:.0f}"
    p99 = "-" if sample["p99_ms"] is None else f"{sample['p99_ms'] / 1000:.1f}s"
    rss = "-" if sample["worker_rss_mib"] is None else f"{sample['worker_rss_mib']:.0f} MiB"
    return (f"{sample['t_s']:5.0f}/{duration_s:.0f}s {sample['phase']}: sent {sample['sent']} "
            f"({sample['sent_per_s']:.0f}/s), answered {sample['answered']} ({sample['answered_per_s']:.0f}/s), "
            f"backlog {sample['backlog']}, lag {lag}, worker {rss}, dedup {dedup}, p99 {p99}")


# --- the run ----------------------------------------------------------------------------------
async def _drain(rig: Rig, ledger: Ledger, drain_max_s: float) -> float | None:
    """Seconds until every event sent was answered; None if some were not within `drain_max_s`."""
    started = time.perf_counter()
    while ledger.backlog > 0:
        rig.check()
        if time.perf_counter() - started > drain_max_s:
            return None
        await asyncio.sleep(POLL_S)
    return round(time.perf_counter() - started, 2)


async def _settled_lag(rig: Rig, timeout_s: float) -> float | None:
    """The worker's lag gauge once it reads 0, or its last reading after `timeout_s` (the gauge
    is sampled every `SAMPLE_S` and counts committed offsets, which trail the processing)."""
    deadline = time.monotonic() + timeout_s
    lag = None
    while True:
        scraped = await asyncio.to_thread(scrape_samples, rig.settings.metrics_port)
        lag = _worker_figures(scraped, rig.settings)["lag"]
        if lag == 0 or time.monotonic() > deadline:
            return lag
        await asyncio.sleep(1.0)


async def _soak(rig: Rig, world: SyntheticWorld, plan: dict[str, Any], results: dict[str, Any],
                quiet: bool) -> None:
    total = int(round(plan["rate"] * plan["duration_s"]))
    ledger = Ledger(total, {user: n for n, user in enumerate(world.user_ids())}, plan["history_length"])
    say = lambda text: _say(text, quiet)  # noqa: E731
    async with reading_lists(rig, ledger.on_list), EventProducer(rig.settings) as producer:
        results["worker"].update(await index_catalogue(rig, producer, world.items(time.time()),
                                                       results["_started"], say))
        say(f"load: {total} events of {len(ledger.user_index)} users at {plan['rate']:.0f}/s "
            f"for {plan['duration_s']:.0f}s, a sample every {plan['sample_s']:.0f}s ...")
        sampler = Sampler(rig, ledger, time.perf_counter(), plan["duration_s"])
        results["samples"] = sampler.samples
        sampling = asyncio.create_task(sampler.every(plan["sample_s"], quiet))
        try:
            events = soak_events(world, total, chunk=max(100, int(plan["rate"])))
            results["send"] = await send_at_rate(producer, events, total, plan["rate"], ledger.on_sent,
                                                 lambda elapsed, sent: _check(rig, sampling))
            sampler.phase = "drain"
            say(f"sent {ledger.sent} events; waiting at most {plan['drain_max_s']:.0f}s for "
                f"the backlog of {ledger.backlog} ...")
            drained = await _drain(rig, ledger, plan["drain_max_s"])
            results["drain"] = {"drained_after_s": drained, "backlog_left": ledger.backlog,
                                "final_lag": await _settled_lag(rig, LAG_SETTLE_S)}
        finally:  # what was measured is reported, also after an error
            sampling.cancel()
            await asyncio.gather(sampling, return_exceptions=True)
            sampler.phase = "end"
            await sampler.sample()
            results["events"] = {
                "planned": total, "sent": ledger.sent, "lists": ledger.lists, "answered": ledger.covered,
                "duplicate_lists": ledger.duplicate_lists, "foreign_lists": ledger.foreign_lists,
                "users_seen": ledger.users_seen(),
            }
            results["latency"] = _latency(ledger, sampler.started, plan["duration_s"])


def _check(rig: Rig, sampling: asyncio.Task) -> None:
    rig.check()
    if sampling.done() and not sampling.cancelled() and sampling.exception() is not None:
        raise RuntimeError(f"sampling failed: {sampling.exception()!r}")


def _latency(ledger: Ledger, started: float, duration_s: float) -> dict[str, Any]:
    """Percentiles over the whole run and over the triggers sent in its last half."""
    answered = ~np.isnan(ledger.latency_ms)
    late = answered & (ledger.sent_at >= started + duration_s / 2)
    return {
        "all": percentiles(ledger.latency_ms[answered]),
        "last_half": percentiles(ledger.latency_ms[late]),
        "worker_all": percentiles(ledger.worker_ms[answered & ~np.isnan(ledger.worker_ms)]),
    }


# --- verdicts ----------------------------------------------------------------------------------
def slope_per_s(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t, y) points; None with fewer than 3.

    >>> slope_per_s([(0, 1.0), (5, 2.0), (10, 3.0)])
    0.2
    """
    if len(points) < 3:
        return None
    t, y = np.array(points, dtype=float).T
    if np.ptp(t) == 0:
        return None
    return round(float(np.polyfit(t, y, 1)[0]), 6)


def judge(results: dict[str, Any]) -> dict[str, Any]:
    """The verdicts, from the samples of the load's last half.

    - **RSS bounded**: the worker's RSS slope at most `RSS_FLAT_MIB_PER_MIN`. Over it, the verdict
      says whether the bounded structures were still filling then (users seen, interactions held
      up to the history length, de-duplication ids below capacity): growth while they fill is
      expected and says nothing of a leak; growth while all are full is one.
    - **lag not growing**: the slope of the driver's backlog (events sent, not yet answered) at
      most `LAG_FLAT_SHARE` of the rate offered (and at least 1 event/s). The worker's lag gauge
      says the same in messages but moves in steps of the commit interval, too coarse to judge
      a slope by over a short run; its slope is reported beside.
    - **rate held**: events answered per second over the last half at least `HELD_SHARE` of the
      rate offered, with the lag not growing.
    """
    plan = results["settings"]
    half = plan["duration_s"] / 2
    load = [s for s in results.get("samples", []) if s["phase"] == "load" and s["t_s"] >= half]
    verdicts: dict[str, Any] = {"samples_judged": len(load), "from_t_s": half}

    def series(key: str) -> list[tuple[float, float]]:
        return [(s["t_s"], float(s[key])) for s in load if s.get(key) is not None]

    rss_slope = slope_per_s(series("worker_rss_mib"))
    filling = _still_filling(load, plan)
    rss: dict[str, Any] = {"slope_mib_per_min": None if rss_slope is None else round(rss_slope * 60, 2),
                           "limit_mib_per_min": RSS_FLAT_MIB_PER_MIN, "still_filling": filling}
    if rss_slope is None:
        rss["verdict"] = "unknown (too few samples)"
    elif rss_slope * 60 <= RSS_FLAT_MIB_PER_MIN:
        rss["verdict"] = "bounded"
    elif filling:
        rss["verdict"] = "growing while bounded structures fill"
    else:
        rss["verdict"] = "growing (leak?)"
    rss["ok"] = rss["verdict"] != "growing (leak?)" if rss_slope is not None else None
    verdicts["rss"] = rss

    lag_slope, backlog_slope = slope_per_s(series("lag")), slope_per_s(series("backlog"))
    lag_limit = max(1.0, LAG_FLAT_SHARE * plan["rate"])
    verdicts["lag"] = {
        "slope_per_s": lag_slope, "backlog_slope_per_s": backlog_slope, "limit_per_s": lag_limit,
        "ok": None if backlog_slope is None else backlog_slope <= lag_limit,
    }

    verdicts["progress"] = find_stall(results.get("samples", []))

    answered = series("answered")
    answered_per_s = slope_per_s(answered)
    send = results.get("send", {})
    verdicts["rate"] = {
        "offered_per_s": plan["rate"],
        "sent_per_s": send.get("sent_per_s"),
        "answered_per_s_last_half": None if answered_per_s is None else round(answered_per_s, 1),
        "held_share": HELD_SHARE,
        "ok": (None if answered_per_s is None else
               answered_per_s >= HELD_SHARE * plan["rate"] and bool(verdicts["lag"]["ok"])),
    }
    return verdicts


def find_stall(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The first stretch of at least `STALL_S` in which the worker counted no new event and no
    list answered one while events waited (a worker that stopped, not one that is slow).

    >>> flat = [{"t_s": 10.0 * k, "events_counted": 500.0, "answered": 400, "backlog": 100,
    ...          "broker_cores": 1.0} for k in range(5)]
    >>> find_stall(flat)["stalled_from_t_s"], find_stall(flat[:3])["ok"]
    (0.0, True)
    """
    start: dict[str, Any] | None = None
    for sample in samples:
        if sample.get("events_counted") is None:
            continue  # /metrics did not answer: no figure either way
        moving = start is None or (sample["events_counted"], sample["answered"]) != (
            start["events_counted"], start["answered"])
        if moving or sample["backlog"] <= 0:
            start = sample if sample["backlog"] > 0 else None
            continue
        if sample["t_s"] - start["t_s"] >= STALL_S:
            stalled = [s for s in samples if s["t_s"] >= start["t_s"] and s.get("broker_cores") is not None]
            broker = float(np.mean([s["broker_cores"] for s in stalled])) if stalled else None
            return {"ok": False, "stalled_from_t_s": start["t_s"], "events_counted": start["events_counted"],
                    "answered": start["answered"], "broker_cores": None if broker is None else round(broker, 2)}
    return {"ok": True, "stalled_from_t_s": None}


def _still_filling(load: Sequence[dict[str, Any]], plan: dict[str, Any]) -> list[str]:
    """Which bounded structures grew by more than `FILLING_SHARE` over the samples."""
    if len(load) < 2:
        return []
    first, last = load[0], load[-1]
    out = []
    for key, label in (("users_seen", "users seen"), ("interactions_held", "interactions held")):
        if last[key] > first[key] * (1 + FILLING_SHARE):
            out.append(f"{label} {first[key]} -> {last[key]}")
    ids = (first.get("dedup_ids"), last.get("dedup_ids"))
    if None not in ids and ids[1] > ids[0] * (1 + FILLING_SHARE) and ids[1] < plan["dedup_capacity"]:
        out.append(f"de-duplication ids {ids[0]:.0f} -> {ids[1]:.0f} (capacity {plan['dedup_capacity']})")
    return out


def rss_figures(samples: Sequence[dict[str, Any]], key: str = "worker_rss_mib") -> dict[str, float | None]:
    """RSS at the first load sample, its peak, and at the end (MiB)."""
    values = [s[key] for s in samples if s.get(key) is not None]
    if not values:
        return {"start": None, "peak": None, "end": None}
    return {"start": values[0], "peak": max(values), "end": values[-1]}


# --- report ------------------------------------------------------------------------------------
def memory_bounds(settings: Settings) -> list[tuple[str, str]]:
    """What bounds each per-worker structure that grows with traffic, with the limits in force."""
    from streamrec.consumers.worker.agents import RECENT_EVENTS
    from streamrec.models.core.popularity import TrendingItems
    from streamrec.models.core.state import UserState

    state = UserState("-", max_history=settings.history_length)
    return [
        ("ingest de-duplication (`RecentIds`)",
         f"{settings.dedup_capacity:,} event ids, least recently seen evicted (`STREAMREC_DEDUP_CAPACITY`)"),
        ("user state: recent interactions",
         f"{settings.history_length} per user (`STREAMREC_HISTORY_LENGTH`)"),
        ("user state: consumed items", f"{state.max_consumed:,} per user, oldest evicted"),
        ("user-state and latest-recommendations tables",
         "one entry per user this worker's partitions have seen: bounded by the user count, not by "
         f"traffic; no expiry of idle users (`STREAMREC_TABLE_STORE={settings.table_store}`; "
         "`rocksdb://` keeps them on disk)"),
        ("trending counts (`TrendingItems`)",
         f"{TrendingItems().capacity:,} items; over it, pruned to the top 90 %"),
        ("recent events (HTTP API, live page)", f"{RECENT_EVENTS}"),
        ("item vectors / neighbour lists (`CachedItemIndex`)",
         f"{settings.item_cache_size:,} / {settings.neighbour_cache_size:,}, least recently used out "
         "(`STREAMREC_ITEM_CACHE_SIZE`, `STREAMREC_NEIGHBOUR_CACHE_SIZE`)"),
        ("metric labels", "event type x outcome, topic x reason, stage, agent, partition: no per-user or "
         "per-item label; `model_version` grows with the versions served (not with traffic)"),
    ]


def render_markdown(results: dict[str, Any]) -> str:
    plan, verdicts = results["settings"], results.get("verdicts", {})
    samples = results.get("samples", [])
    rss, broker = rss_figures(samples), rss_figures(samples, "broker_rss_mib")
    latency = results.get("latency", {})
    drain = results.get("drain", {})
    events = results.get("events", {})
    lines = [
        "# Soak",
        "",
        f"Written by `{command_line(plan)}` (`make soak` runs the defaults and writes docs/soak.md; "
        "`make soak RATE=... USERS=... DURATION=...`); every sample is in the JSON. The broker, one "
        "`streamrec worker` subprocess and this driver (producer and a plain consumer) on one machine.",
        "",
        f"Machine: {plan['cpu_count']} CPUs, load average at the start {plan['load_average']}; broker: "
        f"{'the embedded Tansu dev broker (memory storage)' if plan.get('broker', 'embedded') == 'embedded' else plan['broker']}. "
        f"Offered {plan['rate']:.0f} events/s of {plan['users']:,} users for {plan['duration_s']:.0f} s, "
        f"{plan['items']:,} items, a sample every {plan['sample_s']:.0f} s; partitions {plan['partitions']}, "
        f"batch {plan['batch_size']}, de-duplication capacity {plan['dedup_capacity']:,}, "
        f"history length {plan['history_length']}.",
        "",
    ]
    if results.get("error") or results.get("interrupted"):
        lines += [f"**The run did not complete**: {results.get('error') or 'interrupted'}", ""]
    lines += ["## Verdicts (last half of the load)", "", "| check | measured | limit | verdict |", "|---|---|---|---|"]
    if "rss" in verdicts:
        r = verdicts["rss"]
        lines.append(f"| worker RSS bounded | {_num(r['slope_mib_per_min'], 2)} MiB/min "
                     f"(start {_num(rss['start'])}, peak {_num(rss['peak'])}, end {_num(rss['end'])} MiB) | "
                     f"<= {r['limit_mib_per_min']} MiB/min | {r['verdict']} |")
        g = verdicts["lag"]
        lines.append(f"| lag not growing | backlog {_num(g['backlog_slope_per_s'], 1)} /s (worker lag gauge "
                     f"{_num(g['slope_per_s'], 1)} /s) | <= {g['limit_per_s']:.0f} /s | "
                     f"{_ok(g['ok'], 'flat', 'growing')} |")
        p = verdicts["progress"]
        stalled = (f"stalled from t = {p['stalled_from_t_s']:.0f} s: events counted flat at "
                   f"{p['events_counted']:,.0f}, {p['answered']:,} answered; broker {_num(p['broker_cores'], 2)} "
                   "cores" if not p["ok"] else "kept counting and answering")
        lines.append(f"| worker progress | {stalled} | no {STALL_S:.0f}-s stretch without progress while "
                     f"events wait | {_ok(p['ok'], 'ok', 'stalled')} |")
        a = verdicts["rate"]
        lines.append(f"| rate held | answered {_num(a['answered_per_s_last_half'])}/s; sent "
                     f"{_num(a['sent_per_s'])}/s of {a['offered_per_s']:.0f}/s offered | "
                     f">= {a['held_share']:.0%} of offered | {_ok(a['ok'], 'held', 'not held')} |")
    lines += ["", "## Figures", ""]
    lines.append(f"- worker RSS: start {_num(rss['start'])} MiB, peak {_num(rss['peak'])} MiB, end "
                 f"{_num(rss['end'])} MiB; broker RSS {_num(broker['start'])} -> {_num(broker['end'])} MiB "
                 "(Tansu's memory storage keeps every message)")
    if events:
        lines.append(f"- events: {events['sent']:,} sent, {events['answered']:,} answered by "
                     f"{events['lists']:,} lists ({events['duplicate_lists']} duplicate lists), "
                     f"{events['users_seen']:,} users seen")
    last = samples[-1] if samples else {}
    if last:
        lines.append(f"- worker counted {_num(last.get('events_counted'))} events, "
                     f"{_num(last.get('dead_letters'))} dead letters; de-duplication ids "
                     f"{_num(last.get('dedup_ids'))} of {plan['dedup_capacity']:,}")
    if drain:
        drained = (f"drained {drain['drained_after_s']} s after the last event" if drain["drained_after_s"]
                   is not None else f"{drain['backlog_left']:,} events still unanswered "
                   f"{plan['drain_max_s']:.0f} s after the last event")
        lines.append(f"- {drained}; worker lag gauge at the end {_num(drain['final_lag'])}")
    for name, label in (("all", "whole run"), ("last_half", "events sent in the last half")):
        figures = latency.get(name)
        if figures and figures["p50"] is None:
            lines.append(f"- latency, {label}: no list arrived for them")
        elif figures:
            lines.append(f"- latency (event sent -> list received), {label}: p50 {_num(figures['p50'])} ms, "
                         f"p99 {_num(figures['p99'])} ms, max {_num(figures['max'])} ms")
    if results.get("verdicts", {}).get("rss", {}).get("still_filling"):
        lines.append("- still filling in the last half: " + "; ".join(verdicts["rss"]["still_filling"]))
    for note in results.get("notes", []):
        lines.append(f"- note: {note}")
    lines += ["", "## Timeline", "",
              "backlog: events sent that no list has answered yet (the driver's count); lag: the worker's "
              "`streamrec_consumer_lag` over the ingest and recommend topics (messages not committed, sampled "
              f"every {SAMPLE_S:.0f} s); latency: event sent -> list received, of the lists that arrived in the sample's interval.",
              "",
              "| t s | phase | sent | answered/s | backlog | lag | worker MiB | broker MiB | dedup ids | "
              "users seen | p50 ms | p99 ms | cores: worker / broker / driver |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    step = max(1, -(-len(samples) // TIMELINE_ROWS))
    shown = samples[::step] + ([samples[-1]] if samples and (len(samples) - 1) % step else [])
    for s in shown:
        lines.append(f"| {s['t_s']:.0f} | {s['phase']} | {s['sent']:,} | {s['answered_per_s']:.0f} | "
                     f"{s['backlog']:,} | {_num(s['lag'])} | {_num(s['worker_rss_mib'])} | "
                     f"{_num(s['broker_rss_mib'])} | {_num(s['dedup_ids'])} | {s['users_seen']:,} | "
                     f"{_num(s['p50_ms'])} | {_num(s['p99_ms'])} | "
                     f"{s['worker_cores']} / {s.get('broker_cores', '–')} / {s.get('driver_cores', '–')} |")
    lines += ["", "## What bounds the worker's memory", "", "| structure | bound |", "|---|---|"]
    lines += [f"| {name} | {bound} |" for name, bound in results.get("memory_bounds", [])]
    return "\n".join(lines) + "\n"


def command_line(plan: dict[str, Any]) -> str:
    """The `streamrec soak` command of a run (its worker limits come from STREAMREC_* env vars).

    >>> command_line({"rate": 1000.0, "users": 100000, "duration_s": 600.0, "sample_s": 5.0, "items": 2000,
    ...               "drain_max_s": 60.0, "seed": 7})
    'streamrec soak --rate 1000 --users 100000 --duration 600 --sample-every 5 --items 2000 --drain-max 60 --seed 7'
    """
    return (f"streamrec soak --rate {plan['rate']:g} --users {plan['users']} --duration {plan['duration_s']:g} "
            f"--sample-every {plan['sample_s']:g} --items {plan['items']} --drain-max {plan['drain_max_s']:g} "
            f"--seed {plan['seed']}" + (f" --broker {plan['broker']}" if plan.get("broker", "embedded") != "embedded"
                                        else ""))


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _ok(value: bool | None, yes: str, no: str) -> str:
    return "unknown" if value is None else (yes if value else no)


def _notes(results: dict[str, Any]) -> list[str]:
    plan, verdicts = results["settings"], results.get("verdicts", {})
    notes = []
    rate, stall = verdicts.get("rate", {}), verdicts.get("progress", {})
    if stall.get("ok") is False:
        before = [s["answered_per_s"] for s in results.get("samples", []) if s["phase"] == "load"
                  and s["t_s"] <= stall["stalled_from_t_s"] and s.get("answered_per_s") is not None]
        if before:
            notes.append(f"before the stall the worker answered {np.mean(before):.0f} events/s on average of the "
                         f"{plan['rate']:.0f}/s offered (the backlog grew from the start)"
                         if np.mean(before) < HELD_SHARE * plan["rate"] else
                         f"before the stall the worker kept up ({np.mean(before):.0f} events/s answered)")
    elif rate.get("ok") is False and rate.get("answered_per_s_last_half") is not None:
        notes.append(f"the worker answered {rate['answered_per_s_last_half']:.0f} events/s of the "
                     f"{plan['rate']:.0f}/s offered: at this rate it falls behind on this machine and the "
                     "lag grows for as long as the load lasts")
    if stall.get("ok") is False:
        if plan.get("broker") == "embedded" and (stall.get("broker_cores") or 0) >= BUSY_BROKER_CORES:
            notes.append(
                f"the worker stalled at t = {stall['stalled_from_t_s']:.0f} s, idle, while the embedded Tansu "
                f"broker used {stall['broker_cores']:.2f} cores: Tansu 0.6's memory storage slows down with "
                "the number of record batches in a partition (one-record batches: a fetch takes ~40 ms at "
                "10k batches and more than 10 s at 20k), and the producers here send small batches (5 ms "
                "linger: a few events per batch and partition). The soak then measures the dev broker, not "
                "the worker: "
                "soak a real Kafka with --broker, or spread the batches over more partitions "
                "(STREAMREC_PARTITIONS)")
        else:
            notes.append(f"the worker stalled at t = {stall['stalled_from_t_s']:.0f} s: see its log (--logs)")
    sent = results.get("send", {}).get("sent_per_s")
    if sent is not None and sent < HELD_SHARE * plan["rate"]:
        notes.append(f"the driver itself sent only {sent:.0f} events/s: the load generator is short of the rate")
    notes.append(f"the driver, the worker and the broker share {plan['cpu_count']} cores")
    return notes


# --- entry point ---------------------------------------------------------------------------------
def run_soak(
    rate: float = DEFAULT_RATE,
    users: int = DEFAULT_USERS,
    duration_s: float = DEFAULT_DURATION_S,
    *,
    sample_s: float = DEFAULT_SAMPLE_S,
    items: int = DEFAULT_ITEMS,
    drain_max_s: float = DEFAULT_DRAIN_MAX_S,
    seed: int = 7,
    out: Path | None = None,
    markdown: Path | None = None,
    logs: Path | None = None,
    broker_url: str | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Broker + one worker under `rate` events/s for `duration_s`; returns the figures and writes
    the JSON (`out`) and the markdown (`markdown`) even when the run failed or was interrupted,
    and keeps the worker's and broker's logs in `logs`. `broker_url`: a running broker to use
    instead of starting Tansu. The worker's settings come from the STREAMREC_* env (e.g.
    `STREAMREC_DEDUP_CAPACITY`)."""
    if rate <= 0 or duration_s <= 0 or sample_s <= 0 or users < 1 or items < 1 or drain_max_s < 0:
        raise ValueError("rate, duration_s, sample_s, users and items must be positive")
    base = Settings()
    results: dict[str, Any] = {
        "settings": {
            "rate": rate, "users": users, "duration_s": duration_s, "sample_s": sample_s, "items": items,
            "drain_max_s": drain_max_s, "seed": seed, "broker": broker_url or "embedded",
            "partitions": base.partitions,
            "batch_size": base.batch_size, "dedup_capacity": base.dedup_capacity,
            "history_length": base.history_length, "cpu_count": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        "worker": {},
        "memory_bounds": memory_bounds(base),
        "_started": time.monotonic(),
    }
    rig: Rig | None = None
    try:
        with running_rig(base, "soak", lambda text: _say(text, quiet), logs_to=logs, broker_url=broker_url) as rig:
            world = SyntheticWorld(seed=seed, n_items=items, n_users=users)
            asyncio.run(_soak(rig, world, results["settings"], results, quiet))
    except KeyboardInterrupt:
        results["interrupted"] = True
        _say("interrupted; stopping ...", quiet)
        raise
    except (RuntimeError, OSError) as exc:
        results["error"] = str(exc)
        _say(f"the soak failed: {exc}", quiet)
    finally:
        if rig is not None:
            results["worker"]["exit_code"] = rig.exit_code
        results.pop("_started", None)
        results["verdicts"] = judge(results)
        results["notes"] = _notes(results)
        text = render_markdown(results)
        if not quiet:
            print("\n" + text)
        if out is not None:
            write_figures(out, results)
            _say(f"wrote {out}", quiet)
        if markdown is not None:
            markdown.parent.mkdir(parents=True, exist_ok=True)
            markdown.write_text(text)
            _say(f"wrote {markdown}", quiet)
    return results
