"""Trying again: waits that double while failures go on, and giving a batch up to a stop.

One way to wait after a failure for the whole worker: `Backoff` counts the failures in a row
and says how long to wait; `retry_forever` calls something until it succeeds (following
`model-updates`, reading the catalogue, writing a catalogue batch while the index is away);
`wait_unless_leaving` is the wait of a batch Faust is waiting for, cut short by a stop or a
rebalance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_S = 1.0  # first wait after a failure (an index away, a broker away, an error) (s)
RETRY_MAX_S = 30.0  # longest wait between two tries (s)


@dataclass
class Backoff:
    """How long to wait after each failure in a row: `first_s`, doubling, at most `max_s`.

    >>> backoff = Backoff(first_s=1.0, max_s=5.0)
    >>> [backoff.failed() for _ in range(5)]
    [1.0, 2.0, 4.0, 5.0, 5.0]
    >>> backoff.succeeded(); backoff.failed()
    1.0
    """

    first_s: float = RETRY_S
    max_s: float = RETRY_MAX_S
    failures: int = 0  # in a row, since the last success

    def failed(self) -> float:
        """Count a failure; the wait before the next try (s)."""
        self.failures += 1
        return min(self.first_s * 2 ** (self.failures - 1), self.max_s)

    def succeeded(self) -> None:
        self.failures = 0


async def retry_forever(
    attempt: Callable[[], Awaitable[T]],
    what: str,
    *,
    retry_on: type[Exception] | tuple[type[Exception], ...] = Exception,
    wait: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    backoff: Backoff | None = None,
) -> T:
    """`await attempt()` until it returns, waiting `backoff`'s doubling delays between tries.

    Only `retry_on` errors are tried again (others, and a cancellation, go up); each is
    logged with `what`, with its traceback unless it is an expected kind (`retry_on` narrower
    than `Exception`). `wait` may raise to give up (`wait_unless_leaving`: a stop).

    >>> tries, waits = [], []
    >>> async def read() -> str:
    ...     tries.append(1)
    ...     if len(tries) < 3:
    ...         raise ConnectionError("broker away")
    ...     return f"read at try {len(tries)}"
    >>> async def record(delay: float) -> None:
    ...     waits.append(delay)
    >>> asyncio.run(retry_forever(read, "reading", retry_on=ConnectionError, wait=record)), waits
    ('read at try 3', [1.0, 2.0])
    """
    backoff = backoff or Backoff()
    narrowed = retry_on is not Exception
    while True:
        try:
            return await attempt()
        except asyncio.CancelledError:
            raise
        except retry_on as exc:
            delay = backoff.failed()
            expected = narrowed or is_outage(exc)
            log.warning("%s (retry in %.0f s): %s", what, delay, exc, exc_info=not expected)
            await wait(delay)


def is_outage(error: BaseException) -> bool:
    """The error says a server (the broker, an index server) is away or slow, nothing more:
    worth one line in the log, not a traceback at every retry.

    >>> is_outage(ConnectionRefusedError()), is_outage(ValueError("a bug"))
    (True, False)
    """
    from aiokafka.errors import (
        KafkaConnectionError,
        KafkaTimeoutError,
        NodeNotReadyError,
        RequestTimedOutError,
    )

    return isinstance(error, ConnectionError | TimeoutError | KafkaConnectionError | KafkaTimeoutError
                      | NodeNotReadyError | RequestTimedOutError)


class LeavingBatch(Exception):
    """A batch that cannot be finished now is given up because the worker stops or
    rebalances (`stopping` says which)."""

    def __init__(self, stopping: bool) -> None:
        super().__init__("stopping" if stopping else "rebalancing")
        self.stopping = stopping


async def wait_unless_leaving(app: Any, delay_s: float) -> None:
    """Sleep `delay_s`, but not past a stop or a rebalance of `app` (raises `LeavingBatch`):
    Faust waits for every message in flight before either."""
    deadline = time.monotonic() + delay_s
    while True:
        if app.should_stop or getattr(app, "rebalancing", False):
            raise LeavingBatch(stopping=bool(app.should_stop))
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, RETRY_S))
