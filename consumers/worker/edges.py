"""The named edge callbacks: what a worker does with a record, or a batch, it cannot handle.

The core never sees a bad record, and nothing is swallowed silently:

- `on_bad_input`: a message that is not a valid record goes to the dead-letter topic with
  its reason (the handler that refused it counts it);
- `on_processing_error`: a valid event the core fails on, alone among the others of its
  batch (a poison event), goes there too, with the reason `processing_failed`, so the rest
  of the stream goes on (tests/e2e/test_poison.py);
- `on_produce_error`: a batch whose lists could not be produced (the broker failed, or the
  core failed for every user of it) is counted and given up for Faust to read it again,
  after a wait that grows while the failures go on (no hot crash loop).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from streamrec.consumers.worker.context import WorkerContext, origin_of
from streamrec.consumers.worker.handlers import PROCESSING_FAILED, dead_letter
from streamrec.consumers.worker.retry import LeavingBatch, wait_unless_leaving
from streamrec.stream.messages import DeadLetter, Event
from streamrec.stream.validation import Rejection

log = logging.getLogger(__name__)


async def on_bad_input(context: WorkerContext, letter: DeadLetter) -> Awaitable[Any]:
    """Send `letter` to the dead-letter topic; its delivery, for a caller that acks after it."""
    return await context.topics.dlq.send(value=letter.to_bytes())


async def on_processing_error(
    context: WorkerContext, read: Sequence[tuple[Event, Any]], failed: Mapping[str, Exception]
) -> None:
    """Dead-letter the events (parsed, as read) of the users whose handling failed (user id ->
    error), each delivered before the batch is acked."""
    context.metrics.agent_errors.labels(agent="recommend").inc()
    for parsed, event in read:
        if parsed.user_id in failed:
            error = failed[parsed.user_id]
            letter = dead_letter(
                Rejection(PROCESSING_FAILED, f"{type(error).__name__}: {error}"[:500]),
                event.value, origin_of(event),
            )
            context.metrics.dead_letters.labels(topic=letter.topic, reason=letter.reason).inc()
            await (await on_bad_input(context, letter))  # delivered before the ack


async def on_produce_error(context: WorkerContext, error: Exception, events: int) -> None:
    """Count a recommend batch of `events` that failed, and wait before Faust restarts the
    agent and reads its unacked offsets again (not past a stop or a rebalance)."""
    context.metrics.agent_errors.labels(agent="recommend").inc()
    delay = context.recommend_backoff.failed()
    log.error("recommend failed on a batch of %d events; reading it again in %.0f s",
              events, delay, exc_info=error)
    with contextlib.suppress(LeavingBatch):
        await wait_unless_leaving(context.app, delay)
