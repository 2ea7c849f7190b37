"""Polling until a condition holds: `wait_for` in plain code, `wait_until` in a coroutine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

POLL_S = 0.25
OUTPUT_WAIT_S = 120.0  # a running worker's output (lists, dead letters, counters) for what was sent


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = POLL_S) -> Any:
    """Poll `condition` until it returns something truthy (returned), or fail after `timeout_s`.

    >>> wait_for(lambda: 42, 1.0, "the answer")
    42
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = POLL_S) -> None:
    """`wait_for` without blocking the event loop (the test's readers run meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
