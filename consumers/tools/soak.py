"""`streamrec soak`: one worker under steady load for minutes, its memory, lag and latency watched.

Starts the Tansu dev broker and a real worker process (`load_rig.py`, as the end-to-end bench
does), produces a synthetic catalogue and waits until the worker has indexed it, then sends
events of `users` synthetic users at `rate` per second for `duration_s`, generated a second's
worth at a time (the driver's own memory stays flat too). Every `sample_s` it samples:

- the worker's resident memory (and the broker's and its own: Tansu's memory storage keeps every
  message, so the broker's grows with the log by design), the worker's CPU;
- the worker's consumer lag (`streamrec_consumer_lag` of `events` and `events.by-user`: with one
  hop, the events the load generator keys by user are served straight from `events`), its
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

The parts: `soak_ledger.py` (what was sent and answered), `soak_verdicts.py` (the checks),
`soak_report.py` (the markdown); here the run and its sampling.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.consumers.tools.bench_report import write_figures
from streamrec.consumers.tools.broker_probe import TopicProbe
from streamrec.consumers.tools.load_rig import (
    MIB,
    Rig,
    cores_used,
    index_catalogue,
    machine,
    percentiles,
    reading_lists,
    run_on_rig,
    send_at_rate,
)
from streamrec.consumers.tools.processes import rss_bytes
from streamrec.consumers.tools.scrape import sample_total, scrape_samples
from streamrec.consumers.tools.soak_ledger import Ledger, soak_events
from streamrec.consumers.tools.soak_report import memory_bounds, notes_on, render_markdown
from streamrec.consumers.tools.soak_verdicts import judge
from streamrec.consumers.worker.metrics import SAMPLE_S
from streamrec.models.data.synthetic import SyntheticWorld
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
COUNT_BATCHES_TIMEOUT_S = 120.0  # at the end, reading the topics whole to count their record batches


def _say(text: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"[soak] {text}", flush=True)


# --- sampling -------------------------------------------------------------------------------
@dataclass
class Sampler:
    """Takes a sample of the worker, the broker and the ledger; remembers the previous one."""

    rig: Rig
    ledger: Ledger
    started: float  # perf_counter when the load started
    duration_s: float
    phase: str = "load"
    probe: TopicProbe | None = None  # times a fetch at the tail of `events` and `recommendations`
    samples: list[dict[str, Any]] = field(default_factory=list)
    _last: tuple[float, dict[str, float], int, int] = field(init=False)
    # perf_counter, CPU seconds (`Rig.cpu_seconds`), sent, answered

    def __post_init__(self) -> None:
        self._last = (self.started, self.rig.cpu_seconds(), 0, 0)

    async def sample(self) -> dict[str, Any]:
        rig, ledger = self.rig, self.ledger
        scraped = await asyncio.to_thread(scrape_samples, rig.settings.metrics_port)
        now, cpu = time.perf_counter(), rig.cpu_seconds()
        last = self._last
        wall = max(now - last[0], 1e-9)
        cores = cores_used(last[1], cpu, wall)
        driver, worker = ledger.take_window()
        fetch_ms = await self._fetch_ms()
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
            **{f"{name}_cores": used for name, used in cores.items()},
            "p50_ms": driver["p50"],
            "p99_ms": driver["p99"],
            "worker_p99_ms": worker["p99"],
            **_worker_figures(scraped, rig.settings),
            **fetch_ms,
        }
        self._last = (now, cpu, ledger.sent, ledger.covered)
        self.samples.append(sample)
        return sample

    async def _fetch_ms(self) -> dict[str, float | None]:
        """ms of one fetch at the tail of every partition of `events` / `recommendations` (one
        request each, as a consumer that keeps up sends): on Tansu's memory storage, the time
        it lists the topic's stored batches in; None without a probe or when it failed."""
        figures: dict[str, float | None] = {"events_fetch_ms": None, "lists_fetch_ms": None}
        if self.probe is None:
            return figures
        topics = self.rig.settings.topics
        try:
            measured = await self.probe.tail_fetch_ms()
        except Exception:  # noqa: BLE001 - a probe that fails must not end the soak
            return figures
        return {"events_fetch_ms": measured.get(topics.events),
                "lists_fetch_ms": measured.get(topics.recommendations)}

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
    # lag_ingest: events (one hop: the whole path of events keyed by user); lag_recommend:
    # events.by-user (the second hop: re-keyed events only, or all with STREAMREC_ONE_HOP=false)
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
    fetch = "-" if sample.get("events_fetch_ms") is None else f"{sample['events_fetch_ms']:.0f} ms"
    return (f"{sample['t_s']:5.0f}/{duration_s:.0f}s {sample['phase']}: sent {sample['sent']} "
            f"({sample['sent_per_s']:.0f}/s), answered {sample['answered']} ({sample['answered_per_s']:.0f}/s), "
            f"backlog {sample['backlog']}, lag {lag}, worker {rss}, dedup {dedup}, p99 {p99}, "
            f"tail fetch {fetch}, cores worker/broker {sample.get('worker_cores', '-')}/{sample.get('broker_cores', '-')}")


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
    topics = rig.settings.topics
    async with reading_lists(rig, ledger.on_list), EventProducer(rig.settings) as producer, \
            TopicProbe(rig.settings, [topics.events, topics.recommendations]) as probe:
        results["worker"].update(await index_catalogue(rig, producer, world.items(time.time()),
                                                       results["_started"], say))
        say(f"load: {total} events of {len(ledger.user_index)} users at {plan['rate']:.0f}/s "
            f"for {plan['duration_s']:.0f}s, a sample every {plan['sample_s']:.0f}s ...")
        sampler = Sampler(rig, ledger, time.perf_counter(), plan["duration_s"], probe=probe)
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
            results["broker_batches"] = await _count_batches(
                probe, {"events": topics.events, "recommendations": topics.recommendations})


async def _count_batches(probe: TopicProbe, topics: dict[str, str]) -> dict[str, Any]:
    """Record batches and records per partition of each topic (read whole), or the error."""
    counts: dict[str, Any] = {}
    try:
        for name, topic in topics.items():
            counts[name] = await asyncio.wait_for(probe.count_batches(topic), COUNT_BATCHES_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - a count that fails must not hide the soak's figures
        counts["error"] = repr(exc)
    return counts


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
            "partitions": base.partitions, "fetch_max_wait_ms": base.fetch_max_wait_ms,
            "sdk_linger_ms": base.sdk_linger_ms, "producer_linger_ms": base.producer_linger_ms,
            "producer_batch_bytes": base.producer_batch_bytes,
            "batch_size": base.batch_size, "dedup_capacity": base.dedup_capacity,
            "history_length": base.history_length, **machine(),
        },
        "worker": {},
        "memory_bounds": memory_bounds(base),
        "_started": time.monotonic(),
    }
    try:
        run_on_rig(base, "soak", results, lambda text: _say(text, quiet),
                   lambda rig: _soak(rig, SyntheticWorld(seed=seed, n_items=items, n_users=users),
                                     results["settings"], results, quiet),
                   logs_to=logs, broker_url=broker_url)
    except (RuntimeError, OSError) as exc:
        results["error"] = str(exc)
        _say(f"the soak failed: {exc}", quiet)
    finally:  # the report of what was measured, also after an error or Ctrl-C
        results["verdicts"] = judge(results)
        results["notes"] = notes_on(results)
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
