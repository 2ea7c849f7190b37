"""The worker's broadcast reader of `events` on a real broker: it starts some events back
(`STREAMREC_SIGNALS_LOOKBACK_EVENTS`), goes live once caught up, follows new events (past one
that fails, and past input the contract refuses), and a read broken off resumes where it was
(nothing learned twice)."""

from __future__ import annotations

import asyncio
import json
import time

from streamrec.consumers.worker.metrics import WorkerMetrics
from streamrec.consumers.worker.signal_feed import FeedReader
from streamrec.models.core.collaborative import CollaborativeSignals
from streamrec.models.core.signal_feed import SignalFeed
from streamrec.stream.messages import Event
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics
from tests.support.events import event, event_fields
from tests.support.waiting import wait_until

WAIT_S = 30.0


class PoisonedFeed(SignalFeed):
    """A planted fault: learning the item "poison" raises (a bug one event reaches)."""

    def learn(self, event: Event) -> bool:
        if event.item_id == "poison":
            raise RuntimeError("planted fault")
        return super().learn(event)


async def _forward(settings: Settings, events: list[Event], raw: tuple[bytes, ...] = ()) -> None:
    """Produce events to `events` keyed by user, as the SDK does, and `raw` values unkeyed."""
    async with EventProducer(settings) as producer:
        for e in events:
            await producer.send_event(e)
        for value in raw:
            await producer.send_raw(settings.topics.events, value)
        await producer.flush()


async def test_the_reader_starts_back_goes_live_follows_and_resumes(settings: Settings) -> None:
    settings = settings.model_copy(update={"signals_lookback_events": 100})
    await ensure_topics(settings)
    history = [event(f"u{n % 7}", f"i{n % 11}", n) for n in range(400)]
    await _forward(settings, history)

    feed, metrics = PoisonedFeed(CollaborativeSignals()), WorkerMetrics()
    reader = FeedReader(settings, feed, metrics)
    started = time.monotonic()
    task = asyncio.create_task(reader.run())
    try:
        await wait_until(lambda: feed.live, WAIT_S, "the reader to catch up")
        print(f"caught up with {feed.learned} events in {time.monotonic() - started:.1f} s")
        back = feed.learned
        assert back == 100, "the last 50 events of each partition (the lookback, split evenly)"

        new = [event("u-new", "i1", 1_000), event("u-bad", "poison", 1_001), event("u-new", "i2", 1_002)]
        invalid = (b'{"event_id": "broken', json.dumps(event_fields("u-new", "i9", 1_001, kind="like")).encode())
        await _forward(settings, new, raw=invalid)
        await wait_until(lambda: feed.learned == back + 2, WAIT_S, "new events to be learned, past a failing one")
        sample = metrics.registry.get_sample_value
        await wait_until(lambda: sample("streamrec_signal_feed_events_total", {"outcome": "invalid"}) == 2,
                         WAIT_S, "input the contract refuses to be skipped and counted")
        assert sample("streamrec_signal_feed_events_total", {"outcome": "failed"}) == 1
        assert feed.user_items("u-new") == ["i1", "i2"]
        assert feed.learn(event("u-new", "i2", 1_002)) is False  # the agent's path: counted once
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    # A broken read resumes from where it was: the lookback is not read again.
    await _forward(settings, [event("u-new", "i3", 1_003)])
    task = asyncio.create_task(reader.run())
    try:
        await wait_until(lambda: feed.learned == back + 3, WAIT_S, "the reader to resume")
        await asyncio.sleep(1.0)  # a fetch or two more: nothing else comes
        assert feed.learned == back + 3 and feed.duplicates == 1
        sample = metrics.registry.get_sample_value
        assert sample("streamrec_signal_feed_events_total", {"outcome": "learned"}) == back + 3
        assert sample("streamrec_signal_feed_events_total", {"outcome": "duplicate"}) == 1
        assert sample("streamrec_signal_feed_lag") == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
