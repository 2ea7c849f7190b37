"""Real worker processes for the multi-worker tests: start, call the HTTP API, watch ownership."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamrec.stream.settings import Settings
from tests.e2e.test_end_to_end import streamrec_env

POLL_S = 0.25


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy (returned), or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


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

    def readiness(self) -> dict:
        try:
            return self.call("/readyz", token=None)[1]
        except OSError:
            return {}

    def owned(self) -> list[int]:
        """The input partitions this worker owns now; [] while its group rebalances."""
        group = self.readiness().get("checks", {}).get("consumer_group", {})
        return group.get("partitions", []) if not group.get("rebalancing") else []


WORKER_COMMAND = [sys.executable, "-m", "streamrec.consumers.cli", "worker"]


def start_worker(settings: Settings, log_path: Path, env: dict[str, str] | None = None,
                 token: str | None = None, command: list[str] | None = None) -> Worker:
    """Spawn `streamrec worker` (or `command`) for `settings` in its own process group,
    logging to `log_path`."""
    full_env = streamrec_env(settings) | (env or {})
    if token:
        full_env["STREAMREC_HTTP_TOKEN"] = token
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command or WORKER_COMMAND,
            env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return Worker(settings, log_path, process, token)
