"""End to end: probe findings of issue 17 on a real worker whose broker goes away.

A real worker with a Bearer token on a Tansu broker of its own. Oversized headers are
answered with a 400, and logged in one line, without an ERROR traceback. Then the broker is
stopped: `/readyz` without the token says what is not ready but neither the broker's address
nor exception text (with the token it does); the worker does not flood its log with
connection errors, and a SIGTERM stops it promptly.
"""

from __future__ import annotations

import http.client
import time
import uuid
from pathlib import Path

import pytest

from streamrec.stream.broker import DevBroker, free_port
from streamrec.stream.settings import Settings
from tests.support.waiting import wait_for
from tests.support.workers import WORKER_READY_S, start_worker

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

TOKEN = "probe-token"
BROKER_GONE_S = 20.0  # how long the worker runs without its broker before it is stopped
MAX_ERROR_LINES = 20  # ERROR lines it may write meanwhile (it used to write ~90 a second)
EXIT_S = 15.0  # a SIGTERM stops it within this long, broker or not (its STREAMREC_STOP_TIMEOUT_S: 5)


def oversized_header_status(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.putrequest("GET", "/healthz")
    connection.putheader("X-Padding", "x" * 20_000)
    connection.endheaders()
    return connection.getresponse().status


def test_probes_hold_while_the_broker_goes_away(tmp_path: Path) -> None:
    broker = DevBroker(port=0, log_path=tmp_path / "tansu.log")
    broker.start()
    tag = uuid.uuid4().hex[:8]
    settings = Settings(broker=broker.url, app_id=f"probe-{tag}", topic_prefix=f"p{tag}.", partitions=1,
                        fetch_max_wait_ms=10, data_dir=tmp_path / "data", metrics_port=free_port(),
                        stop_timeout_s=5.0)
    worker = start_worker(settings, tmp_path / "worker.log", token=TOKEN)
    try:
        wait_for(lambda: worker.alive() and worker.readiness().get("ready"), WORKER_READY_S, "the worker ready")
        assert oversized_header_status(settings.metrics_port) == 400
        wait_for(lambda: "malformed HTTP request" in worker.log_tail(), 10, "the refusal logged")
        log = worker.log_path.read_text()
        assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]

        broker.stop()
        address = f"{broker.host}:{broker.port}"
        status, public = worker.call("/readyz", token=None)
        assert status == 503 and public["ready"] is False and "broker" in public["missing"]
        assert address not in str(public) and "Error" not in str(public), public
        status, private = worker.call("/readyz")
        assert status == 503 and address in private["checks"]["broker"]["detail"]

        lines_before = len(worker.log_path.read_text().splitlines())
        time.sleep(BROKER_GONE_S)
        worker.alive()
        lines = worker.log_path.read_text().splitlines()[lines_before:]
        errors = [line for line in lines if "[ERROR]" in line]
        tracebacks = [line for line in lines if line.startswith("Traceback")]
        print(f"{len(lines)} log lines, {len(errors)} ERROR, {len(tracebacks)} tracebacks, "
              f"in {BROKER_GONE_S:.0f} s without the broker")
        started = time.monotonic()
        exit_code = worker.terminate(timeout_s=120)
        took = time.monotonic() - started
        print(f"SIGTERM -> exit {exit_code} in {took:.1f} s")
        assert len(errors) <= MAX_ERROR_LINES, "\n".join(errors[:30])
        assert took < EXIT_S
        assert "streamrec broker" in "\n".join(errors), "the hint"
        assert not tracebacks, "\n".join(lines[:60])
    finally:
        worker.kill()
        broker.stop()
