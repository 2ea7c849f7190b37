"""Real `streamrec worker` processes of a test: the one launcher, the HTTP API, readiness.

`start_worker` wraps the tools' launcher (`consumers/tools/processes.py`): the worker reads
exactly the test's `Settings` (`Settings.to_env()`), logs to a file of the test and runs in a
process group of its own, so that `Worker.kill` takes all of it down.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamrec.consumers.tools.processes import WORKER_COMMAND, worker_environment
from streamrec.consumers.tools.processes import start_worker as launch
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.stream.messages import Item
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from tests.support.metrics import metric_sum, scrape
from tests.support.waiting import wait_until

WORKER_READY_S = 180.0  # model load, group join and catalogue embedding on a loaded 2-core machine


@dataclass
class Worker:
    """One `streamrec worker` process of a test."""

    settings: Settings
    log_path: Path
    process: subprocess.Popen
    token: str | None = None  # the API's Bearer token, when the worker was given one

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.metrics_port}"

    def call(
        self, path: str, body: bytes | None = None, token: str | None = "default",
        content_type: str | None = "application/json",
    ) -> tuple[int, Any]:
        """(status, JSON body) of a request to this worker's API (`token=None`: send none)."""
        token = self.token if token == "default" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if body is not None and content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.url + path, data=body, headers=headers,
                                         method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def get(self, path: str) -> Any:
        status, body = self.call(path)
        assert status == 200, (path, status, body)
        return body

    def alive(self) -> bool:
        assert self.process.poll() is None, self.log_tail()
        return True

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def log_matching(self, pattern: str, lines: int = 80) -> str:
        """The last `lines` lines of the worker's log that match the regex `pattern`
        (for a failure message: what recovery, assignment and seeks did)."""
        found = [line[:400] for line in self.log_path.read_text(errors="replace").splitlines() if re.search(pattern, line)]
        return "\n".join(found[-lines:])

    def readiness(self) -> dict:
        try:
            return self.call("/readyz", token=None)[1]
        except OSError:
            return {}

    def owned(self) -> list[int]:
        """The input partitions this worker owns now; [] while its group rebalances."""
        group = self.readiness().get("checks", {}).get("consumer_group", {})
        return group.get("partitions", []) if not group.get("rebalancing") else []

    def items_indexed(self) -> float:
        return metric_sum(scrape(self.settings.metrics_port), "streamrec_items_indexed_total")

    def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM to its process group; its exit code (a clean stop is 0)."""
        os.killpg(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL to its process group, if it still runs (the end of every test)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def worker_env(settings: Settings, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a `streamrec` subprocess (worker, trainer, CLI) for `settings`."""
    return worker_environment(settings, env)


def start_worker(settings: Settings, log_path: Path, env: dict[str, str] | None = None,
                 token: str | None = None, command: Sequence[str] = WORKER_COMMAND) -> Worker:
    """Spawn `streamrec worker` (or `command`) for `settings` (plus `env`) in its own process
    group, appending to `log_path`; `token` sets the API's Bearer token."""
    extra = (env or {}) | ({"STREAMREC_HTTP_TOKEN": token} if token else {})
    return Worker(settings, log_path, launch(settings, log_path, extra, command), token)


async def index_catalogue(producer: EventProducer, world: SyntheticWorld, worker: Worker) -> list[Item]:
    """Produce the world's catalogue and wait until `worker` has indexed all of it."""
    items = world.items(ts=time.time())
    for item in items:
        await producer.send_item(item)
    await producer.flush()
    await wait_until(lambda: worker.alive() and worker.items_indexed() >= len(items), WORKER_READY_S,
                     "the worker to index the catalogue")
    return items
