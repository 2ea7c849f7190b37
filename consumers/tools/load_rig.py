"""A broker and a worker under load, for the end-to-end bench and the soak.

`running_rig` starts the embedded Tansu dev broker and one real worker process (`streamrec
worker`, its data dir in a temp dir) and stops both at the end, on an error and on Ctrl-C
(a second Ctrl-C cannot leave either running). Around it: waiting until the worker has indexed
the catalogue, sending events at a fixed rate, reading `recommendations` with a plain
consumer (partitions assigned, no group join: a Tansu group join takes 5-25 s), and the
process figures (`processes.py`: CPU seconds, resident memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer

from streamrec.consumers.tools.feed import open_reader, send_items
from streamrec.consumers.tools.processes import cpu_seconds, log_tail, own_cpu_seconds, start_worker
from streamrec.consumers.tools.scrape import scrape_metric
from streamrec.stream.broker import DevBroker, free_port, stop_process_group
from streamrec.stream.messages import Event, Item
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics

TICK_S = 0.005  # the producer sends a burst of what is due every this many seconds
WORKER_READY_TIMEOUT_S = 300.0  # worker start: model load, group join, catalogue embedding
PROGRESS_EVERY_S = 5.0
STOP_GRACE_S = 20.0  # SIGTERM, then SIGKILL after this long
CLOSE_TIMEOUT_S = 10.0  # closing a Kafka client never holds up the stop longer than this
MIB = 2**20

Say = Callable[[str], None]


def percentiles(values: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    """p50, p95, p99 and max, rounded to 0.1; None for each when there are no values.

    >>> percentiles([1.0, 2.0, 3.0, 4.0])["p50"], percentiles([])["p99"]
    (2.5, None)
    """
    if len(values) == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "p99": round(float(p99), 1),
            "max": round(float(np.max(values)), 1)}


def machine() -> dict[str, Any]:
    """What a run's figures depend on besides the worker: the CPUs the driver, the worker and
    the broker share, and the load average at the start."""
    return {"cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def cores_used(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, float]:
    """CPU cores each process used between two `Rig.cpu_seconds()` readings `wall_s` apart.

    >>> cores_used({"worker": 1.0, "broker": 0.0}, {"worker": 3.0, "broker": 0.5}, 2.0)
    {'worker': 1.0, 'broker': 0.25}
    """
    wall_s = max(wall_s, 1e-9)
    return {name: round((after[name] - before[name]) / wall_s, 2) for name in after}


@dataclass
class Rig:
    """The running broker and worker, and (once started) the reader of recommendations."""

    settings: Settings
    worker: subprocess.Popen
    worker_log: Path
    broker_pid: int | None
    work_dir: Path  # the temp dir (logs, the worker's data), removed at the end
    reading: asyncio.Task | None = None
    exit_code: int | None = None  # the worker's, once stopped

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds so far of the worker, the broker and this driver (see `cores_used`)."""
        return {"worker": cpu_seconds(self.worker.pid), "broker": cpu_seconds(self.broker_pid),
                "driver": own_cpu_seconds()}

    def check(self) -> None:
        """Raise if the worker or the reader died."""
        if self.worker.poll() is not None:
            raise RuntimeError(
                f"the worker exited with code {self.worker.returncode}:\n{log_tail(self.worker_log)}"
            )
        if self.reading is not None and self.reading.done():
            error = self.reading.exception() if not self.reading.cancelled() else None
            raise RuntimeError(f"the recommendations reader stopped: {error!r}")


@contextlib.contextmanager
def running_rig(
    base: Settings, name: str, say: Say, logs_to: Path | None = None, broker_url: str | None = None
) -> Iterator[Rig]:
    """A Tansu dev broker and a worker on free ports, in a temp dir removed at the end.

    `base`: every setting but the broker, data dir, metrics port and app id (`name-<uuid>`): the
    worker's and the driver's clients (fetch wait, lingers) follow it, e.g. from STREAMREC_* env.
    `broker_url`: use this running broker instead (any Kafka; topics get the prefix
    `<name>-<uuid>.`, so a run never reads another's). On the way out the worker gets SIGTERM
    (SIGKILL after `STOP_GRACE_S`); its exit code is left in `rig.exit_code`; with `logs_to`,
    the worker's and the broker's logs are kept there.
    """
    work = Path(tempfile.mkdtemp(prefix=f"streamrec-{name}-"))
    broker = DevBroker(port=free_port(), log_path=work / "broker.log") if broker_url is None else None
    worker: subprocess.Popen | None = None
    rig: Rig | None = None
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    try:
        update: dict[str, object] = {"data_dir": work / "data", "metrics_port": free_port(), "app_id": tag}
        if broker is None:
            say(f"using the broker at {broker_url}, topics {base.topic_prefix}{tag}.* (temp dir {work}) ...")
            update.update(broker=broker_url, topic_prefix=f"{base.topic_prefix}{tag}.")
        else:
            say(f"starting the Tansu dev broker and a worker (temp dir {work}) ...")
            broker.start()
            update["broker"] = broker.url
        settings = base.model_copy(update=update)
        worker = start_worker(settings, work / "worker.log")
        say(f"worker pid {worker.pid}, metrics on http://127.0.0.1:{settings.metrics_port}/metrics")
        broker_pid = broker.process.pid if broker is not None and broker.process is not None else None
        rig = Rig(settings, worker, work / "worker.log", broker_pid, work)
        yield rig
    finally:
        previous = _ignore_sigint()  # a second Ctrl-C must not leave the worker or broker running
        try:
            if worker is not None:
                code = stop_process_group(worker, STOP_GRACE_S)
                if rig is not None:
                    rig.exit_code = code
            if broker is not None:
                broker.stop()
            if logs_to is not None:
                logs_to.mkdir(parents=True, exist_ok=True)
                for log in ("worker.log", "broker.log"):
                    if (work / log).exists():
                        shutil.copy(work / log, logs_to / log)
                say(f"kept the worker's and the broker's logs in {logs_to}")
            shutil.rmtree(work, ignore_errors=True)
        finally:
            _restore_sigint(previous)
        say(f"stopped the worker{' and the broker' if broker is not None else ''}; removed the temp dir")


def _ignore_sigint() -> Any:
    try:
        return signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to guard
        return None


def _restore_sigint(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


def run_on_rig(
    base: Settings, name: str, results: dict[str, Any], say: Say, drive: Callable[[Rig], Awaitable[None]],
    logs_to: Path | None = None, broker_url: str | None = None,
) -> None:
    """`asyncio.run(drive(rig))` on a `running_rig`, the run's bookkeeping kept in `results`
    whatever happens: `interrupted` on Ctrl-C (re-raised, after the rig is stopped), the
    worker's exit code in `results["worker"]`, the start time `results["_started"]` removed."""
    results.setdefault("_started", time.monotonic())
    rig: Rig | None = None
    try:
        with running_rig(base, name, say, logs_to=logs_to, broker_url=broker_url) as rig:
            asyncio.run(drive(rig))
    except KeyboardInterrupt:
        results["interrupted"] = True
        say("interrupted; stopping ...")
        raise
    finally:
        if rig is not None:
            results.setdefault("worker", {})["exit_code"] = rig.exit_code
        results.pop("_started", None)


async def wait_for_catalogue(rig: Rig, n_items: int, started: float, say: Say) -> int:
    """Wait until the worker has indexed `n_items` (its /metrics); the count indexed.
    RuntimeError after `WORKER_READY_TIMEOUT_S` or if the worker exits."""
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    next_progress = time.monotonic() + PROGRESS_EVERY_S
    while time.monotonic() < deadline:
        rig.check()
        indexed = await asyncio.to_thread(scrape_metric, rig.settings.metrics_port, "streamrec_items_indexed_total")
        if indexed is not None and indexed >= n_items:
            return int(indexed)
        if time.monotonic() >= next_progress:
            next_progress += PROGRESS_EVERY_S
            state = "not answering yet" if indexed is None else f"{indexed:.0f}/{n_items} items indexed"
            say(f"worker: {state} ({time.monotonic() - started:.0f}s)")
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the worker did not index the catalogue within {WORKER_READY_TIMEOUT_S:.0f}s:\n"
                       f"{log_tail(rig.worker_log)}")


# --- load in, lists out -------------------------------------------------------------------
async def send_at_rate(
    producer: EventProducer,
    events: Iterable[Event],
    total: int,
    rate: float,
    on_sent: Callable[[Event, float], None],
    on_progress: Callable[[float, int], None] | None = None,
) -> dict[str, Any]:
    """Send `total` of `events` at `rate` per second: every `TICK_S`, whatever is due (aiokafka
    gathers what is due within `STREAMREC_SDK_LINGER_MS` into one batch per partition). Each event's ts becomes its send time; `on_sent(event,
    perf_counter at send)` hears of each, `on_progress(elapsed_s, sent)` is called every
    `PROGRESS_EVERY_S` (it may raise to stop). Returns the send figures; on a small machine
    the producer itself may fall short of the rate, which `sent_per_s` then says."""
    source = iter(events)
    started = time.perf_counter()
    last_send = started
    sent = 0
    behind_max = 0.0
    next_progress = started + PROGRESS_EVERY_S
    while sent < total:
        now = time.perf_counter()
        due = min(total, int((now - started) * rate) + 1)
        if sent < due:
            behind_max = max(behind_max, now - (started + sent / rate))
        for _ in range(due - sent):
            event = next(source).model_copy(update={"ts": time.time()})
            last_send = time.perf_counter()
            on_sent(event, last_send)
            await producer.send_event(event)
            sent += 1
        if on_progress is not None and now >= next_progress:
            next_progress += PROGRESS_EVERY_S
            on_progress(now - started, sent)
        await asyncio.sleep(TICK_S)
    send_s = last_send - started
    await producer.flush()
    achieved = (sent - 1) / send_s if send_s > 0 and sent > 1 else float(sent)
    return {"events_sent": sent, "send_s": round(send_s, 3), "sent_per_s": round(achieved, 1),
            "producer_behind_max_ms": round(behind_max * 1000, 1),
            "acked_after_s": round(time.perf_counter() - last_send, 3)}


async def _read_lists(reader: AIOKafkaConsumer, on_list: Callable[[float, bytes], None]) -> None:
    while True:
        batches = await reader.getmany(timeout_ms=100)
        now = time.perf_counter()
        for records in batches.values():
            for record in records:
                on_list(now, record.value)


@contextlib.asynccontextmanager
async def reading_lists(rig: Rig, on_list: Callable[[float, bytes], None]) -> AsyncIterator[None]:
    """Within: every list on `recommendations` (from the beginning) goes to `on_list(perf_counter
    when its fetch returned, value)`, from a background task `rig.check()` watches."""
    await ensure_topics(rig.settings)
    reader = await open_reader(rig.settings, rig.settings.topics.recommendations, from_beginning=True)
    rig.reading = asyncio.create_task(_read_lists(reader, on_list))
    try:
        yield
    finally:
        rig.reading.cancel()
        await asyncio.gather(rig.reading, return_exceptions=True)
        rig.reading = None
        try:
            await asyncio.wait_for(reader.stop(), CLOSE_TIMEOUT_S)
        except Exception:  # closing must not mask the run's own error
            pass


async def index_catalogue(
    rig: Rig, producer: EventProducer, items: Sequence[Item], started: float, say: Say
) -> dict[str, float]:
    """Produce the catalogue and wait until the worker has indexed it: its ready time
    (seconds since `started`, a monotonic time) and the items it counts."""
    await send_items(producer, items)
    say(f"produced a catalogue of {len(items)} items; waiting for the worker to index it ...")
    indexed = await wait_for_catalogue(rig, len(items), started, say)
    ready_s = round(time.monotonic() - started, 1)
    say(f"worker ready after {ready_s:.1f}s")
    return {"ready_s": ready_s, "catalogue_items": indexed}
