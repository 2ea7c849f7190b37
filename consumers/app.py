"""The Faust app factory: nothing is built at import time; `create_app(settings)` builds it all."""

from __future__ import annotations

import logging
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.web import drivers as web_drivers

from streamrec.consumers.metrics import WorkerMetrics
from streamrec.models.pipeline import Pipeline
from streamrec.models.serving import RankerScorer
from streamrec.stream.offsets import log_end_offsets
from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)


def _transport_for(settings: Settings) -> type[faust_aiokafka.Transport]:
    """Faust's aiokafka driver, with two fixes for brokers other than Apache Kafka.

    - Faust hard-codes `fetch_max_wait_ms=1500`; this makes it a setting. Real Kafka answers a
      fetch as soon as data is there, but some brokers (Tansu) only answer when the wait runs
      out, which would add up to 1.5 s per hop.
    - Table recovery reads a changelog up to its reported end offset; where a broker reports
      it short (Tansu), the last state updates would be lost in a restart or a rebalance. The
      ends are checked against the log (`streamrec.stream.offsets`).
    """
    fetch_max_wait_ms = settings.fetch_max_wait_ms

    class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            if hasattr(consumer, "_fetch_max_wait_ms"):
                consumer._fetch_max_wait_ms = fetch_max_wait_ms
            else:  # pragma: no cover - a future aiokafka renamed it
                log.warning("cannot set fetch_max_wait_ms on this aiokafka version")
            return consumer

        async def _highwaters(self, partitions: list[TP]) -> Any:
            reported = await super()._highwaters(partitions)
            if self.consumer.in_transaction:
                return reported  # last stable offsets: not the figure corrected here
            return await log_end_offsets(settings, reported)

    class Consumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> ConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

        def _new_offset(self, tp: TP) -> int | None:
            # Faust commits past one never-acked message at the head of a partition (its
            # `min(acked) - committed > 1` check); around a rebalance, a message fetched
            # before the seek to committed offsets can be dropped that way, unprocessed.
            # Refuse that commit and read the partition again from the committed offset.
            committed = self._committed_offset[tp]
            rewind = head_gap(self._acked[tp], committed, self._rewound.get(tp))
            if rewind is not None:
                log.warning(
                    "offset %s of %s was never processed; reading again from there", rewind, tp
                )
                self._rewound[tp] = rewind
                self._thread.seek(tp, rewind)
                self._read_offset[tp] = rewind or None
                return None
            return super()._new_offset(tp)

        @property
        def _rewound(self) -> dict[TP, int]:
            # committed offset -> already rewound to it once (set lazily: Faust's __init__ is long)
            if not hasattr(self, "_rewound_offsets"):
                self._rewound_offsets: dict[TP, int] = {}
            return self._rewound_offsets

    class Transport(faust_aiokafka.Transport):
        pass

    Transport.Consumer = Consumer
    return Transport


def head_gap(acked: list[int], committed: int | None, rewound_to: int | None) -> int | None:
    """The offset to read a partition again from, when a commit would skip an unprocessed one.

    `committed` is the next offset to read (Kafka's meaning); `acked` the offsets processed
    since. If the lowest acked offset lies beyond `committed`, the message at `committed` was
    never processed: the partition is read again from there. Once only per committed offset:
    if it still does not show up, the offset does not exist (compaction, transaction marker)
    and Faust's own rule applies.

    >>> head_gap([11, 12], committed=10, rewound_to=None)
    10
    >>> head_gap([10, 11], committed=10, rewound_to=None) is None
    True
    >>> head_gap([11, 12], committed=10, rewound_to=10) is None
    True
    """
    if not acked or committed is None or min(acked) <= committed or rewound_to == committed:
        return None
    return committed


class StreamrecApp(faust.App):
    """A Faust app whose transport honours `Settings` (`_transport_for`)."""

    def __init__(self, *args: Any, settings: Settings, **kwargs: Any) -> None:
        self.settings = settings
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> Any:
        transport_class = _transport_for(self.settings)
        return transport_class(self.conf.broker_consumer, self)

    def _new_web(self) -> Any:
        # "/" is the live page (consumers/views.py), not Faust's production index.
        driver = web_drivers.by_url(self.conf.web)
        web_class = type("StreamrecWeb", (driver,), {"production_blueprints": []})
        return web_class(self)


def _credentials(settings: Settings) -> Any:
    options = settings.kafka_client_options()
    if settings.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            mechanism=settings.sasl_mechanism,
            ssl_context=options.get("ssl_context"),
        )
    if settings.security_protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return None


def create_app(settings: Settings, pipeline: Pipeline | None = None) -> faust.App:
    """Build the worker app: topics, the user-state table, metrics views and the three agents."""
    from streamrec.consumers.agents import register_agents

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = StreamrecApp(
        settings.app_id,
        settings=settings,
        broker=settings.broker,
        broker_credentials=_credentials(settings),
        store=settings.table_store,
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        consumer_auto_offset_reset="earliest",
        web_enabled=settings.metrics_port > 0,
        web_port=settings.metrics_port or 6066,
        web_bind=settings.metrics_host,
        web_host=settings.metrics_host,
        canonical_url=settings.http_advertised_url,  # None: http://<web_host>:<web_port>
        web_router_enabled=False,  # the worker serves its own API (consumers/views.py) and
        web_tables_enabled=False,  # no raw table dumps
        producer_acks=-1,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 4,
        loghandlers=[],
    )
    pipeline = pipeline or Pipeline.from_settings(settings)
    metrics = WorkerMetrics()
    metrics.install_faust_sensor(app)
    scorer = pipeline.recommender.scorer
    created = scorer.manifest.created.timestamp() if isinstance(scorer, RankerScorer) else None
    metrics.set_model_version(scorer.version, created)
    register_agents(app, settings, pipeline, metrics)
    return app
