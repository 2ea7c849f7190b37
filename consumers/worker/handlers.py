"""The decisions the agents make, as plain objects the tests can drive without a broker.

Agents stay a few lines each: read, call a handler, produce what it returns.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass

from streamrec.consumers.worker.metrics import WorkerMetrics
from streamrec.models.core.pipeline import Pipeline
from streamrec.models.core.recommender import OnlineOutcome
from streamrec.models.core.state import UserState
from streamrec.stream.messages import DeadLetter, Event, Item, Recommendation
from streamrec.stream.settings import Settings
from streamrec.stream.validation import EventValidator, RecentIds, Rejection, parse_item

DLQ_RAW_LIMIT_BYTES = 256 * 1024  # the DLQ keeps at most this much of an oversized message
PROCESSING_FAILED = "processing_failed"  # the dead-letter reason of a valid event the worker failed on
MAX_ATTEMPTS = 3  # tries of a batch that fails for every user before its events are set aside

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Origin:
    """Where a message came from, for its dead letter."""

    topic: str
    partition: int
    offset: int


def dead_letter(rejection: Rejection, raw: bytes | None, origin: Origin) -> DeadLetter:
    body = raw or b""
    error = rejection.error
    if len(body) > DLQ_RAW_LIMIT_BYTES:
        error += f" (raw truncated to {DLQ_RAW_LIMIT_BYTES} of {len(body)} bytes)"
        body = body[:DLQ_RAW_LIMIT_BYTES]
    text, encoding = DeadLetter.encode_raw(body)
    return DeadLetter(
        reason=rejection.reason,
        error=error,
        raw=text,
        raw_encoding=encoding,
        topic=origin.topic,
        partition=origin.partition,
        offset=origin.offset,
        received_at=time.time(),
    )


class IngestHandler:
    """bytes -> a valid, first-seen `Event`, a `DeadLetter`, or None for a duplicate.

    An event id counts as seen only once what it causes is delivered (`confirm`): its list and
    state when the ingest agent serves it (one hop), or its forward to `events.by-user`. An
    event whose handling was lost is processed again when it is re-read, not dropped as a
    duplicate.
    """

    def __init__(self, settings: Settings, metrics: WorkerMetrics) -> None:
        self.validator = EventValidator(
            max_bytes=settings.max_message_bytes,
            min_ts=settings.min_event_ts,
            max_future_skew_s=settings.max_future_skew_s,
        )
        self.seen = RecentIds(settings.dedup_capacity)
        self.metrics = metrics

    def handle(
        self, raw: bytes | None, origin: Origin, now: float, pending: Container[str] = ()
    ) -> Event | DeadLetter | None:
        """`pending`: ids accepted earlier in the same, not yet confirmed, batch."""
        result = self.validator.parse(raw, now)
        if isinstance(result, Rejection):
            self.metrics.events.labels(type="unknown", outcome="dead_letter").inc()
            self.metrics.dead_letters.labels(topic=origin.topic, reason=result.reason).inc()
            return dead_letter(result, raw, origin)
        if result.event_id in self.seen or result.event_id in pending:
            self.metrics.events.labels(type=result.type, outcome="duplicate").inc()
            return None
        self.metrics.events.labels(type=result.type, outcome="accepted").inc()
        return result

    def confirm(self, event_ids: Iterable[str]) -> None:
        """Remember ids whose events are safely served or forwarded."""
        for event_id in event_ids:
            self.seen.add(event_id)
        self.metrics.dedup_size.set(len(self.seen))


class FailedAttempts:
    """How many times each event's handling failed, for the last `capacity` events that failed.

    >>> attempts = FailedAttempts(capacity=2)
    >>> from types import SimpleNamespace as E
    >>> attempts.failed([E(event_id="a")]), attempts.failed([E(event_id="a"), E(event_id="b")])
    (1, 1)
    >>> attempts.failed([E(event_id="a")]); attempts.failed([E(event_id="c")])  # "b" drops out
    3
    1
    >>> sorted(attempts.counts)
    ['a', 'c']
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self.counts: OrderedDict[str, int] = OrderedDict()

    def failed(self, events: Sequence[Event]) -> int:
        """Count one more failure for each event; the fewest failures any of them has had."""
        for event in events:
            self.counts[event.event_id] = self.counts.get(event.event_id, 0) + 1
            self.counts.move_to_end(event.event_id)
        while len(self.counts) > self.capacity:
            self.counts.popitem(last=False)
        return min((self.counts.get(event.event_id, 0) for event in events), default=0)

    def forget(self, events: Sequence[Event]) -> None:
        for event in events:
            self.counts.pop(event.event_id, None)


class RecommendHandler:
    """A micro-batch of valid events -> updated user states and one list per user."""

    def __init__(self, settings: Settings, pipeline: Pipeline, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics
        # Also told every batch's online outcomes (the canary judge listens here).
        self.on_outcomes: Callable[[Sequence[OnlineOutcome]], None] | None = None
        self.attempts = FailedAttempts()  # kept across agent restarts (the batch is read again)

    def handle(
        self, events: Sequence[Event], states: dict[str, UserState | None]
    ) -> tuple[list[Recommendation], dict[str, UserState]]:
        """`states` holds each user's stored state (None when new); returns the new states too.

        A user gets a list when the batch holds the newest event their state has learned: a
        new event, or the last one learned read again (after a crash its list may not have
        been delivered). Events the state learned before that are duplicates, sent again or
        read again: they are dropped, with no list (it would be older than the user's newest).
        """
        learned_before = {user_id: state.n_events if state else 0 for user_id, state in states.items()}
        handled = self.pipeline.recommender.handle(events, states)  # one list per user per batch
        self.observe_online(handled.outcomes)
        self.metrics.stage_latency.labels(stage="state").observe(handled.learn_s)
        self.metrics.stage_latency.labels(stage="rank").observe(handled.rank_s)
        self.metrics.batch_size.labels(agent="recommend").observe(len(events))
        generated_at = time.time()
        messages = []
        for user, ranked_list in zip(handled.users, handled.lists):
            state = user.state
            dropped = len(user.events) - (state.n_events - learned_before.get(state.user_id, 0))
            if dropped:
                log.debug("%d events of user %r were learned before: dropped as duplicates",
                         dropped, state.user_id)
            trigger = next((e for e in reversed(user.events) if e.event_id == state.last_event_id), None)
            if trigger is None:
                continue  # only duplicates of older events: the user's newest list stands
            messages.append(
                Recommendation(
                    user_id=ranked_list.user_id,
                    items=ranked_list.items,
                    model_version=ranked_list.model_version,
                    trigger_event_id=trigger.event_id,
                    generated_at=generated_at,
                    latency_ms=round(max(0.0, generated_at - trigger.ts) * 1000.0, 3),
                    list_id=Recommendation.make_list_id(ranked_list.user_id, trigger.event_id),
                    sequence=state.n_events,
                    trigger_ts=trigger.ts,
                )
            )
        return messages, handled.states

    def handle_isolating(
        self, events: Sequence[Event], states: dict[str, UserState | None]
    ) -> tuple[list[Recommendation], dict[str, UserState], dict[str, Exception]]:
        """`handle`, with a failure kept to the users whose events cause it: (lists, states, failed).

        When the batch raises, each user's events are handled again alone. A user whose events
        still fail while others' succeed holds a poison event: the user is returned in `failed`
        (user id -> error) for the caller to dead-letter, and their stored state is left as it
        was. When every user fails, nothing singles one out (a broken model, a bug all hit):
        the error is raised and the batch read again, until each of its events has failed
        `MAX_ATTEMPTS` times (a poison event alone in a quiet stream): then they are set aside.
        Events learned by a failed try are not counted twice (`UserState.learn` is idempotent).

        >>> from unittest import mock
        >>> handler = RecommendHandler.__new__(RecommendHandler); handler.attempts = FailedAttempts()
        >>> def handle(events, states):
        ...     if any(e.user_id == "bad" for e in events): raise ValueError("poison")
        ...     return [f"list for {e.user_id}" for e in events], {}
        >>> handler.handle = handle
        >>> bad, ok = mock.Mock(user_id="bad", event_id="e1"), mock.Mock(user_id="ok", event_id="e2")
        >>> handler.handle_isolating([bad, ok], {})
        (['list for ok'], {}, {'bad': ValueError('poison')})
        """
        try:
            messages, new_states = self.handle(events, states)
            return messages, new_states, {}
        except Exception as exc:
            batch_error = exc
        by_user: dict[str, list[Event]] = {}
        for event in events:
            by_user.setdefault(event.user_id, []).append(event)
        messages, new_states, failed = [], {}, {}
        if len(by_user) == 1:
            failed = {events[0].user_id: batch_error}
        else:
            log.warning("a batch of %d events for %d users failed (%r); handling each user alone",
                        len(events), len(by_user), batch_error)
            for user_id, user_events in by_user.items():
                try:
                    user_messages, user_states = self.handle(user_events, {user_id: states.get(user_id)})
                except Exception as exc:
                    failed[user_id] = exc
                    continue
                messages.extend(user_messages)
                new_states.update(user_states)
        if len(failed) == len(by_user):  # no user singled out: read again, unless worn out
            tries = [self.attempts.failed(by_user[user_id]) for user_id in failed]
            if min(tries) < MAX_ATTEMPTS:
                raise batch_error
        for user_id, exc in failed.items():
            log.error("dead-lettering %d events of user %r: handling them failed: %r",
                      len(by_user[user_id]), user_id, exc, exc_info=exc)
            self.attempts.forget(by_user[user_id])
        return messages, new_states, failed

    def observe_online(self, outcomes: Sequence[OnlineOutcome]) -> None:
        """Count live hits per version; the arm says whether it was a canary's."""
        canary = self.pipeline.recommender.canary
        canary_version = canary.scorer.version if canary is not None else None
        for outcome in outcomes:
            arm = "canary" if outcome.model_version == canary_version else "main"
            self.metrics.online_events.labels(model_version=outcome.model_version, arm=arm).inc()
            if outcome.hit:
                self.metrics.online_hits.labels(model_version=outcome.model_version, arm=arm).inc()
        if self.on_outcomes is not None and outcomes:
            self.on_outcomes(outcomes)

    def observe_published(self, messages: Sequence[Recommendation]) -> None:
        """Record end-to-end latency (event ts -> on the topic) once the lists are produced."""
        now = time.time()
        for message in messages:
            ts = message.generated_at - message.latency_ms / 1000.0
            self.metrics.end_to_end_latency.observe(max(0.0, now - ts))
        self.metrics.recommendations.inc(len(messages))


class CatalogHandler:
    """Raw `items` values -> parsed items (bad ones as dead letters)."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics) -> None:
        self.max_bytes = settings.max_message_bytes
        self.metrics = metrics

    def parse(self, raw: bytes | None, origin: Origin) -> Item | DeadLetter:
        result = parse_item(raw, self.max_bytes)
        if isinstance(result, Rejection):
            self.metrics.dead_letters.labels(topic=origin.topic, reason=result.reason).inc()
            return dead_letter(result, raw, origin)
        return result
