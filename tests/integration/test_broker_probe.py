"""The broker probe (`consumers/tools/broker_probe.py`) on the session's Tansu broker: it fills
partitions with record batches, times fetches at their tails, and counts a topic's batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from streamrec.consumers.tools.broker_probe import TopicProbe, run_probe
from streamrec.stream.broker import DevBroker
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics

pytestmark = pytest.mark.integration


def test_the_probe_times_tail_fetches_at_each_count_of_batches(broker: DevBroker, tmp_path: Path) -> None:
    out, markdown = tmp_path / "probe.json", tmp_path / "probe.md"
    results = run_probe(batches=[60, 20], records=[1, 3], partitions=2, waits_ms=[10, 2_000],
                        broker_url=broker.url, out=out, markdown=markdown, quiet=True)

    rows = results["rows"]
    assert [(r["records_per_batch"], r["batches_per_partition"]) for r in rows] == [(1, 20), (1, 60), (3, 20), (3, 60)]
    for row in rows:
        assert row["tail_returned"], "a tail fetch with a long wait returns the last batch"
        assert row["tail_ms"] > 0 and row["all_tails_ms"] > 0 and row["produce_batches_per_s"] > 0
        assert row["answered_within_ms"]["2000"] == {"one_partition": 1.0, "all_partitions": 1.0}
        assert row["tail_cpu_ms"] is None  # a broker given by URL: its CPU is not ours to read
        # data reaching an empty fetch is answered within the fetch's wait (Tansu: by half of it)
        assert set(row["idle_answer_ms"]) == {"10", "2000"} and row["idle_answer_ms"]["2000"] < 2_000
    assert set(results["ms_per_1k_batches"]) == {"1", "3"}
    assert json.loads(out.read_text())["rows"] == rows
    assert "| records a batch | batches a partition | tail fetch ms |" in markdown.read_text()


async def test_the_topic_probe_counts_the_batches_a_topic_holds(settings: Settings) -> None:
    topic = settings.topics.events
    await ensure_topics(settings, [topic], partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        for partition, sizes in ((0, [1, 4, 2]), (1, [5])):
            for size in sizes:
                batch = producer.create_batch()
                for n in range(size):
                    batch.append(key=None, value=f"r{n}".encode(), timestamp=None)
                batch.close()
                await (await producer.send_batch(batch, topic, partition=partition))
    finally:
        await producer.stop()

    async with TopicProbe(settings, [topic]) as probe:
        assert await probe.count_batches(topic) == {0: {"batches": 3, "records": 7}, 1: {"batches": 1, "records": 5}}
        fetched = await probe.tail_fetch_ms()
    assert fetched[topic] is not None and fetched[topic] > 0
