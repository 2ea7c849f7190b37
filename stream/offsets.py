"""End offsets read from the log itself, for brokers whose reported end offset falls short.

Kafka's end offset (high watermark) of a partition is its last offset + 1. Tansu 0.6 reports
the *last batch's base offset* + 1 instead, so a reader that stops at the reported end misses
the rest of the last batch. Faust's table recovery is such a reader: a worker that takes over
a partition (a restart, a rebalance) would lose the last state updates written to it.

`log_end_offsets` checks each reported end by reading the batch that holds offset `end - 1`:
the end is one past the last record found there. On a broker that reports correctly this
confirms the figure; it costs one short fetch per non-empty partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TypeVar

from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0  # longest wait for the last batches; a partition not read keeps its figure

TP = TypeVar("TP")  # a (topic, partition) named tuple: Faust's TP or aiokafka's TopicPartition


def corrected_end(reported: int, fetched_offsets: list[int]) -> int:
    """The end offset given the reported one and the offsets read from `reported - 1` on.

    >>> corrected_end(6, [5, 6, 7])  # Tansu: 6 is the last batch's base + 1
    8
    >>> corrected_end(8, [7])  # Kafka: already right
    8
    >>> corrected_end(8, [])  # nothing read in time: keep the broker's figure
    8
    """
    return max([reported, *(offset + 1 for offset in fetched_offsets)])


async def log_end_offsets(settings: Settings, reported: Mapping[TP, int | None]) -> dict[TP, int | None]:
    """`reported` end offsets, each raised to one past the last record actually in the log."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    wanted = {
        TopicPartition(tp.topic, tp.partition): tp  # type: ignore[attr-defined]
        for tp, end in reported.items()
        if end  # None or 0: an empty partition, nothing to check
    }
    ends = dict(reported)
    if not wanted:
        return ends
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        **settings.kafka_client_options(),
    )
    await consumer.start()
    try:
        consumer.assign(list(wanted))
        for tp, original in wanted.items():
            consumer.seek(tp, int(reported[original]) - 1)  # type: ignore[arg-type]
        pending = dict(wanted)
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while pending and time.monotonic() < deadline:
            fetched = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in fetched.items():
                if records and tp in pending:
                    original = pending.pop(tp)
                    ends[original] = corrected_end(int(reported[original]), [r.offset for r in records])  # type: ignore[arg-type]
        if pending:
            log.warning("could not read the last batch of %s; keeping the reported end", sorted(pending))
    finally:
        await consumer.stop()
    short = {tp: (reported[tp], end) for tp, end in ends.items() if end != reported[tp]}
    if short:
        log.info("end offsets read from the log (reported -> actual): %s", short)
    return ends

