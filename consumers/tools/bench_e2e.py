"""End-to-end benchmark through the broker: events in at fixed rates, lists out, latency and lag.

Starts the embedded Tansu dev broker and one real worker process (`streamrec worker`, with its
own data dir in a temp dir), produces a synthetic catalogue and waits until the worker has
indexed it (its /metrics), warms up, then for each rate produces events of `users` synthetic
users for `duration_s` seconds, while a plain consumer (partitions assigned, no group join: a
Tansu group join takes 5-25 s) reads `recommendations`.

Per rate:
- **sent**: events sent and the send rate achieved (the producer paces itself in bursts every
  `TICK_S` on asyncio, aiokafka batching with linger; on a small machine the producer itself
  may fall short, which the figures then say);
- **received**: lists whose trigger is one of this rate's events (the worker coalesces a user's
  events within a micro-batch into one list, so `events_covered` counts the events a list
  answers: the trigger and that user's earlier events not yet answered);
- **sustained**: lists/s and events covered/s over the steady part (the send window minus its
  first `STEADY_SKIP_S`);
- **lag**: the drain, from the last send to the last list of this rate; a rate is *held* when
  every user's last event got its list within `HELD_DRAIN_S`;
- **latency**: from the event's send (perf_counter at produce) to its list's arrival at the
  consumer, matched by `trigger_event_id` (`p50_ms` ... `max_ms`); `worker_p99_ms` etc. are the
  worker's own figure (event ts -> list generated, without the output hop).

A rate that leaves a backlog past `drain_max_s` ends the run (the higher rates would only
measure that backlog). Everything is stopped and the temp dir removed at the end, on an error
and on Ctrl-C. `python -m streamrec.consumers.tools.bench_e2e --help`. What was sent and what came
back, and the figures from them, are `bench_e2e_phases.py`; the broker and worker, `load_rig.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamrec.consumers.tools.bench_e2e_phases import Arrivals, Phase, phase_figures
from streamrec.consumers.tools.bench_report import write_figures
from streamrec.consumers.tools.load_rig import (
    TICK_S,
    Rig,
    cores_used,
    index_catalogue,
    machine,
    reading_lists,
    run_on_rig,
    send_at_rate,
)
from streamrec.consumers.tools.processes import log_tail
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.stream.messages import Event
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings

DEFAULT_RATES = (250, 500, 1000, 2000)  # events per second
DEFAULT_DURATION_S = 20.0  # seconds of events per rate
DEFAULT_USERS = 10_000
DEFAULT_ITEMS = 2_000  # catalogue size (embedded by the worker with MiniLM, ~300 items/s)
WARMUP_EVENTS = 300  # sent before the first rate, not measured
WARMUP_RATE = 100.0
HELD_DRAIN_S = 2.0  # a rate is held when its lists have all arrived this soon after the last send
LATENCY_SLO_MS = 100.0  # "highest rate held with p99 under this"
DRAIN_MAX_S = 30.0  # wait at most this long for a rate's lists after its last send
PRODUCER_SHORTFALL = 0.95  # below this share of the asked rate, the producer could not keep up
WARMUP_TIMEOUT_S = 120.0
POLL_S = 0.05


def _say(text: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"[e2e] {text}", flush=True)


@dataclass
class Run:
    """The moving parts one benchmark run watches."""

    rig: Rig
    arrivals: Arrivals
    quiet: bool

    def check(self) -> None:
        self.rig.check()


async def _send_paced(
    run: Run, producer: EventProducer, events: Sequence[Event], rate: float, phase: Phase
) -> dict[str, Any]:
    """Send `events` at `rate` (`load_rig.send_at_rate`), each recorded in `phase`."""

    def progress(elapsed: float, sent: int) -> None:
        run.check()
        lists = sum(1 for t in phase.sent_at if t in run.arrivals.first_seen)
        _say(f"{phase.name}: {elapsed:4.1f}s, sent {sent} ({sent / elapsed:.0f}/s), "
             f"lists for them {lists}", run.quiet)

    phase.send_started = time.perf_counter()
    return await send_at_rate(producer, events, len(events), rate, phase.record, progress)


async def _drain(run: Run, phase: Phase, drain_max_s: float) -> bool:
    """Wait until every user of the phase got a list for their last event; False at the deadline."""
    wanted = phase.last_events()
    deadline = phase.last_send + drain_max_s
    while time.perf_counter() < deadline:
        run.check()
        if all(event_id in run.arrivals.first_seen for event_id in wanted):
            return True
        await asyncio.sleep(POLL_S)
    return all(event_id in run.arrivals.first_seen for event_id in wanted)


async def _measure_rate(
    run: Run, producer: EventProducer, world: SyntheticWorld, rate: int, duration_s: float,
    stream: int, drain_max_s: float,
) -> dict[str, Any]:
    n_events = max(1, int(round(rate * duration_s)))
    events = world.events(n_events, start_ts=time.time(), rate_per_s=rate, stream=stream)
    phase = Phase(name=f"{rate} ev/s")
    cpu_before, started = run.rig.cpu_seconds(), time.perf_counter()
    _say(f"{phase.name}: sending {n_events} events over {duration_s:.0f}s ...", run.quiet)
    sent = await _send_paced(run, producer, events, rate, phase)
    caught_up = await _drain(run, phase, drain_max_s)
    cores = cores_used(cpu_before, run.rig.cpu_seconds(), time.perf_counter() - started)
    figures = phase_figures(phase, run.arrivals, duration_s)
    drain_s = figures["last_list_after_s"] if caught_up else None
    held = caught_up and drain_s is not None and drain_s < HELD_DRAIN_S
    missing = sum(1 for e in phase.last_events() if e not in run.arrivals.first_seen)
    result: dict[str, Any] = {
        "rate": rate,
        "duration_s": duration_s,
        **sent,
        "producer_limited": sent["sent_per_s"] < PRODUCER_SHORTFALL * rate,
        **figures,
        "caught_up": caught_up,
        "drain_s": drain_s,
        "users_waiting_at_deadline": missing,
        "held": held,
        "lag_grew": not held,
        "cpu_cores_used": {"worker": cores["worker"], "bench": cores["driver"], "broker": cores["broker"]},
    }
    drained = f"{drain_s:.2f}s" if drain_s is not None else f"> {drain_max_s:.0f}s ({missing} users waiting)"
    _say(f"{phase.name}: sent at {sent['sent_per_s']:.0f}/s, {figures['lists_received']} lists, drain {drained}, "
         f"p50/p99 {figures['p50_ms']}/{figures['p99_ms']} ms -> {'held' if held else 'NOT held'}", run.quiet)
    return result


async def _bench(
    rig: Rig, world: SyntheticWorld,
    rates: Sequence[int], duration_s: float, warmup_events: int, drain_max_s: float,
    continue_after_backlog: bool, results: dict[str, Any], quiet: bool,
) -> None:
    arrivals = Arrivals()
    run = Run(rig, arrivals, quiet)
    async with reading_lists(rig, arrivals.add), EventProducer(rig.settings) as producer:
        say = lambda text: _say(text, quiet)  # noqa: E731
        items = world.items(ts=time.time())
        results["worker"].update(await index_catalogue(rig, producer, items, results["_started"], say))
        if warmup_events > 0:
            warm = Phase(name="warm-up")
            _say(f"warm-up: {warmup_events} events at {WARMUP_RATE:.0f}/s (not measured) ...", quiet)
            events = world.events(warmup_events, start_ts=time.time(), stream=0)
            await _send_paced(run, producer, events, WARMUP_RATE, warm)
            if not await _drain(run, warm, WARMUP_TIMEOUT_S):
                raise RuntimeError(f"no lists for the warm-up events within {WARMUP_TIMEOUT_S:.0f}s; "
                                   f"see the worker log:\n{log_tail(rig.worker_log)}")
            results["warmup"] = {"events": warmup_events,
                                 "p50_ms": phase_figures(warm, arrivals, 0.0)["p50_ms"]}
        ordered = sorted(set(rates))
        for number, rate in enumerate(ordered, start=1):
            result = await _measure_rate(run, producer, world, rate, duration_s, number, drain_max_s)
            results["rates"].append(result)
            if not result["caught_up"] and not continue_after_backlog:
                skipped = ordered[number:]
                if skipped:
                    results["skipped_rates"] = skipped
                    _say(f"a backlog is left after {drain_max_s:.0f}s: skipping {skipped}", quiet)
                break
    results["worker"]["model_versions"] = sorted(arrivals.model_versions)


def _summarise(results: dict[str, Any]) -> None:
    rows = results["rates"]
    held = [r["rate"] for r in rows if r["held"]]
    results["highest_rate_held"] = max(held) if held else None
    fast = [r["rate"] for r in rows if r["held"] and r["p99_ms"] is not None and r["p99_ms"] < LATENCY_SLO_MS]
    results["highest_rate_held_p99_under_100ms"] = max(fast) if fast else None
    at_1000 = next((r for r in rows if r["rate"] == 1000), None)
    results["p99_ms_at_1000"] = at_1000["p99_ms"] if at_1000 else None
    notes = results["notes"]
    for r in rows:
        if r["producer_limited"]:
            notes.append(f"at {r['rate']} events/s the producer itself reached only {r['sent_per_s']:.0f}/s "
                         f"on this {os.cpu_count()}-core machine: that rate is limited by the load generator")
    if results.get("skipped_rates"):
        notes.append(f"rates {results['skipped_rates']} skipped: the previous rate left a backlog")
    notes.append("the bench process (producer + consumer), the worker and the broker share "
                 f"{os.cpu_count()} cores (load average at start {results['settings']['load_average']})")
    results["note"] = "; ".join(notes)


def print_table(results: dict[str, Any]) -> None:
    print(f"\nend to end: Tansu dev broker + 1 worker, {results['settings']['users']} users, "
          f"{results['settings']['items']} items, {results['settings']['duration_s']:.0f}s per rate")
    header = (f"{'rate':>6} {'sent/s':>7} {'lists':>7} {'covered':>8} {'lists/s':>8} {'events/s':>9} "
              f"{'drain s':>8} {'p50':>6} {'p95':>6} {'p99':>6} {'max':>6} {'wkr p99':>7} {'cores':>5} {'held':>5}")
    print(header)
    if not results["rates"]:
        print("(no rate completed)")
    for r in results["rates"]:
        drain = f"{r['drain_s']:.2f}" if r["drain_s"] is not None else "backlog"
        sent = f"{r['sent_per_s']:.0f}" + ("*" if r["producer_limited"] else "")
        print(f"{r['rate']:>6} {sent:>7} {r['lists_received']:>7} {r['events_covered']:>8} "
              f"{r['lists_per_s']:>8} {r['events_covered_per_s']:>9} {drain:>8} "
              f"{_ms(r['p50_ms'])} {_ms(r['p95_ms'])} {_ms(r['p99_ms'])} {_ms(r['max_ms'])} "
              f"{_ms(r['worker_p99_ms']):>7} {r['cpu_cores_used']['worker']:>5} "
              f"{'yes' if r['held'] else 'no':>5}")
    print("(latency ms: event sent -> list received; wkr p99: the worker's own, event ts -> list made; "
          "lists/s, events/s: steady part; cores: CPU the worker used; * producer short of the rate)")
    print(f"highest rate held with p99 < {LATENCY_SLO_MS:.0f} ms: "
          f"{results.get('highest_rate_held_p99_under_100ms') or 'none'} events/s; "
          f"p99 at 1000 events/s: {results.get('p99_ms_at_1000') or 'n/a'} ms")
    for note in results["notes"]:
        print(f"note: {note}")


def _ms(value: float | None) -> str:
    return f"{value:>6.0f}" if value is not None else f"{'-':>6}"


def run_e2e_bench(
    rates: Sequence[int],
    duration_s: float,
    users: int,
    *,
    items: int = DEFAULT_ITEMS,
    warmup_events: int = WARMUP_EVENTS,
    drain_max_s: float = DRAIN_MAX_S,
    continue_after_backlog: bool = False,
    seed: int = 7,
    out: Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Broker + one worker; events at each rate for `duration_s`; returns (and prints) the figures.

    KeyboardInterrupt (Ctrl-C) stops everything cleanly, prints what was measured and re-raises.
    """
    if not rates or any(rate <= 0 for rate in rates):
        raise ValueError(f"rates must be positive, got {list(rates)}")
    if duration_s <= 0 or users < 1 or items < 1:
        raise ValueError("duration_s, users and items must be positive")
    base = Settings()
    results: dict[str, Any] = {
        "settings": {
            "rates": sorted(set(int(r) for r in rates)), "duration_s": duration_s, "users": users,
            "items": items, "warmup_events": warmup_events, "seed": seed,
            "partitions": base.partitions, "batch_size": base.batch_size, "batch_wait_s": base.batch_wait_s,
            "fetch_max_wait_ms": base.fetch_max_wait_ms, "producer_linger_ms": base.producer_linger_ms,
            "sdk_linger_ms": base.sdk_linger_ms,
            "producer_tick_ms": TICK_S * 1000, "held_drain_s": HELD_DRAIN_S, "drain_max_s": drain_max_s,
            "latency_slo_ms": LATENCY_SLO_MS, **machine(),
        },
        "worker": {},
        "rates": [],
        "notes": [],
        "_started": time.monotonic(),
    }

    async def drive(rig: Rig) -> None:
        results["temp_dir"] = str(rig.work_dir)  # removed at the end
        world = SyntheticWorld(seed=seed, n_items=items, n_users=users)
        await _bench(rig, world, rates, duration_s, warmup_events, drain_max_s, continue_after_backlog,
                     results, quiet)

    try:
        run_on_rig(base, "bench-e2e", results, lambda text: _say(text, quiet), drive)
    finally:
        if results.get("interrupted") or results["rates"]:
            _summarise(results)
            if not quiet:
                print_table(results)
    if out is not None:
        write_figures(out, results)
        _say(f"wrote {out}", quiet)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="End to end through the Tansu dev broker and one worker: lists/s, lag and latency per rate."
    )
    parser.add_argument("--rates", type=int, nargs="+", default=list(DEFAULT_RATES), help="events per second")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="seconds per rate")
    parser.add_argument("--users", type=int, default=DEFAULT_USERS)
    parser.add_argument("--items", type=int, default=DEFAULT_ITEMS)
    parser.add_argument("--warmup", type=int, default=WARMUP_EVENTS, help="warm-up events (not measured)")
    parser.add_argument("--drain-max", type=float, default=DRAIN_MAX_S, help="seconds to wait for a backlog")
    parser.add_argument("--continue-after-backlog", action="store_true",
                        help="go on to higher rates even when one left a backlog")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        run_e2e_bench(args.rates, args.duration, args.users, items=args.items, warmup_events=args.warmup,
                      drain_max_s=args.drain_max, continue_after_backlog=args.continue_after_backlog,
                      seed=args.seed, out=args.out, quiet=args.quiet)
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, OSError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
