"""End to end: a real worker's one /metrics carries our gauges and Faust's sensor.

The consumer lag is read from the running Faust consumer (the broker's end offsets against
Faust's committed ones): once the worker has processed every event, every input partition it
owns must be reported, at 0. A wrong committed offset would show as a lag of everything.
"""

from __future__ import annotations

import time

import pytest

from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics
from tests.support.metrics import metric_sum, scrape
from tests.support.waiting import OUTPUT_WAIT_S, wait_until
from tests.support.workers import Worker, index_catalogue

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

SAMPLE_WAIT_S = 30.0  # the worker samples lag and catalogue size every 5 s


def lag_series(metrics: dict[str, float]) -> dict[tuple[str, str], float]:
    out = {}
    for key, value in metrics.items():
        if key.startswith("streamrec_consumer_lag{"):
            labels = dict(part.split("=", 1) for part in key[len("streamrec_consumer_lag{") : -1].split(","))
            out[(labels["topic"].strip('"'), labels["partition"].strip('"'))] = value
    return out


async def test_lag_catalogue_size_and_faust_sensor_on_the_workers_metrics(
    e2e_settings: Settings, worker: Worker
) -> None:
    settings = e2e_settings
    world = SyntheticWorld(seed=5, n_items=60, n_users=10, n_categories=3)
    await ensure_topics(settings)
    async with EventProducer(settings) as producer:
        items = await index_catalogue(producer, world, worker)
        now = time.time()
        events = [e.model_copy(update={"ts": now + i * 0.001}) for i, e in enumerate(world.events(200, start_ts=now))]
        for event in events:
            await producer.send_event(event)
        await producer.flush()

    owned = {
        (topic, str(partition))
        for topic in (settings.topics.events, settings.topics.events_by_user)
        for partition in range(settings.partitions)
    }

    def settled() -> bool:
        worker.alive()
        metrics = scrape(settings.metrics_port)
        accepted = metric_sum(metrics, "streamrec_events_total", 'outcome="accepted"')
        lags = lag_series(metrics)
        return (
            accepted >= len(events)
            and metric_sum(metrics, "streamrec_recommendations_total") > 0
            and set(lags) == owned
            and not any(lags.values())
            and metrics.get("streamrec_catalogue_items") == len(items)
        )

    await wait_until(settled, OUTPUT_WAIT_S + SAMPLE_WAIT_S, "lag 0 on every owned partition and the catalogue size")
    metrics = scrape(settings.metrics_port)
    # Faust's sensor, on the same page: every event was read (keyed by user by the SDK: served
    # in one hop, never re-keyed to events.by-user)
    assert metrics["faust_messages_received_total"] >= len(events)
    assert metrics["streamrec_one_hop"] == 1
    assert metrics["streamrec_one_hop_events_total"] == len(events)
    assert metric_sum(metrics, "streamrec_rekeyed_events_total") == 0
    assert metric_sum(metrics, "faust_topic_partition_end_offset", settings.topics.events) >= len(events)
    assert metrics["streamrec_model_info{version=\"content-v1\"}"] == 1
    assert metrics["streamrec_model_created_timestamp_seconds"] == 0  # the content scorer has no age
