"""The `streamrec` command line: broker, worker, produce, tail, demo, bench, soak, dlq, model,
pretrain, evaluate, schema.

Every command reads the same settings (`STREAMREC_*` env vars); flags only pick what to do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamrec.consumers.cli.common import (
    broker_problem,
    configure_logging,
    load_settings,
    quiet_kafka_logs,
)
from streamrec.consumers.cli.dlq import add_dlq_parser
from streamrec.consumers.cli.model_commands import add_model_parser
from streamrec.consumers.cli.offline_commands import add_offline_parsers

log = logging.getLogger("streamrec")


# --- broker ----------------------------------------------------------------------------
def broker_storage_help() -> str:
    from streamrec.stream.broker import STORAGE_HELP

    return STORAGE_HELP


def cmd_broker(args: argparse.Namespace) -> int:
    from streamrec.stream.broker import run_foreground

    return run_foreground(args.port, args.host, args.storage)


# --- worker ----------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from streamrec.consumers.worker.app import create_app
    from streamrec.stream.topics import ensure_topics

    settings = load_settings()
    configure_logging(settings.log_level)
    problem = broker_problem(settings)
    if problem:
        print(f"streamrec worker: {problem}", file=sys.stderr)
        return 1
    created = asyncio.run(ensure_topics(settings))
    if created:
        log.info("created topics: %s", ", ".join(created))
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


# --- trainer ---------------------------------------------------------------------------
def cmd_trainer(args: argparse.Namespace) -> int:
    from streamrec.consumers.trainer.sidecar import run_trainer

    settings = load_settings()
    configure_logging(settings.log_level)
    return run_trainer(settings)


# --- produce ---------------------------------------------------------------------------
def cmd_produce(args: argparse.Namespace) -> int:
    from streamrec.consumers.tools.feed import produce_dataset, produce_synthetic

    settings = load_settings()
    configure_logging("WARNING")
    if args.dataset == "synthetic":
        coroutine = produce_synthetic(
            settings, n_events=args.events, rate=args.rate, seed=args.seed, with_items=not args.no_items
        )
    else:
        if not args.path.is_dir():
            print(f"streamrec produce: {args.path} is not a directory (--path: the folder holding "
                  "ratings.csv and movies.csv)", file=sys.stderr)
            return 1
        coroutine = produce_dataset(
            settings,
            args.path,
            limit=args.limit,
            rate=args.rate,
            keep_timestamps=args.keep_timestamps,
            with_items=not args.no_items,
        )
    problem = broker_problem(settings)
    if problem:
        coroutine.close()
        print(f"streamrec produce: {problem}", file=sys.stderr)
        return 1
    try:
        with quiet_kafka_logs():
            stats = asyncio.run(coroutine)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as exc:  # a missing or malformed dataset file
        print(f"streamrec produce: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(stats))
    return 0


def check_produce_usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], None]:
    """`--path` belongs to a dataset read from files, and such a dataset needs one (exit 2)."""

    def check(args: argparse.Namespace) -> None:
        if args.dataset is None and args.path is not None:
            parser.error("--path needs --dataset movielens (synthetic data is generated, not read)")
        if args.dataset == "synthetic" and args.path is not None:
            parser.error("--path reads a dataset's files: synthetic data needs none")
        if args.dataset == "movielens" and args.path is None:
            parser.error("--dataset movielens needs --path DIR (the folder holding ratings.csv and movies.csv)")
        args.dataset = args.dataset or "synthetic"

    return check


# --- tail ------------------------------------------------------------------------------
def cmd_tail(args: argparse.Namespace) -> int:
    from streamrec.consumers.tools.feed import tail
    from streamrec.stream.readers import LatestLists

    settings = load_settings()
    configure_logging("WARNING")
    topic = {"recommendations": settings.topics.recommendations, "dlq": settings.topics.dlq}[
        args.topic
    ]
    newest_only = args.topic == "recommendations" and not args.all
    on_message = print_newest_lists(LatestLists()) if newest_only else None
    try:
        asyncio.run(
            tail(settings, topic, from_beginning=args.from_beginning, limit=args.max, timeout_s=args.timeout,
                 on_message=on_message)
        )
    except KeyboardInterrupt:
        pass
    return 0


def print_newest_lists(latest: Any) -> Callable[[Any], None]:
    """`tail`'s printer of `recommendations` by the contract's order rule: a list is printed
    only if it is newer than every list of its user seen so far (`LatestLists`); a list
    published again or an older one arriving late (after a restart or a rebalance) is not."""
    from streamrec.consumers.cli.escape import printable
    from streamrec.consumers.tools.feed import format_recommendation
    from streamrec.stream.messages import Recommendation

    def on_message(record: Any) -> None:
        try:
            recommendation = Recommendation.model_validate_json(record.value)
        except ValueError:  # not a list: shown as text, escaped
            print(printable(bytes(record.value or b"").decode("utf-8", "replace")), flush=True)
            return
        if latest.offer(recommendation):
            print(format_recommendation(recommendation), flush=True)

    return on_message


# --- demo ------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from streamrec.consumers.tools.demo import run_demo

    return run_demo(duration_s=args.duration, rate=args.rate, port=args.port, seed=args.seed)


# --- bench -----------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    from streamrec.consumers.tools.bench import DEFAULT_CASES, parse_cases, run_bench

    configure_logging("WARNING")
    try:
        cases = parse_cases(args.cases) if args.cases else DEFAULT_CASES
    except ValueError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    rates = [int(r) for r in args.e2e_rates.split(",") if r.strip()] if args.e2e_rates else []
    run_bench(cases, events_per_size=args.events, users=args.users, out=args.out, e2e_rates=rates,
              e2e_duration_s=args.e2e_duration, memory=not args.no_memory, markdown=args.markdown,
              retrieval_sizes=[int(n) for n in args.retrieval_sizes.split(",") if n.strip()])
    return 0


def cmd_bench_trainer(args: argparse.Namespace) -> int:
    from streamrec.consumers.tools.bench_trainer import run_bench_trainer

    configure_logging("WARNING")
    run_bench_trainer(args.out)
    return 0


def cmd_soak(args: argparse.Namespace) -> int:
    from streamrec.consumers.tools.soak import run_soak

    configure_logging("WARNING")
    try:
        results = run_soak(args.rate, args.users, args.duration, sample_s=args.sample_every, items=args.items,
                           drain_max_s=args.drain_max, seed=args.seed, out=args.out, markdown=args.markdown,
                           logs=args.logs, broker_url=args.broker)
    except ValueError as exc:
        print(f"soak failed: {exc}", file=sys.stderr)
        return 2
    return 1 if results.get("error") else 0


# --- schema ----------------------------------------------------------------------------
def schema_dir() -> Path:
    import streamrec.stream

    return Path(streamrec.stream.__file__).resolve().parent / "schemas"


def cmd_schema(args: argparse.Namespace) -> int:
    from streamrec.stream.messages import json_schemas

    schemas = json_schemas()
    target = schema_dir()
    if args.write:
        target.mkdir(parents=True, exist_ok=True)
        for name, text in schemas.items():
            (target / name).write_text(text)
        print(f"wrote {len(schemas)} schemas to {target}")
        return 0
    if args.check:
        stale = [n for n, t in schemas.items() if not (target / n).is_file() or (target / n).read_text() != t]
        if stale:
            print(f"out of date: {', '.join(stale)} (run `streamrec schema --write`)", file=sys.stderr)
            return 1
        print("schemas up to date")
        return 0
    if args.topic:
        key = f"{args.topic}.schema.json"
        if key not in schemas:
            raise SystemExit(f"unknown topic {args.topic!r}; one of {[n[:-12] for n in schemas]}")
        print(schemas[key], end="")
        return 0
    for name in schemas:
        print(target / name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamrec",
        description="Streaming real-time recommender on Kafka. Settings come from STREAMREC_* env vars.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run the embedded Tansu dev broker in the foreground")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--storage", default="memory://tansu/", help=broker_storage_help())
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("worker", help="run a stream worker (ingest, recommend, catalog agents)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "trainer", help="run the trainer sidecar: fine-tune on a sliding window, publish new versions"
    )
    p.set_defaults(func=cmd_trainer)

    p = sub.add_parser("produce", help="produce a catalogue and events (synthetic or a dataset)")
    p.add_argument("--dataset", choices=["synthetic", "movielens"], default=None,
                   help="synthetic (default) or movielens (needs --path)")
    p.add_argument("--path", type=Path, help="dataset directory (movielens: movies.csv, ratings.csv)")
    p.add_argument("--events", type=int, default=2000, help="synthetic: number of events")
    p.add_argument("--limit", type=int, default=None, help="dataset: at most this many events")
    p.add_argument("--rate", type=float, default=200.0, help="events per second (0 = as fast as possible)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--keep-timestamps", action="store_true", help="dataset: keep original ts")
    p.add_argument("--no-items", action="store_true", help="do not produce the catalogue first")
    p.set_defaults(func=cmd_produce, check_usage=check_produce_usage(p))

    p = sub.add_parser("tail", help="print recommendations (or dead letters) as they arrive")
    p.add_argument("--topic", choices=["recommendations", "dlq"], default="recommendations")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--max", type=int, default=None, help="stop after this many messages")
    p.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--all", action="store_true",
                   help="recommendations: print every list as it arrives, also one older than a list "
                        "already printed for its user or published again (default: the newest only)")
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("demo", help="broker + worker + synthetic stream, printing fresh recommendations")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of event stream")
    p.add_argument("--rate", type=float, default=100.0, help="events per second")
    p.add_argument("--port", type=int, default=0, help="broker port (0 = a free one)")
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="the benchmark suite: core, scoring, memory, end to end")
    p.add_argument("--cases", default=None,
                   help="core cases as backend:items:scorer, comma-separated (default: edge and client, "
                        "10k and 100k items, content and ranker)")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--events", type=int, default=2048, help="events per micro-batch size")
    p.add_argument("--e2e-rates", default="250,500,1000,2000",
                   help="end-to-end rates (events/s) through the broker; empty = skip")
    p.add_argument("--e2e-duration", type=float, default=20.0, help="seconds per end-to-end rate")
    p.add_argument("--no-memory", action="store_true", help="skip the memory figures")
    p.add_argument("--retrieval-sizes", default="10000,50000",
                   help="catalogue sizes for exact-in-memory vs HNSW retrieval; empty = skip")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    p.add_argument("--markdown", type=Path, default=None, help="write the report (docs/benchmarks.md) here")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("bench-trainer", help="a fine-tuning cycle and a hot swap with the default model")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    p.set_defaults(func=cmd_bench_trainer)

    p = sub.add_parser("soak", help="a worker under steady load for minutes: RSS, lag and latency sampled")
    p.add_argument("--rate", type=float, default=1000.0, help="events per second offered")
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--items", type=int, default=2_000, help="catalogue size")
    p.add_argument("--drain-max", type=float, default=60.0,
                   help="after the load, wait at most this long for the backlog (s)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    p.add_argument("--markdown", type=Path, default=None, help="write the markdown summary here")
    p.add_argument("--logs", type=Path, default=None, help="keep the worker's and the broker's logs here")
    p.add_argument("--broker", default=None,
                   help="a running broker (kafka://host:port) instead of the embedded Tansu; topics get a fresh prefix")
    p.set_defaults(func=cmd_soak)

    add_dlq_parser(sub)
    add_model_parser(sub)
    add_offline_parsers(sub)

    p = sub.add_parser("schema", help="print, write or check the JSON Schemas of the topics")
    p.add_argument("topic", nargs="?", help="print this topic's schema (e.g. events)")
    p.add_argument("--write", action="store_true", help="regenerate stream/schemas/*.json")
    p.add_argument("--check", action="store_true", help="exit 1 if the files are out of date")
    p.set_defaults(func=cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    if hasattr(args, "check_usage"):
        args.check_usage(args)  # exit 2 with one line on a combination of flags that makes no sense
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
