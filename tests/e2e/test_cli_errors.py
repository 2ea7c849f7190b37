"""End to end: every wrong use of the `streamrec` CLI ends in one clear line and its exit code.

2 for usage (flags that make no sense together), 1 for a runtime problem (no broker, no
dataset), never a traceback or a screen of aiokafka errors; and `streamrec broker` stops
Tansu, freeing its port, when it is told to stop with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamrec.stream.broker import DevBroker, _kafka_answers, free_port
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CLI = [sys.executable, "-m", "streamrec.consumers.cli"]


def streamrec(*args: str, env: dict[str, str] | None = None, timeout_s: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout_s)


def last_line(done: subprocess.CompletedProcess) -> str:
    """The one line a refusal ends in; nothing that looks like a traceback or a log flood."""
    assert "Traceback" not in done.stderr, done.stderr
    assert " ERROR " not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines, "nothing said"
    return lines[-1]


NO_BROKER = {"STREAMREC_BROKER": f"kafka://127.0.0.1:{free_port()}", "STREAMREC_BROKER_WAIT_S": "1"}


def test_a_worker_without_a_broker_says_so_in_one_line(tmp_path: Path) -> None:
    done = streamrec("worker", env=NO_BROKER | {"STREAMREC_DATA_DIR": str(tmp_path)})
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0, done.stderr  # one line, and only that
    line = last_line(done)
    assert "no Kafka broker answers at kafka://127.0.0.1:" in line
    assert "streamrec broker" in line and "STREAMREC_BROKER" in line


@pytest.mark.parametrize("args, says", [
    (["--path", "/missing"], "--path needs --dataset movielens"),
    (["--dataset", "synthetic", "--path", "/missing"], "synthetic data needs none"),
    (["--dataset", "movielens"], "--dataset movielens needs --path DIR"),
])
def test_produce_refuses_flags_that_do_not_go_together(args: list[str], says: str) -> None:
    done = streamrec("produce", *args, env=NO_BROKER)
    assert done.returncode == 2
    assert says in last_line(done)


def test_produce_from_a_missing_dataset_is_one_line(broker: DevBroker, tmp_path: Path) -> None:
    missing = streamrec("produce", "--dataset", "movielens", "--path", str(tmp_path / "missing"), env=NO_BROKER)
    assert missing.returncode == 1
    assert "is not a directory" in last_line(missing)
    empty = streamrec("produce", "--dataset", "movielens", "--path", str(tmp_path),
                      env={"STREAMREC_BROKER": broker.url, "STREAMREC_TOPIC_PREFIX": "cli-errors."})
    assert empty.returncode == 1
    assert f"expected movies.csv in {tmp_path}" in last_line(empty)


def test_produce_and_dlq_replay_without_a_broker_are_one_line() -> None:
    for args in (["produce", "--events", "5"], ["dlq", "replay", "--dry-run"]):
        done = streamrec(*args, env=NO_BROKER)
        assert done.returncode == 1, args
        assert "no Kafka broker answers" in last_line(done) and "streamrec broker" in last_line(done)


def test_dlq_replay_refuses_a_time_it_cannot_read() -> None:
    done = streamrec("dlq", "replay", "--since", "yesterday", env=NO_BROKER)
    assert done.returncode == 2
    assert "is not a time" in last_line(done)


def test_the_broker_command_stops_tansu_on_sigterm() -> None:
    port = free_port()
    process = subprocess.Popen([*CLI, "broker", "--port", str(port)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _kafka_answers("127.0.0.1", port, 1.0), 60, "the broker to answer")
        process.send_signal(signal.SIGTERM)  # to the CLI alone: Tansu runs in a group of its own
        started = time.monotonic()
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert time.monotonic() - started < 10
        assert "Traceback" not in err, err
        assert "broker stopped" in out
        assert not _kafka_answers("127.0.0.1", port, 1.0), "Tansu still answers: it was left running"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
