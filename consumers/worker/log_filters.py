"""Log records that one client, or one outage, would repeat thousands of times, kept readable.

- `MalformedRequestFilter`: aiohttp answers a malformed request (headers over its size
  limits, a bad request line) with a plain 400 and logs it at ERROR with a traceback; such a
  record becomes one WARNING line without it.
- `RepeatedErrorLimiter`: aiokafka logs every failed connection attempt and fetch; with the
  broker away that is ~100 ERROR lines a second. The first record of each kind goes through
  with a hint, then one per `every_s`, saying how many like it were held back.

`install(broker)` puts both in place, once per process (tests/e2e/test_http_probes.py).

>>> clock = iter([0.0, 1.0, 2.0, 31.0]).__next__
>>> limiter = RepeatedErrorLimiter("kafka://b:9092", every_s=30.0, clock=clock)
>>> def record():
...     return logging.LogRecord("aiokafka", logging.ERROR, "f", 1, "Unable connect to node %s", ("1",), None)
>>> passed = [r.getMessage() for r in (record() for _ in range(4)) if limiter.filter(r)]
>>> len(passed), passed[1].split(" [")[0]
(2, 'Unable connect to node 1 (2 more like it in 31 s)')
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp.http_exceptions import HttpProcessingError

KAFKA_LOGGER_PREFIX = "aiokafka"
REPEAT_EVERY_S = 30.0  # at most one record of a kind this often while it repeats


class MalformedRequestFilter(logging.Filter):
    """One WARNING line, no traceback, for a request aiohttp could not parse."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            detail = " ".join(str(error.message).split())[:200]
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "refused a malformed HTTP request from %s: %s", (remote, detail)
            record.exc_info, record.exc_text = None, None
        return True


class RepeatedErrorLimiter(logging.Filter):
    """Warnings and errors of one kind (logger and message template): the first, then one per
    `every_s` with the count held back; each with the hint about the broker."""

    def __init__(self, broker: str, every_s: float = REPEAT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s, self.clock = every_s, clock
        self.hint = (f" [is the broker at {broker} running? `streamrec broker` starts one; "
                     "STREAMREC_BROKER names yours]")
        self._kinds: dict[tuple[str, str], tuple[float, int]] = {}  # kind -> (last shown, held since)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = (record.name, str(record.msg))
        now = self.clock()
        shown = self._kinds.get(kind)
        if shown is not None and now - shown[0] < self.every_s:
            self._kinds[kind] = (shown[0], shown[1] + 1)
            return False
        self._kinds[kind] = (now, 0)
        held = f" ({shown[1]} more like it in {now - shown[0]:.0f} s)" if shown is not None and shown[1] else ""
        record.msg = str(record.msg) + held.replace("%", "%%") + self.hint.replace("%", "%%")
        return True


def install(broker: str) -> None:
    """Put the filters on aiohttp's server logger and on every aiokafka logger (a logger's
    filters see only its own records, not its children's), once per process."""
    import aiokafka.consumer.fetcher  # noqa: F401  (every aiokafka logger exists once imported)
    import aiokafka.consumer.group_coordinator  # noqa: F401
    import aiokafka.producer.sender  # noqa: F401

    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server.filters):
        server.addFilter(MalformedRequestFilter())
    limiter = RepeatedErrorLimiter(broker)
    for name in list(logging.Logger.manager.loggerDict):
        if name == KAFKA_LOGGER_PREFIX or name.startswith(KAFKA_LOGGER_PREFIX + "."):
            logger = logging.getLogger(name)
            if not any(isinstance(f, RepeatedErrorLimiter) for f in logger.filters):
                logger.addFilter(limiter)
