"""What one fetch costs the broker against the record batches a partition stores.

    python -m streamrec.consumers.tools.broker_probe                       # embedded Tansu
    python -m streamrec.consumers.tools.broker_probe --batches 1000 5000 --records 1 10
    python -m streamrec.consumers.tools.broker_probe --broker kafka://host:9092   # any Kafka

Fills `--partitions` partitions of a fresh topic with record batches of `--records` records
(~`RECORD_BYTES` each, about an event's JSON), one produce request per batch and partition, up
to each count in `--batches` in turn. At each count it times raw Fetch requests (aiokafka's
protocol classes, no consumer in between), `FETCHES` of each, medians:

- **tail**: one partition, from the base offset of its last batch (what a consumer that keeps
  up asks for), with a long wait (`LONG_WAIT_MS`): a fetch that finds data is answered as soon
  as it is read, so this is the time the broker needs to find the batch; with the broker's CPU
  seconds per fetch (embedded broker only: /proc);
- **all tails**: one request for every partition's tail (a consumer assigned them all);
- **empty**: one partition from its end (nothing new), waiting `EMPTY_WAIT_MS`, CPU only;
- **answered within W**: the share of tail fetches, one partition and all partitions in one
  request, that come back *with the batch* when the fetch may wait only W ms (`--waits`).

Why: Tansu 0.6's memory storage (`DynoStore::fetch`) lists every batch object of a partition
on each fetch that starts before its high watermark, and stops listing when the fetch's wait
runs out, the deadline shared by every partition of the request: a listing longer than the
wait returns no batch at all, however often the consumer asks (README, "The embedded
broker's limit"; the figures: docs/worker-speed.md). A fetch that starts at the high
watermark (nothing new) lists nothing. Real Kafka finds a batch through its offset index: the
figures stay flat there.

`hold_seconds` turns the figures into how long a load holds before fetches come back empty.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from streamrec.consumers.tools.bench_report import write_figures
from streamrec.consumers.tools.processes import cpu_seconds
from streamrec.stream.broker import DevBroker, free_port
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics

DEFAULT_BATCHES = (1_000, 5_000, 10_000, 20_000, 40_000)  # batches per partition, in turn
DEFAULT_RECORDS = (1, 10)  # records per batch
DEFAULT_WAITS_MS = (10, 100, 1_000)
DEFAULT_PARTITIONS = 4
RECORD_BYTES = 250
FETCHES = 5  # of each kind at each count: the median is reported
LONG_WAIT_MS = 30_000  # a fetch that finds data answers at once; this only bounds the listing
EMPTY_WAIT_MS = 10
PARTITION_MAX_BYTES = 1_048_576  # aiokafka's max_partition_fetch_bytes
FETCH_MAX_BYTES = 52_428_800  # aiokafka's fetch_max_bytes
SETTLE_EVERY = 5_000  # deliveries awaited at least this often while filling


def _say(text: str, quiet: bool) -> None:
    if not quiet:
        print(f"[broker-probe] {text}", flush=True)


def hold_seconds(batches_per_s: float, wait_ms: float, ms_per_1k_batches: float) -> float:
    """Seconds of load until a consumer's fetch lists more batches than its wait allows: the
    batches one fetch request lists (the partitions it asks for, together: they share the
    wait) grow by `batches_per_s`, and listing 1,000 takes `ms_per_1k_batches`.

    >>> hold_seconds(100.0, 10.0, 1.0)  # 10 ms lists 10k batches, 100 a second: 100 s
    100.0
    """
    return wait_ms / ms_per_1k_batches * 1_000 / max(batches_per_s, 1e-9)


# --- filling -------------------------------------------------------------------------------------
class Filled:
    """What has been produced: per partition, the base offset of its last batch and its end."""

    def __init__(self, partitions: int) -> None:
        self.last_base = [0] * partitions
        self.end = [0] * partitions
        self.batches = [0] * partitions


async def fill(producer: AIOKafkaProducer, topic: str, filled: Filled, up_to: int, records: int) -> float:
    """Produce batches of `records` records into every partition until each holds `up_to`;
    returns the batches per second (all partitions) it took."""
    payload = b"x" * RECORD_BYTES
    started = time.perf_counter()
    produced = 0

    async def one_partition(partition: int) -> int:
        pending: list[asyncio.Future] = []
        count = 0
        while filled.batches[partition] + len(pending) < up_to:
            batch = producer.create_batch()
            for _ in range(records):
                batch.append(key=None, value=payload, timestamp=None)
            batch.close()
            pending.append(await producer.send_batch(batch, topic, partition=partition))
            if len(pending) >= SETTLE_EVERY:
                count += _settle(await asyncio.gather(*pending), filled, partition, records)
                pending = []
        return count + _settle(await asyncio.gather(*pending), filled, partition, records)

    for count in await asyncio.gather(*(one_partition(p) for p in range(len(filled.batches)))):
        produced += count
    return produced / max(time.perf_counter() - started, 1e-9)


def _settle(metadata: Sequence[Any], filled: Filled, partition: int, records: int) -> int:
    for meta in metadata:
        filled.last_base[partition] = max(filled.last_base[partition], meta.offset)
        filled.end[partition] = max(filled.end[partition], meta.offset + records)
    filled.batches[partition] += len(metadata)
    return len(metadata)


# --- fetching ------------------------------------------------------------------------------------
async def fetch(client: AIOKafkaClient, node: int, topic: str, offsets: dict[int, int],
                wait_ms: int) -> tuple[float, dict[int, int]]:
    """One raw Fetch request: (its wall ms, {partition: record batches returned})."""
    request = FetchRequest(wait_ms, 1, FETCH_MAX_BYTES, 0,
                           [(topic, [(p, offset, PARTITION_MAX_BYTES) for p, offset in offsets.items()])])
    started = time.perf_counter()
    response = await client.send(node, request)
    elapsed_ms = (time.perf_counter() - started) * 1000
    returned: dict[int, int] = {}
    for _, partitions in response.topics:
        for partition, _error, _high, *data in partitions:
            records, count = MemoryRecords(data[-1]), 0
            while records.has_next():
                if records.next_batch() is not None:
                    count += 1
            returned[partition] = count
    return elapsed_ms, returned


async def measure(client: AIOKafkaClient, node: int, topic: str, filled: Filled, waits_ms: Sequence[int],
                  broker_pid: int | None) -> dict[str, Any]:
    """The figures at the current fill (see the module docstring)."""
    tails = {p: base for p, base in enumerate(filled.last_base)}
    first = {0: tails[0]}
    figures: dict[str, Any] = {}

    async def timed(offsets: dict[int, int], wait_ms: int) -> tuple[list[float], list[dict[int, int]], float]:
        cpu_before = cpu_seconds(broker_pid)
        times, returned = [], []
        for _ in range(FETCHES):
            elapsed, got = await fetch(client, node, topic, offsets, wait_ms)
            times.append(elapsed)
            returned.append(got)
        cpu_ms = (cpu_seconds(broker_pid) - cpu_before) * 1000 / FETCHES
        return times, returned, cpu_ms

    times, returned, cpu_ms = await timed(first, LONG_WAIT_MS)
    figures["tail_ms"] = round(statistics.median(times), 2)
    figures["tail_cpu_ms"] = round(cpu_ms, 2) if broker_pid else None
    figures["tail_returned"] = all(got.get(0, 0) > 0 for got in returned)
    times, returned, _ = await timed(tails, LONG_WAIT_MS)
    figures["all_tails_ms"] = round(statistics.median(times), 2)
    _, _, cpu_ms = await timed({0: filled.end[0]}, EMPTY_WAIT_MS)
    figures["empty_cpu_ms"] = round(cpu_ms, 2) if broker_pid else None
    answered: dict[str, Any] = {}
    for wait in waits_ms:
        _, one, _ = await timed(first, wait)
        _, every, _ = await timed(tails, wait)
        answered[str(wait)] = {
            "one_partition": round(sum(got.get(0, 0) > 0 for got in one) / FETCHES, 2),
            "all_partitions": round(statistics.mean(sum(n > 0 for n in got.values()) for got in every)
                                    / len(tails), 2),
        }
    figures["answered_within_ms"] = answered
    return figures


async def idle_answer_ms(client: AIOKafkaClient, node: int, producer: AIOKafkaProducer, topic: str,
                         filled: Filled, wait_ms: int, records: int) -> float:
    """A fetch from partition 0's end (nothing new) that may wait `wait_ms`, and a batch produced
    a tenth of the wait later: ms from that batch's acknowledgement to the fetch's answer.
    Kafka answers as soon as the data is there (~0); Tansu 0.6 looks again after half the wait
    left, then half the rest, ... (so up to half the wait)."""
    pending = asyncio.create_task(fetch(client, node, topic, {0: filled.end[0]}, wait_ms))
    await asyncio.sleep(wait_ms / 10_000)
    batch = producer.create_batch()
    for _ in range(records):
        batch.append(key=None, value=b"x" * RECORD_BYTES, timestamp=None)
    batch.close()
    meta = await (await producer.send_batch(batch, topic, partition=0))
    acked = time.perf_counter()
    _settle([meta], filled, 0, records)
    await pending
    return round((time.perf_counter() - acked) * 1000, 1)


# --- a running system's topics (the soak) -------------------------------------------------------
class TopicProbe:
    """Times a fetch of the last record of every partition of `topics`, one request per topic
    (what a consumer that keeps up pays: on Tansu, the listing of every stored batch), and
    counts the record batches a topic holds by reading it whole.

        async with TopicProbe(settings, [settings.topics.events]) as probe:
            await probe.tail_fetch_ms()      # {"events": 12.3}
            await probe.count_batches("events")
    """

    def __init__(self, settings: Settings, topics: Sequence[str], wait_ms: int = 5_000) -> None:
        self.settings = settings
        self.topics = list(topics)
        self.wait_ms = wait_ms
        self._client = AIOKafkaClient(bootstrap_servers=settings.bootstrap_servers,
                                      **settings.kafka_client_options())
        self._consumer: Any = None

    async def __aenter__(self) -> TopicProbe:
        from aiokafka import AIOKafkaConsumer

        await self._client.bootstrap()
        for topic in self.topics:
            self._client.add_topic(topic)
        await self._client.force_metadata_update()
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, group_id=None,
                                          enable_auto_commit=False, **self.settings.kafka_client_options())
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        await self._client.close()

    def _partitions(self, topic: str) -> list[TopicPartition]:
        return [TopicPartition(topic, p) for p in sorted(self._client.cluster.partitions_for_topic(topic) or ())]

    async def tail_fetch_ms(self) -> dict[str, float | None]:
        """{topic: ms of one fetch of every partition's last record}; None for an empty topic.
        (The end offsets come from the broker: Tansu's is its last batch's base + 1, so the
        fetch starts at that batch; Kafka's, one past the last record.)"""
        figures: dict[str, float | None] = {}
        for topic in self.topics:
            tps = self._partitions(topic)
            ends = await self._consumer.end_offsets(tps) if tps else {}
            offsets = {tp.partition: end - 1 for tp, end in ends.items() if end > 0}
            if not offsets:
                figures[topic] = None
                continue
            node = self._client.cluster.leader_for_partition(tps[0])
            elapsed, _ = await fetch(self._client, node, topic, offsets, self.wait_ms)
            figures[topic] = round(elapsed, 1)
        return figures

    async def count_batches(self, topic: str) -> dict[int, dict[str, int]]:
        """{partition: {"batches": n, "records": m}} of `topic`, read from the beginning."""
        counts: dict[int, dict[str, int]] = {}
        for tp in self._partitions(topic):
            node = self._client.cluster.leader_for_partition(tp)
            end = (await self._consumer.end_offsets([tp]))[tp]
            offset, batches, records = 0, 0, 0
            while offset < end:
                request = FetchRequest(self.wait_ms, 1, FETCH_MAX_BYTES, 0,
                                       [(topic, [(tp.partition, offset, 4 * PARTITION_MAX_BYTES)])])
                response = await self._client.send(node, request)
                data = response.topics[0][1][0][-1]
                memory, moved = MemoryRecords(data), False
                while memory.has_next():
                    batch = memory.next_batch()
                    if batch is None or batch.next_offset <= offset:
                        continue
                    batches += 1
                    records += batch.next_offset - max(batch.base_offset, offset)
                    offset, moved = batch.next_offset, True
                if not moved:
                    break
            counts[tp.partition] = {"batches": batches, "records": records}
        return counts


# --- the run -------------------------------------------------------------------------------------
async def probe(settings: Settings, batches: Sequence[int], records: int, partitions: int,
                waits_ms: Sequence[int], broker_pid: int | None, quiet: bool) -> list[dict[str, Any]]:
    topic = f"{settings.topic_prefix}probe-r{records}-{time.time_ns() % 10**9}"
    await ensure_topics(settings, [topic], partitions=partitions)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=0,
                                **settings.kafka_client_options())
    client = AIOKafkaClient(bootstrap_servers=settings.bootstrap_servers, **settings.kafka_client_options())
    await producer.start()
    await client.bootstrap()
    rows = []
    try:
        client.add_topic(topic)
        await client.force_metadata_update()
        node = client.cluster.leader_for_partition(TopicPartition(topic, 0))
        filled = Filled(partitions)
        await fill(producer, topic, filled, 1, records)
        idle = {str(wait): await idle_answer_ms(client, node, producer, topic, filled, wait, records)
                for wait in waits_ms}
        _say(f"new data reaching an empty fetch a tenth into its wait was answered after {idle} ms (by wait)", quiet)
        for count in sorted(batches):
            produce_rate = await fill(producer, topic, filled, count, records)
            row = {"records_per_batch": records, "batches_per_partition": count, "partitions": partitions,
                   "produce_batches_per_s": round(produce_rate, 1), "idle_answer_ms": idle,
                   **await measure(client, node, topic, filled, waits_ms, broker_pid)}
            rows.append(row)
            _say(f"{records} record(s) a batch, {count:,} batches a partition: tail fetch {row['tail_ms']} ms "
                 f"(broker CPU {row['tail_cpu_ms']} ms), all {partitions} tails {row['all_tails_ms']} ms, "
                 f"answered within {waits_ms[0]} ms: {row['answered_within_ms'][str(waits_ms[0])]}", quiet)
    finally:
        await producer.stop()
        await client.close()
    return rows


def ms_per_1k_batches(rows: Sequence[dict[str, Any]]) -> float | None:
    """Least-squares slope of the tail fetch's time over the batches stored (ms per 1,000).

    >>> ms_per_1k_batches([{"batches_per_partition": 1000, "tail_ms": 2.0},
    ...                    {"batches_per_partition": 3000, "tail_ms": 4.0}])
    1.0
    """
    points = [(row["batches_per_partition"], row["tail_ms"]) for row in rows]
    if len(points) < 2:
        return None
    mean_x = statistics.mean(x for x, _ in points)
    mean_y = statistics.mean(y for _, y in points)
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return None
    return round(sum((x - mean_x) * (y - mean_y) for x, y in points) / var * 1_000, 3)


def render_markdown(results: dict[str, Any]) -> str:
    waits = results["settings"]["waits_ms"]
    lines = [
        "| records a batch | batches a partition | tail fetch ms | broker CPU ms a fetch | "
        f"all {results['settings']['partitions']} tails ms | empty fetch CPU ms | "
        + " | ".join(f"answered within {w} ms (one / all)" for w in waits) + " | produce batches/s |",
        "|---|---|---|---|---|---|" + "---|" * len(waits) + "---|",
    ]
    for row in results["rows"]:
        answered = " | ".join(
            f"{row['answered_within_ms'][str(w)]['one_partition']:.0%} / "
            f"{row['answered_within_ms'][str(w)]['all_partitions']:.0%}" for w in waits)
        lines.append(
            f"| {row['records_per_batch']} | {row['batches_per_partition']:,} | {row['tail_ms']:.1f} | "
            f"{_num(row['tail_cpu_ms'])} | {row['all_tails_ms']:.1f} | {_num(row['empty_cpu_ms'])} | "
            f"{answered} | {row['produce_batches_per_s']:,.0f} |")
    for records, slope in results.get("ms_per_1k_batches", {}).items():
        lines.append(f"\n{records} record(s) a batch: a tail fetch takes {slope} ms more per 1,000 batches stored.")
    slopes = [slope for slope in results.get("ms_per_1k_batches", {}).values() if slope]
    if slopes:
        slope = max(slopes)
        lines.append("\nSo a fetch request lists within its wait at most "
                     + ", ".join(f"~{wait / slope:,.0f}k batches at {wait} ms" for wait in waits)
                     + "; at 60 batches a second into the partitions a consumer reads, that is "
                     + ", ".join(f"{hold_seconds(60, wait, slope) / 60:,.0f} min" for wait in waits) + ".")
    if results["rows"]:
        idle = results["rows"][0]["idle_answer_ms"]
        lines.append("\nAn empty fetch (nothing new) that data reaches a tenth into its wait answers "
                     + ", ".join(f"{ms} ms after the data at a {wait} ms wait" for wait, ms in idle.items()) + ".")
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def run_probe(batches: Sequence[int] = DEFAULT_BATCHES, records: Sequence[int] = DEFAULT_RECORDS,
              partitions: int = DEFAULT_PARTITIONS, waits_ms: Sequence[int] = DEFAULT_WAITS_MS,
              broker_url: str | None = None, out: Path | None = None, markdown: Path | None = None,
              quiet: bool = False) -> dict[str, Any]:
    """The probe on a fresh embedded Tansu for each records-per-batch value (or on `broker_url`,
    topics with a fresh name each); returns the figures and writes them (`out`, `markdown`)."""
    if not batches or min(batches) < 1 or not records or min(records) < 1 or partitions < 1:
        raise ValueError("batches, records and partitions must be positive")
    results: dict[str, Any] = {
        "settings": {"batches": list(batches), "records": list(records), "partitions": partitions,
                     "waits_ms": list(waits_ms), "record_bytes": RECORD_BYTES, "fetches": FETCHES,
                     "broker": broker_url or "embedded"},
        "rows": [],
    }
    for per_batch in records:
        broker = DevBroker(port=free_port()) if broker_url is None else None
        try:
            if broker is not None:
                broker.start()
            settings = Settings(broker=broker_url or broker.url)  # type: ignore[union-attr]
            pid = broker.process.pid if broker is not None and broker.process is not None else None
            results["rows"] += asyncio.run(probe(settings, batches, per_batch, partitions, waits_ms, pid, quiet))
        finally:
            if broker is not None:
                broker.stop()
    results["ms_per_1k_batches"] = {
        str(per_batch): ms_per_1k_batches([r for r in results["rows"] if r["records_per_batch"] == per_batch])
        for per_batch in records
    }
    text = render_markdown(results)
    if not quiet:
        print("\n" + text)
    if out is not None:
        write_figures(out, results)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES),
                        help="record batches per partition to measure at, in turn")
    parser.add_argument("--records", type=int, nargs="+", default=list(DEFAULT_RECORDS),
                        help="records per batch (a fresh broker for each)")
    parser.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    parser.add_argument("--waits", type=int, nargs="+", default=list(DEFAULT_WAITS_MS),
                        help="fetch waits (ms) to check the tail fetch against")
    parser.add_argument("--broker", default=None, help="a running broker (kafka://host:port) instead of Tansu")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here")
    args = parser.parse_args(argv)
    try:
        run_probe(args.batches, args.records, args.partitions, args.waits, args.broker, args.out, args.markdown)
    except ValueError as exc:
        print(f"broker probe: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
