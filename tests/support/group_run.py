"""A worker group under test: a topic set of its own, a catalogue, workers, a stream of events.

Shared by the tests that stream a synthetic world's events through real worker processes
and then check every user against what was sent (`tests/e2e/test_failover.py`,
`test_poison.py`); the `run` fixture (tests/e2e/conftest.py) sets one up per test.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from streamrec.consumers.tools.processes import WORKER_COMMAND
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.stream.broker import free_port
from streamrec.stream.messages import Event
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from tests.support.topics import fully_committed
from tests.support.waiting import wait_for
from tests.support.workers import Worker, start_worker

PARTITIONS = 4
READY_S = 240.0  # a worker start on a loaded 2-core machine: model load, group join, catalogue
SERVED_S = 180.0  # a dead member's session expires, the group rebalances, tables recover
RATE = 40.0  # events per second from the background sender
N_USERS = 24
HISTORY = 2_000  # events kept per user: more than a user gets here, so every one is checked


class Sender:
    """Sends a world's events at `RATE` from a background thread until stopped; keeps a ledger."""

    def __init__(self, settings: Settings, world: SyntheticWorld, stream: int) -> None:
        self.settings = settings
        now = time.time()
        self._queue = [e.model_copy(update={"ts": now + n * 1e-3})
                       for n, e in enumerate(world.events(20_000, start_ts=now, stream=stream))]
        self.sent: list[Event] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def send_now(self, n: int, user: str | None = None) -> list[Event]:
        """Send the next `n` events (of `user`, if given) at once, no thread; wait for delivery."""
        chosen = [e for e in self._queue if user in (None, e.user_id)][:n]
        batch, self._queue = chosen, [e for e in self._queue if e not in chosen]

        async def produce() -> None:
            async with EventProducer(self.settings) as producer:
                await producer.send_events(batch)

        asyncio.run(produce())
        self.sent.extend(batch)
        return batch

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sender", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        async def produce() -> None:
            async with EventProducer(self.settings) as producer:
                started = time.monotonic()
                while not self._stop.is_set() and self._queue:
                    delay = started + len(self.sent) / RATE - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    event = self._queue.pop(0)
                    await producer.send_event(event)
                    self.sent.append(event)
                await producer.flush()

        try:
            asyncio.run(produce())
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def mark(self) -> int:
        """How many events are sent so far (a point in the stream)."""
        return len(self.sent)

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)
        assert self.error is None, f"the sender failed: {self.error!r}"

    def history(self) -> dict[str, list[Event]]:
        by_user: dict[str, list[Event]] = defaultdict(list)
        for event in self.sent:
            by_user[event.user_id].append(event)
        return by_user


@dataclass
class Run:
    settings: Settings
    tmp: Path
    world: SyntheticWorld
    n_items: int
    workers: list[Worker] = field(default_factory=list)

    def start(self, name: str, env: dict[str, str] | None = None, command: list[str] | None = None) -> Worker:
        settings = self.settings.model_copy(update={"data_dir": self.tmp / name, "metrics_port": free_port()})
        worker = start_worker(settings, self.tmp / f"{name}.log", env, command=command or WORKER_COMMAND)
        self.workers.append(worker)
        return worker

    def wait_served_and_committed(self, worker: Worker, history: dict[str, list[Event]], what: str) -> None:
        """Wait until each user of `history` has a list for their last event, then until the
        group has committed every input message (all read, all processed)."""
        wait_for(lambda: lists_triggered_by_last_events(worker, history), SERVED_S, f"{what} served")
        wait_for(lambda: fully_committed(self.settings), SERVED_S, f"{what} processed and committed")

    def rewinds(self) -> list[str]:
        """The workers' log lines about partitions read again (`streamrec.consumers.worker.transport`)."""
        return [line for worker in self.workers
                for line in worker.log_path.read_text(errors="replace").splitlines()
                if "reading again" in line]

    def wait_ready(self, worker: Worker) -> None:
        def ready() -> bool:
            return worker.alive() and bool(worker.readiness().get("ready")) and worker.items_indexed() >= self.n_items

        wait_for(ready, READY_S, f"{worker.log_path.stem} ready with the catalogue indexed")


def lists_triggered_by_last_events(worker: Worker, history: dict[str, list[Event]]) -> bool:
    worker.alive()
    for user, events in history.items():
        status, latest = worker.call(f"/users/{user}/recommendations")
        if status != 200 or latest.get("trigger_event_id") != events[-1].event_id:
            return False
    return True
