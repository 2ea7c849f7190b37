"""The Faust app factory: nothing is built at import time; `create_app(settings)` builds it all."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import faust
from faust.web import drivers as web_drivers

from streamrec.consumers.worker import log_filters
from streamrec.consumers.worker.batching import BatchingStream
from streamrec.consumers.worker.metrics import WorkerMetrics
from streamrec.consumers.worker.tables import DeliveredTable
from streamrec.consumers.worker.transport import transport_for
from streamrec.models.core.pipeline import Pipeline
from streamrec.models.learning.serving import RankerScorer
from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)


class StreamrecApp(faust.App):
    """A Faust app whose transport honours `Settings` (`transport_for`)."""

    def __init__(self, *args: Any, settings: Settings, **kwargs: Any) -> None:
        self.settings = settings
        super().__init__(*args, **kwargs)

    async def on_stop(self) -> None:
        """Stop gracefully (commit, flush, leave the group), but within `stop_timeout_s`: with
        the broker away each step would wait out its own timeouts (a minute and more), so
        past the deadline the process ends as a crash would, losing nothing (offsets not
        committed are read again, tables recover from their changelogs)."""
        _exit_after(self.settings.stop_timeout_s)
        await super().on_stop()

    def _new_transport(self) -> Any:
        transport_class = transport_for(self.settings)
        return transport_class(self.conf.broker_consumer, self)

    def _new_web(self) -> Any:
        # "/" is the live page (consumers/worker/views.py), not Faust's production index.
        driver = web_drivers.by_url(self.conf.web)
        web_class = type("StreamrecWeb", (driver,), {"production_blueprints": []})
        return web_class(self)


def _exit_after(timeout_s: float) -> None:
    def give_up() -> None:
        log.warning("the stop took over %.0f s (is the broker away?): ending the process now", timeout_s)
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(timeout_s, give_up)
    timer.daemon = True  # a stop that finishes in time ends the process, and the timer with it
    timer.start()


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
    from streamrec.consumers.worker.agents import register_agents

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_filters.install(settings.broker)  # no log floods from one client or one broker outage
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
        web_router_enabled=False,  # the worker serves its own API (consumers/worker/views.py) and
        web_tables_enabled=False,  # no raw table dumps
        producer_acks=-1,
        # Faust lingers 0 ms by default: one record batch per list, and the broker (Tansu's
        # memory storage lists every stored batch on each fetch) slows as they pile up.
        producer_linger=settings.producer_linger_ms / 1000,
        producer_max_batch_size=settings.producer_batch_bytes,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 4,
        loghandlers=[],
        Stream=BatchingStream,  # take_events that acks only what it handed out
        Table=DeliveredTable,  # changelog writes awaited before a batch is acked
    )
    pipeline = pipeline or Pipeline.from_settings(settings)
    metrics = WorkerMetrics()
    metrics.install_faust_sensor(app)
    scorer = pipeline.recommender.scorer
    created = scorer.manifest.created.timestamp() if isinstance(scorer, RankerScorer) else None
    metrics.set_model_version(scorer.version, created)
    for _, reason in pipeline.refused:  # counted as a refused hot swap is: serving goes on
        metrics.model_updates.labels(action="startup", outcome="refused", reason=reason).inc()
    register_agents(app, settings, pipeline, metrics)
    return app
