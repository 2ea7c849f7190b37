"""Worker processes as the tools and the tests run them: launch, log tail, CPU and memory.

`start_worker` is the one way a tool (demo, load rig, soak, benches) or a test starts a
`streamrec worker` subprocess: its own process group (Ctrl-C reaches the driver only, which
stops the worker itself, e.g. with `stream.broker.stop_process_group`), and an environment
that reproduces the driver's `Settings` exactly (`worker_environment`). The CPU and memory
figures are read from /proc (Linux).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from streamrec.stream.settings import Settings

WORKER_COMMAND = (sys.executable, "-m", "streamrec.consumers.cli", "worker")
LOG_TAIL_CHARS = 3_000
#: Set for every worker: no model download (the encoder ships in a package), and no
#: tokenizer thread pool fighting the worker's own threads.
QUIET_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def worker_environment(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process' environment with the `STREAMREC_*` variables replaced by `settings.to_env()`
    (so a variable set here cannot override what `settings` say), plus `extra`.

    >>> env = worker_environment(Settings(partitions=3), {"STREAMREC_K": "4"})
    >>> env["STREAMREC_PARTITIONS"], env["STREAMREC_K"], env["HF_HUB_OFFLINE"]
    ('3', '4', '1')
    """
    fields = {f"STREAMREC_{name.upper()}" for name in Settings.model_fields}
    inherited = {key: value for key, value in os.environ.items() if key.upper() not in fields}
    return inherited | QUIET_ENV | settings.to_env() | dict(extra or {})


def start_worker(
    settings: Settings,
    log_path: Path,
    extra_env: Mapping[str, str] | None = None,
    command: Sequence[str] = WORKER_COMMAND,
) -> subprocess.Popen:
    """`streamrec worker` (or `command`) for `settings`, in its own process group, its output
    appended to `log_path` (a restarted worker logs on after the first)."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(command), env=worker_environment(settings, extra_env),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )


def log_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process (all its threads) so far; 0 when gone."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes(pid: int | str | None = "self") -> int | None:
    """Resident set size of a process (/proc/<pid>/statm; "self" for this one); None when gone."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None
