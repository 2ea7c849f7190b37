"""`streamrec demo`: the whole stream on the embedded default, fresh recommendations on screen.

Starts the Tansu dev broker and a real worker process, produces a synthetic catalogue, then a
live event stream for a set duration while printing recommendations as they arrive; stops
everything cleanly at the end or on Ctrl-C and prints throughput and latency figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamrec.consumers.tools.feed import (
    format_recommendation,
    open_reader,
    send_items,
    send_paced,
)
from streamrec.consumers.tools.processes import start_worker
from streamrec.consumers.tools.scrape import scrape_metric
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.stream.broker import DevBroker, free_port, stop_process_group
from streamrec.stream.messages import Recommendation
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics

WORKER_READY_TIMEOUT_S = 180.0  # worker start: model load, group join, catalogue indexing
DRAIN_IDLE_S = 3.0  # after the last event, stop once no list arrived for this long
DRAIN_MAX_S = 30.0
PRINT_EVERY_S = 1.0  # after the first few, print one list per this many seconds
PRINT_FIRST = 8
STOP_GRACE_S = 20.0
CLOSE_TIMEOUT_S = 10.0  # closing a Kafka client never holds up the stop longer than this


@dataclass
class DemoStats:
    started: float = field(default_factory=time.monotonic)
    first_recommendation_s: float | None = None
    worker_ready_s: float | None = None
    recommendations: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    produced: dict[str, float] = field(default_factory=dict)


def _say(text: str) -> None:
    print(text, flush=True)


async def _wait_for_worker(
    worker: subprocess.Popen, port: int, n_items: int, log: Path, stop: asyncio.Event
) -> None:
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    while time.monotonic() < deadline and not stop.is_set():
        if worker.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"the worker exited with code {worker.returncode}:\n{tail}")
        indexed = scrape_metric(port, "streamrec_items_indexed_total")
        if indexed is not None and indexed >= n_items:
            return
        await asyncio.sleep(0.5)
    if stop.is_set():
        return
    raise RuntimeError(f"the worker did not index the catalogue within {WORKER_READY_TIMEOUT_S}s; see {log}")


@contextlib.contextmanager
def _ctrl_c_event() -> Iterator[asyncio.Event]:
    """An event set by Ctrl-C, so the stream stops the way its end does (drain, close the
    clients) rather than by cancelling whatever await happens to be running."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def interrupt() -> None:
        if not stop.is_set():
            _say("\ninterrupted; stopping ...")
        stop.set()

    loop.add_signal_handler(signal.SIGINT, interrupt)
    try:
        yield stop
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _stream(
    settings: Settings,
    world: SyntheticWorld,
    worker: subprocess.Popen,
    worker_log: Path,
    duration_s: float,
    rate: float,
    stats: DemoStats,
) -> None:
    with _ctrl_c_event() as stop:
        await ensure_topics(settings)
        titles = {item.item_id: (item.attributes or {}).get("title", item.item_id) for item in world.items(0.0)}
        async with EventProducer(settings) as producer:
            items = world.items(ts=time.time())
            await send_items(producer, items)
            _say(f"produced a catalogue of {len(items)} items; waiting for the worker to embed them ...")
            await _wait_for_worker(worker, settings.metrics_port, len(items), worker_log, stop)
            if stop.is_set():
                return
            stats.worker_ready_s = time.monotonic() - stats.started
            _say(f"worker ready after {stats.worker_ready_s:.1f}s; streaming events for {duration_s:.0f}s at {rate:.0f}/s")
            _say(try_it(f"http://127.0.0.1:{settings.metrics_port}", world.user_ids()[0], duration_s))

            reader = await open_reader(settings, settings.topics.recommendations, from_beginning=True)
            last_print = 0.0
            last_arrival = time.monotonic()

            async def read_loop() -> None:
                nonlocal last_print, last_arrival
                while True:
                    batches = await reader.getmany(timeout_ms=200)
                    for records in batches.values():
                        for record in records:
                            rec = Recommendation.model_validate_json(record.value)
                            now = time.monotonic()
                            last_arrival = now
                            stats.recommendations += 1
                            stats.latencies_ms.append(rec.latency_ms)
                            if stats.first_recommendation_s is None:
                                stats.first_recommendation_s = now - stats.started
                            if stats.recommendations <= PRINT_FIRST or now - last_print >= PRINT_EVERY_S:
                                last_print = now
                                likes = ", ".join(sorted(world.favourite_categories(rec.user_id)))
                                _say(f"[likes {likes}] " + format_recommendation(rec, titles))

            reading = asyncio.create_task(read_loop())
            try:
                n_events = max(1, int(duration_s * rate))
                events = world.events(n_events, start_ts=time.time(), rate_per_s=rate)
                deadline = time.monotonic() + duration_s
                stats.produced = await send_paced(
                    producer,
                    events,
                    rate,
                    retime=True,
                    progress=False,
                    should_stop=lambda: stop.is_set() or time.monotonic() > deadline,
                )
                drain_until = time.monotonic() + DRAIN_MAX_S
                while (
                    not stop.is_set()
                    and time.monotonic() < drain_until
                    and time.monotonic() - last_arrival < DRAIN_IDLE_S
                ):
                    await asyncio.sleep(0.2)
            finally:
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
                await asyncio.wait_for(reader.stop(), CLOSE_TIMEOUT_S)


def try_it(url: str, user: str, duration_s: float) -> str:
    """What a newcomer can open and paste while the demo runs: the live page and the API.

    >>> print(try_it("http://127.0.0.1:6066", "u0001", 60).splitlines()[1])
    live page: http://127.0.0.1:6066/  (open it in a browser while the demo runs)
    """
    return "\n".join([
        "",
        f"live page: {url}/  (open it in a browser while the demo runs)",
        "try, in another terminal:",
        f"  curl -s {url}/users/{user}/recommendations",
        f"  curl -s {url}/users/{user}",
        f"  curl -s '{url}/events/recent?limit=3'",
        f"  curl -s {url}/readyz",
        f"  curl -s {url}/metrics | grep '^streamrec_events_total'",
        f"the demo stops after {duration_s:.0f} s: `make demo DURATION=600` "
        "(or `streamrec demo --duration 600`) keeps it running longer; Ctrl-C stops it sooner",
        "",
    ])


def _summary(stats: DemoStats) -> None:
    produced = stats.produced.get("events", 0)
    seconds = stats.produced.get("seconds", 0.0)
    _say("\n--- demo summary ---")
    if stats.first_recommendation_s is not None:
        _say(f"first recommendation after {stats.first_recommendation_s:.1f}s (worker ready after {stats.worker_ready_s:.1f}s)")
    _say(f"events produced: {produced:.0f} in {seconds:.1f}s ({produced / max(seconds, 1e-9):.0f} events/s)")
    _say(f"recommendation lists received: {stats.recommendations}")
    if stats.latencies_ms:
        p50, p99 = np.percentile(stats.latencies_ms, [50, 99])
        _say(f"event -> recommendation latency: p50 {p50:.0f} ms, p99 {p99:.0f} ms")


def run_demo(duration_s: float = 60.0, rate: float = 100.0, port: int = 0, seed: int = 7) -> int:
    base = Settings()
    data_dir = (base.data_dir / "demo").resolve()
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    stats = DemoStats()
    broker = DevBroker(port=port or free_port(), log_path=data_dir / "broker.log")
    worker: subprocess.Popen | None = None
    code = 0
    try:
        _say(f"streamrec demo: starting the embedded Tansu broker (logs in {data_dir}) ...")
        broker.start()
        settings = base.model_copy(
            update={"broker": broker.url, "data_dir": data_dir, "metrics_port": free_port()}
        )
        worker_log = data_dir / "worker.log"
        worker = start_worker(settings, worker_log)  # Ctrl-C reaches the demo only; it stops the worker
        _say(f"started a worker (pid {worker.pid}, metrics on http://127.0.0.1:{settings.metrics_port}/metrics)")
        world = SyntheticWorld(seed=seed)
        asyncio.run(_stream(settings, world, worker, worker_log, duration_s, rate, stats))
    except KeyboardInterrupt:
        _say("\ninterrupted; stopping ...")
    except (RuntimeError, OSError) as exc:
        _say(f"demo failed: {exc}")
        code = 1
    finally:
        if worker is not None:
            stop_process_group(worker, STOP_GRACE_S)
        broker.stop()
    _summary(stats)
    _say("stopped the worker and the broker.")
    return code
