"""`streamrec dlq replay`: the command, and the reads and writes on the bus it makes.

What is replayed, where and why, is decided in `dlq_replay.py` (pure); this module reads the
dead-letter topic and the target topics to their ends, sends, and prints the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from streamrec.consumers.cli.common import (
    broker_problem,
    configure_logging,
    load_settings,
    quiet_kafka_logs,
)
from streamrec.consumers.cli.dlq_replay import (
    MARK_HEADER,
    Mark,
    ReplayFilter,
    ReplayPlan,
    decode_letter,
    marks_of,
    parse_time,
    plan_replay,
)
from streamrec.stream.offsets import log_end_offsets
from streamrec.stream.readers import open_broadcast_reader
from streamrec.stream.settings import Settings

CLOCK_SKEW_S = 3600.0  # replays are looked for from this long before the oldest letter's time


async def read_whole(settings: Settings, topics: Sequence[str], since_ms: int | None = None) -> list[Any]:
    """The records of `topics` up to their ends as they are now (from `since_ms` when the
    broker can find offsets by time, else from the beginning)."""
    consumer, tps = await open_broadcast_reader(settings, topics)
    try:
        if since_ms is not None:
            await _seek_to_time(consumer, tps, since_ms)
        ends = await log_end_offsets(settings, await consumer.end_offsets(tps))
        records: list[Any] = []
        while [tp for tp in tps if await consumer.position(tp) < (ends[tp] or 0)]:
            for partition_records in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(partition_records)
        return records
    finally:
        await consumer.stop()


async def _seek_to_time(consumer: Any, tps: Sequence[Any], since_ms: int) -> None:
    try:
        found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
    except Exception:  # a broker without time lookups: read from the beginning
        return
    for tp, offset in found.items():
        if offset is not None:
            consumer.seek(tp, offset.offset)


async def build_plan(settings: Settings, wanted: ReplayFilter) -> ReplayPlan:
    """Read the dead letters and the earlier replays; decide what to send."""
    topics = settings.topics
    letters = [
        (Mark(record.topic, record.partition, record.offset), decode_letter(record.value))
        for record in await read_whole(settings, [topics.dlq])
    ]
    times = [letter.received_at for _, letter in letters if letter is not None and wanted.matches(letter)]
    replayed: set[str] = set()
    if times:
        since_ms = max(0, int((min(times) - CLOCK_SKEW_S) * 1000))
        replayed = marks_of(await read_whole(settings, [topics.events, topics.events_by_user], since_ms))
    return plan_replay(letters, wanted, topics, replayed)


async def send(settings: Settings, plan: ReplayPlan) -> None:
    """Produce every planned replay (acks=all), each with its `streamrec-dlq` mark."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=settings.sdk_linger_ms,
        max_batch_size=settings.producer_batch_bytes, **settings.kafka_client_options(),
    )
    await producer.start()
    try:
        deliveries = [
            await producer.send(replay.topic, value=replay.value, key=replay.key,
                                headers=[(MARK_HEADER, str(mark).encode()) for mark in replay.marks])
            for replay in plan.replays
        ]
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()


def report(plan: ReplayPlan, dry_run: bool) -> str:
    """The counts a run prints, one fact a line."""
    selected = sum(plan.selected.values())
    lines = [f"dead letters read: {plan.read}; selected: {selected}"]
    lines += [f"  {reason}: {count}" for reason, count in sorted(plan.selected.items())]
    verb = "would replay" if dry_run else "replayed"
    targets = ", ".join(f"{count} to {topic}" for topic, count in sorted(plan.by_topic().items()))
    lines.append(f"{verb}: {len(plan.replays)}" + (f" ({targets})" if targets else ""))
    if plan.skipped:
        lines.append("skipped: " + ", ".join(f"{count} {why}" for why, count in sorted(plan.skipped.items())))
    if dry_run:
        lines.append("dry run: nothing was sent")
    return "\n".join(lines)


async def replay(settings: Settings, wanted: ReplayFilter, dry_run: bool) -> ReplayPlan:
    plan = await build_plan(settings, wanted)
    if not dry_run and plan.replays:
        await send(settings, plan)
    return plan


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging("WARNING")
    wanted = ReplayFilter(
        reasons=frozenset(r for value in args.reason for r in value.split(",") if r) or None,
        since=args.since,
        until=args.until,
    )
    problem = broker_problem(settings)
    if problem:
        print(f"streamrec dlq replay: {problem}", file=sys.stderr)
        return 1
    try:
        with quiet_kafka_logs():
            plan = asyncio.run(replay(settings, wanted, args.dry_run))
    except (ConnectionError, RuntimeError) as exc:
        print(f"streamrec dlq replay: {exc}", file=sys.stderr)
        return 1
    print(report(plan, args.dry_run))
    return 0


def _time(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_dlq_parser(sub: Any) -> None:
    """`streamrec dlq replay [--reason R] [--since T] [--until T] [--dry-run]`."""
    dlq = sub.add_parser("dlq", help="work with the dead-letter topic (events.dlq)")
    actions = dlq.add_subparsers(dest="dlq_command", required=True)
    p = actions.add_parser(
        "replay",
        help="send dead letters back to events (idempotent: each event id once, earlier replays skipped)",
        description="Send dead letters back to the topic they were read from: events, or "
                    "events.by-user for processing_failed (read on events or events.by-user). Each replayed message carries a "
                    f"{MARK_HEADER} header, so running the command again sends nothing twice.",
    )
    p.add_argument("--reason", action="append", default=[],
                   help="only letters with this reason (repeat, or comma-separate; default: all)")
    p.add_argument("--since", type=_time, default=None,
                   help="only letters received at or after this time: unix s, ISO 8601 (UTC) or ago (30m, 2h, 7d)")
    p.add_argument("--until", type=_time, default=None, help="only letters received at or before this time")
    p.add_argument("--dry-run", action="store_true", help="count what would be replayed; send nothing")
    p.set_defaults(func=cmd_dlq_replay)
