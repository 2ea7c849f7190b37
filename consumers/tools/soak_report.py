"""The soak's report: a markdown page of the verdicts, the figures, a timeline of the samples and
what bounds the worker's memory (`make soak` writes docs/soak.md with it)."""

from __future__ import annotations

from typing import Any

import numpy as np

from streamrec.consumers.tools.soak_verdicts import HELD_SHARE, STALL_S, rss_figures
from streamrec.consumers.worker.metrics import SAMPLE_S
from streamrec.stream.settings import Settings

BUSY_BROKER_CORES = 0.8  # a stalled worker beside a broker this busy: the broker is the bottleneck
TIMELINE_ROWS = 24  # samples shown in the markdown timeline (all are in the JSON)


def memory_bounds(settings: Settings) -> list[tuple[str, str]]:
    """What bounds each per-worker structure that grows with traffic, with the limits in force."""
    # The worker's own bound, not a copy of the number (tools may import the worker, not the
    # reverse); imported here so that the rest of the report needs no Faust.
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
        f"history length {plan['history_length']}; {_clients(plan)}.",
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
        b = verdicts.get("broker")
        if b is not None and b["max_fetch_ms"] is not None:
            lines.append(f"| broker fetches in time | tail fetches (events, recommendations): median "
                         f"{_num(b['median_fetch_ms'], 1)} ms, slowest {_num(b['max_fetch_ms'], 1)} ms, "
                         f"{b['late']} of {b['fetches']} at the wait or over | under {_num(b['limit_ms'])} ms (the "
                         f"consumers' fetch wait) in at least {1 - b['late_share_limit']:.0%} | "
                         f"{_ok(b['ok'], 'ok', 'too slow: fetches come back empty')} |")
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
    lines += _broker_lines(results)
    for note in results.get("notes", []):
        lines.append(f"- note: {note}")
    lines += ["", "## Timeline", "",
              "backlog: events sent that no list has answered yet (the driver's count); lag: the worker's "
              "`streamrec_consumer_lag` over the ingest and recommend topics (messages not committed, sampled "
              f"every {SAMPLE_S:.0f} s); latency: event sent -> list received, of the lists that arrived in the sample's interval.",
              "",
              "| t s | phase | sent | answered/s | backlog | lag | worker MiB | broker MiB | dedup ids | "
              "users seen | p50 ms | p99 ms | cores: worker / broker / driver | tail fetch ms: events / lists |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    step = max(1, -(-len(samples) // TIMELINE_ROWS))
    shown = samples[::step] + ([samples[-1]] if samples and (len(samples) - 1) % step else [])
    for s in shown:
        lines.append(f"| {s['t_s']:.0f} | {s['phase']} | {s['sent']:,} | {s['answered_per_s']:.0f} | "
                     f"{s['backlog']:,} | {_num(s['lag'])} | {_num(s['worker_rss_mib'])} | "
                     f"{_num(s['broker_rss_mib'])} | {_num(s['dedup_ids'])} | {s['users_seen']:,} | "
                     f"{_num(s['p50_ms'])} | {_num(s['p99_ms'])} | "
                     f"{s['worker_cores']} / {s.get('broker_cores', '–')} / {s.get('driver_cores', '–')} | "
                     f"{_num(s.get('events_fetch_ms'), 1)} / {_num(s.get('lists_fetch_ms'), 1)} |")
    lines += ["", "## What bounds the worker's memory", "", "| structure | bound |", "|---|---|"]
    lines += [f"| {name} | {bound} |" for name, bound in results.get("memory_bounds", [])]
    return "\n".join(lines) + "\n"


def _clients(plan: dict[str, Any]) -> str:
    """The client settings the broker's load depends on (absent from older runs' JSON)."""
    if "fetch_max_wait_ms" not in plan:
        return "client settings not recorded"
    return (f"fetch wait {plan['fetch_max_wait_ms']} ms, linger: SDK (this driver) {plan['sdk_linger_ms']} ms, "
            f"worker {plan['producer_linger_ms']} ms, record batches up to {plan['producer_batch_bytes'] // 1024} KB")


def _broker_lines(results: dict[str, Any]) -> list[str]:
    """The broker's side: the tail fetch's time at the start and the end of the load, the broker's
    CPU, and the record batches the read topics held at the end (records per batch)."""
    samples = [s for s in results.get("samples", []) if s.get("events_fetch_ms") is not None]
    lines = []
    if samples:
        load = [s for s in samples if s["phase"] == "load"] or samples
        cores = [s["broker_cores"] for s in load if s.get("broker_cores") is not None]
        lines.append(f"- broker: a fetch at the tail of every `events` partition took "
                     f"{_num(load[0]['events_fetch_ms'], 1)} ms at t = {load[0]['t_s']:.0f} s and "
                     f"{_num(load[-1]['events_fetch_ms'], 1)} ms at t = {load[-1]['t_s']:.0f} s (`recommendations`: "
                     f"{_num(load[0].get('lists_fetch_ms'), 1)} -> {_num(load[-1].get('lists_fetch_ms'), 1)} ms); "
                     f"the broker used {np.mean(cores) if cores else float('nan'):.2f} cores on average under load")
    counts = results.get("broker_batches") or {}
    described = []
    for topic, partitions in counts.items():
        if topic == "error" or not partitions:
            continue
        batches = sum(p["batches"] for p in partitions.values())
        records = sum(p["records"] for p in partitions.values())
        described.append(f"`{topic}` "
                         f"{batches:,} batches ({batches / len(partitions):,.0f} a partition, "
                         f"{records / max(batches, 1):.1f} records a batch)")
    if described:
        lines.append("- record batches stored at the end: " + "; ".join(described))
    elif counts.get("error"):
        lines.append(f"- record batches stored at the end: not counted ({counts['error']})")
    return lines


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


def notes_on(results: dict[str, Any]) -> list[str]:
    """What a reader needs to know to read the figures (a stall, a short driver, the shared cores)."""
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
                f"broker used {stall['broker_cores']:.2f} cores: Tansu 0.6's memory storage lists every record "
                "batch of a partition on each fetch, so its fetches slow as batches pile up (README, \"The "
                "embedded broker's limit\"). The soak then measures the dev broker, not the worker: soak a real "
                "Kafka with --broker, or send fewer, larger batches (STREAMREC_SDK_LINGER_MS)")
        else:
            notes.append(f"the worker stalled at t = {stall['stalled_from_t_s']:.0f} s: see its log (--logs)")
    notes += _broker_notes(results)
    sent = results.get("send", {}).get("sent_per_s")
    if sent is not None and sent < HELD_SHARE * plan["rate"]:
        notes.append(f"the driver itself sent only {sent:.0f} events/s: the load generator is short of the rate")
    notes.append(f"the driver, the worker and the broker share {plan['cpu_count']} cores")
    return notes


def _broker_notes(results: dict[str, Any]) -> list[str]:
    """The broker's part and the worker's: tail fetches that took the fetch wait or longer (on
    the embedded broker such a fetch comes back empty), and, when the broker answered in time
    as a rule, that the worker's own speed bounded the rate."""
    plan, verdicts = results["settings"], results.get("verdicts", {})
    broker, rate = verdicts.get("broker", {}), verdicts.get("rate", {})
    progress = verdicts.get("progress", {})
    wait = plan.get("fetch_max_wait_ms")
    load = [s for s in results.get("samples", []) if s["phase"] == "load"]
    embedded = plan.get("broker", "embedded") == "embedded"
    notes = []
    if broker.get("late"):
        late = next((s for s in load if max(s.get("events_fetch_ms") or 0, s.get("lists_fetch_ms") or 0) >= wait),
                    None)
        where = f"the first at t = {late['t_s']:.0f} s ({late['sent']:,} events sent)" if late else "in the drain"
        note = (f"{broker['late']} of the last half's {broker['fetches']} tail fetches took the fetch wait "
                f"({wait} ms) or longer, {where}; the median was {broker['median_fetch_ms']:.1f} ms")
        if embedded:
            note += (": Tansu 0.6's memory storage lists every stored record batch of a partition on each fetch "
                     "(~0.9 ms per 1,000) and stops when the wait runs out, so such a fetch comes back empty and is "
                     "asked again" + ("; once every fetch does, the consumer stops" if progress.get("ok") else
                                      ", and here the consumer stopped")
                     + " (README, \"The embedded broker's limit\"). What would close it: fewer batches (a longer "
                     "STREAMREC_SDK_LINGER_MS, fewer STREAMREC_PARTITIONS), a longer STREAMREC_FETCH_MAX_WAIT_MS, "
                     "Tansu listing only the batches from the fetch offset on, or a real Kafka (--broker)")
        notes.append(note)
    in_time = broker.get("median_fetch_ms") is not None and wait is not None and broker["median_fetch_ms"] < wait
    if in_time and rate.get("ok") is False and progress.get("ok"):
        half = [s for s in load if s["t_s"] >= plan["duration_s"] / 2]
        worker = [s["worker_cores"] for s in half if s.get("worker_cores") is not None]
        brokers = [s["broker_cores"] for s in half if s.get("broker_cores") is not None]
        cores = "" if not worker or not brokers else (
            f" (in the last half the worker used {np.mean(worker):.2f} cores, the broker {np.mean(brokers):.2f})")
        notes.append(f"the broker answered the tail fetches in time as a rule (median {broker['median_fetch_ms']:.1f} "
                     f"ms, wait {wait} ms) and the worker never stopped: the worker's own speed on this machine "
                     f"bounds the rate, not the broker{cores}. What would close it: a faster worker "
                     "(docs/worker-speed.md: overlap publishing with ranking, the core at small batches) or more "
                     "workers and cores (one per partition)")
    return notes


def main(argv: list[str] | None = None) -> int:
    """`python -m streamrec.consumers.tools.soak_report SOAK.json REPORT.md`: the report of a soak's
    JSON again, its verdicts and notes judged anew (a run's figures, today's rendering)."""
    import argparse
    import json
    from pathlib import Path

    from streamrec.consumers.tools.soak_verdicts import judge

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("json", type=Path)
    parser.add_argument("markdown", type=Path)
    args = parser.parse_args(argv)
    results = json.loads(args.json.read_text())
    results["verdicts"] = judge(results)
    results["notes"] = notes_on(results)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    args.markdown.write_text(render_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
