"""Feeding the bus and watching it: paced producers (synthetic or dataset) and a topic tail."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from tqdm import tqdm

from streamrec.consumers.cli.escape import printable
from streamrec.models.data.movielens import iter_movielens_events, load_movielens_items
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.stream.messages import Event, Item, Recommendation
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings

PRODUCE_CHUNK = 500  # events sent between two awaits on delivery when unpaced
TOPIC_WAIT_S = 10.0  # how long a reader waits for its topic to appear


async def send_items(producer: EventProducer, items: Sequence[Item]) -> None:
    for item in items:
        await producer.send_item(item)
    await producer.flush()


async def send_paced(
    producer: EventProducer,
    events: Iterable[Event],
    rate: float,
    retime: bool = True,
    total: int | None = None,
    progress: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, float]:
    """Send events at `rate` per second (0 = as fast as possible).

    With `retime`, each event's `ts` becomes the moment it is sent, so a replayed history looks
    live (and end-to-end latency means something); relative order is kept.
    """
    started = time.perf_counter()
    sent = 0
    bar = tqdm(total=total, unit="ev", disable=not progress, file=sys.stderr, desc="produce")
    for event in events:
        if should_stop():
            break
        if rate > 0:
            delay = started + sent / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        if retime:
            event = event.model_copy(update={"ts": time.time()})
        await producer.send_event(event)
        sent += 1
        bar.update(1)
        if rate <= 0 and sent % PRODUCE_CHUNK == 0:
            await producer.flush()
    await producer.flush()
    bar.close()
    elapsed = time.perf_counter() - started
    return {"events": sent, "seconds": round(elapsed, 3), "events_per_s": round(sent / max(elapsed, 1e-9), 1)}


async def produce_synthetic(
    settings: Settings, n_events: int, rate: float, seed: int, with_items: bool = True
) -> dict[str, float]:
    world = SyntheticWorld(seed=seed)
    async with EventProducer(settings) as producer:
        if with_items:
            await send_items(producer, world.items(ts=time.time()))
        # A fresh event-id stream per run, so a second run is not dropped as duplicates.
        run = int(time.time() * 1000)
        events = world.events(n_events, start_ts=time.time(), rate_per_s=max(rate, 1.0), stream=run)
        return await send_paced(producer, events, rate, retime=True, total=n_events)


async def produce_dataset(
    settings: Settings,
    path: Path,
    limit: int | None,
    rate: float,
    keep_timestamps: bool = False,
    with_items: bool = True,
) -> dict[str, float]:
    """MovieLens: movies.csv -> items, ratings.csv -> events (rating >= 4 is a click)."""
    items = load_movielens_items(path, ts=time.time()) if with_items else []
    events: Iterable[Event] = iter_movielens_events(path)
    if limit is not None:
        events = (event for _, event in zip(range(limit), events))
    async with EventProducer(settings) as producer:
        await send_items(producer, items)
        return await send_paced(producer, events, rate, retime=not keep_timestamps, total=limit)


def format_recommendation(rec: Recommendation, titles: dict[str, str] | None = None, shown: int = 3) -> str:
    """One line per list: `user <- first (why) | second | third +N  [version, latency]`."""
    titles = titles or {}
    labels = []
    for position, item in enumerate(rec.items[:shown]):
        label = _shorten(titles.get(item.item_id, item.item_id))
        if position == 0 and item.reason:
            label += f" ({_shorten(item.reason)})"
        labels.append(label)
    more = f" +{len(rec.items) - shown}" if len(rec.items) > shown else ""
    body = " | ".join(labels) if labels else "(nothing to recommend yet)"
    # Ids, reasons and the version come from producers: escaped, never raw to a terminal.
    return printable(f"{rec.user_id} <- {body}{more}  [{rec.model_version}, {rec.latency_ms:.0f} ms]")


def _shorten(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def open_reader(settings: Settings, topic: str, from_beginning: bool) -> AIOKafkaConsumer:
    """A plain consumer with every partition of `topic` assigned (no group join)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        **settings.kafka_client_options(),
    )
    await consumer.start()
    deadline = time.monotonic() + TOPIC_WAIT_S
    partitions = None
    while True:
        await consumer.topics()  # refreshes metadata
        partitions = consumer.partitions_for_topic(topic)
        if partitions or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    if not partitions:
        await consumer.stop()
        raise RuntimeError(f"topic {topic!r} does not exist on {settings.broker}")
    assignment = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assignment)
    if from_beginning:
        await consumer.seek_to_beginning(*assignment)
    else:
        await consumer.seek_to_end(*assignment)
    return consumer


async def tail(
    settings: Settings,
    topic: str,
    from_beginning: bool = False,
    limit: int | None = None,
    timeout_s: float | None = None,
    on_message: Callable[[Any], None] | None = None,
) -> int:
    """Print (or hand to `on_message`) each message of `topic` as it arrives."""
    consumer = await open_reader(settings, topic, from_beginning)
    seen = 0
    deadline = time.monotonic() + timeout_s if timeout_s else None
    try:
        while limit is None or seen < limit:
            if deadline and time.monotonic() > deadline:
                break
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    seen += 1
                    if on_message:
                        on_message(record)
                    else:
                        print(_render(record.value, topic == settings.topics.recommendations), flush=True)
    finally:
        await consumer.stop()
    return seen


def _render(value: bytes, is_recommendation: bool) -> str:
    if is_recommendation:
        try:
            return format_recommendation(Recommendation.model_validate_json(value))
        except ValueError:
            pass
    try:
        return json.dumps(json.loads(value))
    except ValueError:
        return repr(value)
