"""Readers of the bus: broadcast readers, and `LatestLists`, the apps' view of `recommendations`.

Broadcast readers: a topic read whole by every process that opens it, without a group.

A consumer group splits a topic's partitions between its members; some topics must instead
reach every process: `model-updates` (every worker swaps to every version, the trainer
fine-tunes from the one served) and, for a worker with an embedded index, `items` (each
worker's index holds the whole catalogue). A broadcast reader assigns itself every
partition, starts at the beginning and never commits: a restarted process reads the whole
history again, as a new one does.

Used by the worker (`consumers/worker`) and the trainer (`consumers/trainer`) alike, so it
lives here, on the bus side, and neither imports the other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from streamrec.stream.messages import Recommendation
from streamrec.stream.offsets import log_end_offsets
from streamrec.stream.settings import Settings

METADATA_TIMEOUT_S = 30.0  # a topic with no partitions after this long is an error (s)


async def open_broadcast_reader(settings: Settings, topics: Sequence[str]) -> tuple[Any, list[Any]]:
    """A started group-less consumer assigned every partition of `topics`, at the beginning,
    and those partitions: every process that opens one reads every message."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # imported here: tests replace it

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        **settings.kafka_client_options(),
    )
    try:  # a start that fails (broker away) is stopped too: no "Unclosed AIOKafkaConsumer" per retry
        await consumer.start()
        tps = [
            TopicPartition(topic, p) for topic in topics for p in await topic_partitions(consumer, topic)
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
    except BaseException:
        await consumer.stop()
        raise
    return consumer, tps


async def seek_back(settings: Settings, consumer: Any, tps: Sequence[Any], records: int) -> tuple[dict, dict]:
    """Start each of `tps` `records` messages before its end, all partitions together (split
    evenly, rounded up), or at its beginning where it holds fewer: (the offsets chosen, the
    ends). The ends are read from the log (`log_end_offsets`: Tansu reports them short)."""
    if not tps:
        return {}, {}
    per_partition = -(-records // len(tps))
    begins = await consumer.beginning_offsets(tps)
    ends = {tp: end or 0 for tp, end in (await log_end_offsets(settings, await consumer.end_offsets(tps))).items()}
    starts = {tp: max(begins[tp] or 0, ends[tp] - per_partition) for tp in tps}
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    return starts, ends


async def topic_partitions(consumer: Any, topic: str, timeout_s: float = METADATA_TIMEOUT_S) -> list[int]:
    """The topic's partitions, waiting for metadata (the worker creates the topic at start)."""
    deadline = time.monotonic() + timeout_s
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return sorted(partitions)
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic} has no partitions after {timeout_s:.0f} s")
        await consumer.topics()  # refreshes the cluster metadata
        await asyncio.sleep(0.5)


async def read_to_end(consumer: Any, tps: Sequence[Any]) -> list[Any]:
    """The records up to the end offsets seen now (a topic's history), in order per partition."""
    ends = await consumer.end_offsets(tps)
    records: list[Any] = []
    while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
        batch = await consumer.getmany(timeout_ms=500)
        for partition_records in batch.values():
            records.extend(partition_records)
    return records


async def broadcast_batches(
    settings: Settings, topic: str, max_records: int, wait_s: float
) -> AsyncIterator[list[Any]]:
    """Every record of `topic`, from the beginning, forever, in batches of at most
    `max_records` (each waited for at most `wait_s`); empty batches are not yielded."""
    consumer, _ = await open_broadcast_reader(settings, [topic])
    try:
        while True:
            fetched = await consumer.getmany(timeout_ms=int(wait_s * 1000), max_records=max_records)
            batch = [record for records in fetched.values() for record in records]
            if batch:
                yield batch
    finally:
        await consumer.stop()


class LatestLists:
    """Each user's latest list from `recommendations`, by the contract's order rule.

    Delivery is at least once: after a restart or a rebalance a list can come twice, or an
    older list after a newer one. `offer` keeps a list only if it is newer than the one held
    (`Recommendation.is_newer_than`: a greater `(sequence, trigger_ts)`), so an app showing
    `latest[user]` never goes back to an older list.

    >>> def made(n):
    ...     return Recommendation(user_id="u1", items=[], model_version="v1", trigger_event_id=f"e{n}",
    ...                           generated_at=float(n), latency_ms=0.0, sequence=n, trigger_ts=float(n))
    >>> latest = LatestLists()
    >>> [latest.offer(made(n)) for n in (1, 3, 2, 3)]  # 2 arrived late, 3 twice
    [True, True, False, False]
    >>> latest["u1"].trigger_event_id, latest.stale, latest.repeated
    ('e3', 1, 1)
    >>> latest.offer_bytes(made(4).to_bytes()), len(latest)
    (True, 1)
    """

    def __init__(self) -> None:
        self.lists: dict[str, Recommendation] = {}  # user id -> the latest list
        self.stale = 0  # lists offered that were older than the one held (ignored)
        self.repeated = 0  # lists offered again, with the key of the one held (ignored)

    def offer(self, recommendation: Recommendation) -> bool:
        """Keep `recommendation` if it is the user's newest so far; True when it was kept."""
        held = self.lists.get(recommendation.user_id)
        if recommendation.is_newer_than(held):
            self.lists[recommendation.user_id] = recommendation
            return True
        if held is not None and held.order_key() == recommendation.order_key():
            self.repeated += 1
        else:
            self.stale += 1
        return False

    def offer_bytes(self, value: bytes) -> bool:
        """`offer` for a raw `recommendations` value (JSON; ValueError if it is not a list)."""
        return self.offer(Recommendation.model_validate_json(value))

    def __getitem__(self, user_id: str) -> Recommendation:
        return self.lists[user_id]

    def get(self, user_id: str) -> Recommendation | None:
        return self.lists.get(user_id)

    def __len__(self) -> int:
        return len(self.lists)
