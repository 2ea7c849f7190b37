"""`streamrec demo` as a newcomer runs it: recommendations on screen, Ctrl-C stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

FIRST_LIST_TIMEOUT_S = 200.0


def test_demo_shows_recommendations_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = {**os.environ, "STREAMREC_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    output = tmp_path / "demo.out"
    with output.open("wb") as sink:
        demo = subprocess.Popen(
            [sys.executable, "-m", "streamrec.consumers.cli", "demo", "--duration", "120", "--rate", "50"],
            env=env, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: a failed test can stop it and its broker
        )
    try:
        deadline = time.monotonic() + FIRST_LIST_TIMEOUT_S
        while time.monotonic() < deadline and demo.poll() is None:
            if " <- " in output.read_text(errors="replace"):
                break
            time.sleep(0.5)
        text = output.read_text(errors="replace")
        assert " <- " in text, text[-3000:]
        assert "live page: http://127.0.0.1:" in text and "DURATION=600" in text
        for line in [line.strip() for line in text.splitlines() if line.strip().startswith("curl -s ")]:
            answer = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=30)
            assert answer.returncode == 0 and answer.stdout.strip(), (line, answer)  # pasted, it works
        page = text.split("live page: ")[1].split()[0]
        assert "<html" in subprocess.run(["curl", "-s", page], capture_output=True, text=True, timeout=30).stdout.lower()
        demo.send_signal(signal.SIGINT)  # what Ctrl-C does
        assert demo.wait(timeout=60) == 0
    finally:
        if demo.poll() is None:  # failed: leave nothing running (demo, broker, worker)
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
            _kill_worker(output.read_text(errors="replace"))
    text = output.read_text(errors="replace")
    assert "interrupted; stopping" in text
    assert "Traceback" not in text
    assert "first recommendation after" in text and "stopped the worker and the broker." in text
    # Nothing left behind: the worker's and the broker's pids are gone.
    worker_pid = int(text.split("started a worker (pid ")[1].split(",")[0])
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)


def _kill_worker(text: str) -> None:
    """The demo starts its worker in a session of its own; stop it by the pid it printed."""
    if "started a worker (pid " not in text:
        return
    pid = int(text.split("started a worker (pid ")[1].split(",")[0])
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
