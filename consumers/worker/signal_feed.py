"""The collaborative signals of every worker's users: `events` read whole, as a broadcast.

Each worker reads every partition of `events` without a consumer group, keeps the events the
contract accepts (the ingest agent's validator; what it refuses is skipped, counted as
`invalid`: ingest dead-letters it) and hands them to its `SignalFeed`
(`streamrec.models.core.signal_feed`), which learns the recommender's co-visitation,
transitions and popularity from them: every worker's counts reflect all users, a fetch or
two after an event is produced. The agent that ranks a worker's own users' events (ingest in
one hop, recommend in two) hands them to the same feed before ranking
(`Recommender.signal_feed`); an event learned by one path is skipped by the other, and so is
an event produced twice (the feed remembers the last `signals_dedup_events` event ids; a
repeat older than that, which ingest's larger `dedup_capacity` would still drop, is counted
again here).

Why `events` and not `events.by-user`: with one hop (`agents.py`) events keyed by user never
reach `events.by-user`, while `events` carries every event, whichever hop serves it; what
`events.by-user` holds are copies (re-keyed events, and `processing_failed` letters replayed
there, whose originals were on `events`). Reading one topic, not both, reads each event once
in two-hop mode too and keeps `signals_lookback_events` a count of events. Per-user order
holds for events keyed by user (one partition each); events of one user produced unkeyed
are spread over partitions, and learned in the order the reader gets them.

At start the reader begins `signals_lookback_events` messages before the end (all partitions
together), so a restarted worker rebuilds its counts from the recent past; its own users'
events are left to the reader until it has caught up (`SignalFeed.live`), so that each
user's events are learned in order. Learning runs on the event loop, in batches of at most
`FEED_BATCH` events, between the agents' micro-batches (the signals are not thread-safe).
A broken connection is retried from where the reader was, never from the lookback again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from streamrec.consumers.worker.metrics import WorkerMetrics
from streamrec.consumers.worker.retry import retry_forever
from streamrec.models.core.recommender import Recommender
from streamrec.models.core.signal_feed import SignalFeed, SignalFeedConfig
from streamrec.stream.messages import Event
from streamrec.stream.readers import open_broadcast_reader, seek_back
from streamrec.stream.settings import Settings
from streamrec.stream.validation import EventValidator, Rejection

log = logging.getLogger(__name__)

FEED_BATCH = 256  # events learned at most between two yields to the agents (~15 ms of work)
FETCH_WAIT_MS = 1_000  # longest wait of one fetch when nothing new comes
CAUGHT_UP_PAUSE_S = 0.25  # once caught up, read at most this often: each fetch costs the broker
# (the embedded Tansu lists every stored record batch of a partition on each one), and the
# counts need no fresher events than a quarter of a second


def attach_signal_feed(settings: Settings, recommender: Recommender) -> SignalFeed | None:
    """A feed learning `recommender`'s collaborative signals, set on it; None when the
    settings turn it off or the recommender has no collaborative signals."""
    signals = recommender.collaborative
    if not settings.signals_feed or signals is None:
        return None
    feed = SignalFeed(signals, SignalFeedConfig(
        max_users=settings.signals_max_users,
        history_length=settings.history_length,
        dedup_events=settings.signals_dedup_events,
    ))
    recommender.signal_feed = feed
    return feed


class FeedReader:
    """Reads `events` whole into a `SignalFeed`; `run` again after a failure resumes."""

    def __init__(self, settings: Settings, feed: SignalFeed, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.feed = feed
        self.metrics = metrics
        self.validator = EventValidator(  # the ingest agent's rules: what it accepts, learned here
            max_bytes=settings.max_message_bytes,
            min_ts=settings.min_event_ts,
            max_future_skew_s=settings.max_future_skew_s,
        )
        self.positions: dict[Any, int] = {}  # partition -> next offset to learn (kept across retries)
        self._catch_up_to: dict[Any, int] | None = None  # the end offsets seen at the first start
        self._started_at = time.monotonic()
        self._counted = {"learned": 0, "duplicate": 0}  # the feed's counts as last exported

    async def run(self) -> None:
        """Learn every message, forever."""
        settings = self.settings
        consumer, tps = await open_broadcast_reader(settings, [settings.topics.events])
        try:
            await self._seek(consumer, tps)
            while True:
                fetched = await consumer.getmany(timeout_ms=FETCH_WAIT_MS, max_records=FEED_BATCH)
                for tp, records in fetched.items():
                    self._learn(records)
                    self.positions[tp] = records[-1].offset + 1
                self._record_counts()
                self._record_lag(consumer, tps)
                self._go_live_when_caught_up()
                caught_up = sum(len(records) for records in fetched.values()) < FEED_BATCH
                # the agents' turn; once caught up, a pause: what comes meanwhile is one fetch
                await asyncio.sleep(CAUGHT_UP_PAUSE_S if caught_up else 0)
        finally:
            await consumer.stop()

    async def _seek(self, consumer: Any, tps: list[Any]) -> None:
        if self._catch_up_to is None:  # the first start: some history back
            started, self._catch_up_to = await seek_back(
                self.settings, consumer, tps, self.settings.signals_lookback_events
            )
            self.positions.update(started)
            behind = sum(self._catch_up_to[tp] - started[tp] for tp in tps)
            log.info("collaborative signals: learning %d recent events of %d partitions, then every new one",
                     behind, len(tps))
        for tp in tps:  # a retry: on from where the feed was
            if tp in self.positions:
                consumer.seek(tp, self.positions[tp])

    def _learn(self, records: list[Any]) -> None:
        events: list[Event] = []
        now = time.time()
        for record in records:
            parsed = self.validator.parse(record.value, now)
            if isinstance(parsed, Rejection):  # dead-lettered by ingest: counted, never learned
                self.metrics.signal_feed_events.labels(outcome="invalid").inc()
            else:
                events.append(parsed)
        for event in events:
            try:
                self.feed.learn(event)
            except Exception as exc:  # a bug that one event reaches: never stall the feed on it
                self.metrics.signal_feed_events.labels(outcome="failed").inc()
                log.warning("collaborative signals: could not learn event %r, skipped: %r", event.event_id, exc)

    def _record_counts(self) -> None:
        """Count what the feed learned and skipped since the last call, by either path."""
        feed, counted = self.feed, self._counted
        for outcome, total in (("learned", feed.learned), ("duplicate", feed.duplicates)):
            if total > counted[outcome]:
                self.metrics.signal_feed_events.labels(outcome=outcome).inc(total - counted[outcome])
                counted[outcome] = total

    def _record_lag(self, consumer: Any, tps: list[Any]) -> None:
        behind = 0
        for tp in tps:
            end = consumer.highwater(tp)
            if end is not None:
                behind += max(0, end - self.positions.get(tp, end))
        self.metrics.signal_feed_lag.set(behind)

    def _go_live_when_caught_up(self) -> None:
        feed, target = self.feed, self._catch_up_to
        if feed.live or target is None:
            return
        if all(self.positions.get(tp, 0) >= end for tp, end in target.items() if end):
            feed.live = True
            log.info("collaborative signals: caught up (%d events learned in %.1f s); learning every"
                     " event as it comes", feed.learned, time.monotonic() - self._started_at)


async def follow_signal_feed(settings: Settings, feed: SignalFeed, metrics: WorkerMetrics) -> None:
    """Feed `feed` from `events`, forever; a broker away is tried again, from where it was."""
    reader = FeedReader(settings, feed, metrics)
    await retry_forever(reader.run, "reading events for the collaborative signals failed")
