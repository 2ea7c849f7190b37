"""The one settings object: every knob of a worker, validated once at start-up, then frozen.

Each field maps one to one onto an environment variable `STREAMREC_<FIELD>` (upper case).

>>> s = Settings(broker="kafka://127.0.0.1:19092", topic_prefix="t1.")
>>> s.topics.events, s.topics.dlq
('t1.events', 't1.events.dlq')
>>> s.bootstrap_servers
'127.0.0.1:19092'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_BROKER_URL = re.compile(r"^(kafka|aiokafka)://[^\s/]+(;[^\s/]+)*/?$")


@dataclass(frozen=True)
class Topics:
    """The topic names of the public contract, each with the optional prefix."""

    events: str
    items: str
    recommendations: str
    dlq: str
    model_updates: str
    events_by_user: str  # internal: valid events not keyed by user id, re-keyed (the second hop)

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        return cls(
            events=f"{prefix}events",
            items=f"{prefix}items",
            recommendations=f"{prefix}recommendations",
            dlq=f"{prefix}events.dlq",
            model_updates=f"{prefix}model-updates",
            events_by_user=f"{prefix}events.by-user",
        )

    def all(self) -> list[str]:
        return [
            self.events,
            self.items,
            self.recommendations,
            self.dlq,
            self.model_updates,
            self.events_by_user,
        ]


class Settings(BaseSettings):
    """Every setting of streamrec; env vars `STREAMREC_*` map onto the fields one to one."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_", frozen=True, extra="ignore")

    # --- bus ---------------------------------------------------------------------------
    broker: str = "kafka://127.0.0.1:9092"  # Kafka bootstrap URL(s), `kafka://h1:9092;h2:9092`
    app_id: str = "streamrec"  # Faust app id = consumer group id of the workers
    topic_prefix: str = ""  # prepended to every topic name (e.g. `staging.`)
    partitions: int = Field(2, ge=1, le=1024)  # partitions of topics the worker creates (each adds record batches: see docs/settings.md)
    replication: int = Field(1, ge=1, le=16)  # replication factor of created topics
    session_timeout_s: float = Field(10.0, ge=1, le=300)  # a silent worker leaves the group after this
    fetch_max_wait_ms: int = Field(100, ge=0, le=10_000)  # consumer fetch wait (ms): Tansu's idle answer time and its listing budget
    broker_wait_s: float = Field(30.0, ge=0, le=3_600)  # CLI and worker start: how long to wait for the broker (s)
    stop_timeout_s: float = Field(20.0, gt=0, le=600)  # a worker's stop (SIGTERM) longer than this ends the process (s)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None  # SASL user (passed through to every client)
    sasl_password: SecretStr | None = None  # SASL password (never logged)
    ssl_cafile: Path | None = None  # CA bundle for TLS
    ssl_certfile: Path | None = None  # client certificate for mutual TLS
    ssl_keyfile: Path | None = None  # client key for mutual TLS

    # --- ingest ------------------------------------------------------------------------
    max_message_bytes: int = Field(65_536, ge=256)  # larger events go to the DLQ (bytes)
    dedup_capacity: int = Field(200_000, ge=1)  # event ids remembered for de-duplication
    ingest_wait_s: float = Field(0.005, gt=0, le=10)  # ingest micro-batch: at most this long (s)
    one_hop: bool = True  # events keyed by user id are served by the agent that reads them (no re-keying hop)
    producer_linger_ms: int = Field(5, ge=0, le=1_000)  # worker's producer: gather a micro-batch's records into few batches
    sdk_linger_ms: int = Field(50, ge=0, le=1_000)  # the producer SDK (EventProducer, the load tools): gather events into few batches
    producer_batch_bytes: int = Field(262_144, ge=1_024, le=1_048_576)  # largest record batch of our producers (bytes)
    min_event_ts: float = 631_152_000.0  # events older than this (1990-01-01, unix s) are absurd
    max_future_skew_s: float = Field(3_600.0, ge=0)  # events further ahead of now are absurd (s)

    # --- recommend ---------------------------------------------------------------------
    k: int = Field(10, ge=1, le=1_000)  # items per recommendation list
    batch_size: int = Field(256, ge=1, le=100_000)  # micro-batch: at most this many events
    batch_wait_s: float = Field(0.02, gt=0, le=60)  # micro-batch: at most this long (s)
    history_length: int = Field(50, ge=1, le=10_000)  # recent items kept per user
    neighbours_per_item: int = Field(20, ge=1, le=1_000)  # index neighbours per recent item
    seed_items: int = Field(5, ge=1, le=100)  # most recent items used as retrieval seeds
    trending_half_life_s: float = Field(3_600.0, gt=0)  # popularity decay half-life (s)
    recency_half_life_s: float = Field(86_400.0, gt=0)  # weight decay of a user's past events (s)
    collaborative: bool = True  # co-visitation / transition / popularity candidates and features
    diversity: float = Field(0.0, ge=0.0, le=1.0)  # MMR trade-off: 0 = by score only, 1 = most unlike
    signals_feed: bool = True  # learn those counts from every worker's users (a broadcast read of events)
    signals_lookback_events: int = Field(200_000, ge=0)  # at start, read this many events messages back (all partitions)
    signals_max_users: int = Field(100_000, ge=1)  # users whose recent items the feed and the similar-users signal remember (~0.4 KB each, each)
    signals_dedup_events: int = Field(100_000, ge=1)  # event ids the feed remembers, to count each once (~90 B each)

    # --- index, model, storage ---------------------------------------------------------
    data_dir: Path = Path(".streamrec")  # everything a worker writes lives under here
    index_mode: Literal["edge", "client"] = "edge"  # embedded Qdrant Edge or a Qdrant server
    index_path: Path | None = None  # Qdrant Edge shard dir (default: <data_dir>/index)
    qdrant_url: str | None = None  # Qdrant server URL for index_mode=client (`:memory:` = local)
    qdrant_api_key: SecretStr | None = None  # Qdrant server API key
    qdrant_timeout_s: float = Field(5.0, ge=1, le=300)  # one request to the Qdrant server, at most (s)
    index_retry_s: float = Field(10.0, gt=0, le=3_600)  # item index failed: trending lists, retried after (s)
    collection: str = "items"  # Qdrant collection / shard name
    hnsw_ef: int = Field(64, ge=4, le=4_096)  # HNSW search breadth: recall vs speed of a query
    exact_search_max_items: int = Field(50_000, ge=0)  # catalogue searched exactly in memory up to this size (0: never)
    item_cache_size: int = Field(50_000, ge=1)  # item vectors kept in memory in front of Qdrant
    neighbour_cache_size: int = Field(50_000, ge=1)  # items whose neighbour list is kept in memory
    encoder_path: Path | None = None  # local HF model dir (default: packaged all-MiniLM-L6-v2)
    encoder_batch_size: int = Field(64, ge=1, le=4_096)  # texts per encoder forward pass
    model_dir: Path | None = None  # model store directory (default: <data_dir>/models)
    model_version: str | None = None  # serve this checkpoint (pinned); default: the newest
    device: Literal["auto", "cpu", "cuda"] = "auto"  # torch device; auto = cuda when present
    table_store: str = "memory://"  # Faust table store (`rocksdb://` with rocksdict installed)

    # --- model updates: hot swap and canary --------------------------------------------
    canary_fraction: float = Field(0.0, ge=0, le=1)  # share of users a new version goes to first (0 = off)
    canary_min_events: int = Field(200, ge=1)  # events per arm before a canary is judged
    canary_margin: float = Field(0.0, ge=0, le=1)  # promote if canary hit-rate >= main's - this
    model_retry_s: float = Field(30.0, gt=0, le=3_600)  # a version refused for an unreadable store: tried again after (s)

    # --- trainer sidecar ---------------------------------------------------------------
    trainer_group: str | None = None  # its consumer group (default: <app_id>-trainer)
    trainer_window_events: int = Field(20_000, ge=10)  # sliding window: at most this many events
    trainer_window_s: float = Field(86_400.0, gt=0)  # ... and none older than this (event time, s)
    trainer_every_events: int = Field(1_000, ge=1)  # fine-tune after this many new events ...
    trainer_every_s: float = Field(60.0, gt=0)  # ... or this long (s), whichever comes first
    trainer_min_events: int = Field(200, ge=2)  # no cycle with fewer events in the window
    trainer_steps: int = Field(200, ge=1)  # optimiser steps per cycle (bounded work)
    trainer_holdout: float = Field(0.2, gt=0, lt=1)  # newest share of the window kept for evaluation
    trainer_margin: float = Field(0.0, ge=0, le=1)  # publish if candidate >= serving - this (hit-rate@K)
    trainer_metrics_port: int = Field(6067, ge=0, le=65_535)  # the trainer's /metrics (0 = off)
    trainer_threads: int = Field(1, ge=0, le=256)  # torch threads of the trainer (0 = all cores)

    # --- operations --------------------------------------------------------------------
    metrics_port: int = Field(6066, ge=0, le=65_535)  # HTTP port of /metrics and /healthz
    metrics_host: str = "127.0.0.1"  # bind address of the HTTP endpoint
    http_advertised_url: str | None = None  # where other workers reach this one (default http://<host>:<port>)
    http_token: SecretStr | None = None  # Bearer token of the HTTP API (probes and /metrics stay open)
    http_max_body_bytes: int = Field(1_048_576, ge=1_024)  # largest POST /events body (bytes)
    http_max_batch_events: int = Field(1_000, ge=1, le=100_000)  # most events in one POST /events
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        if not _BROKER_URL.match(value):
            raise ValueError(
                f"broker must look like kafka://host:port[;host:port...], got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _check_index(self) -> Settings:
        if self.index_mode == "client" and not self.qdrant_url:
            raise ValueError("index_mode=client needs STREAMREC_QDRANT_URL")
        if self.http_advertised_url and not re.match(r"^https?://[^\s/]+/?$", self.http_advertised_url):
            raise ValueError("http_advertised_url must look like http://host:port")
        if self.sasl_username and not self.security_protocol.startswith("SASL"):
            raise ValueError("sasl_username is set but security_protocol is not SASL_*")
        return self

    # --- derived values ----------------------------------------------------------------
    @property
    def topics(self) -> Topics:
        return Topics.with_prefix(self.topic_prefix)

    @property
    def bootstrap_servers(self) -> str:
        """`host:port[,host:port]` as Kafka clients expect it."""
        hosts = self.broker.split("://", 1)[1].rstrip("/")
        return hosts.replace(";", ",")

    @property
    def resolved_index_path(self) -> Path:
        return self.index_path or self.data_dir / "index"

    @property
    def resolved_model_dir(self) -> Path:
        return self.model_dir or self.data_dir / "models"

    @property
    def resolved_trainer_group(self) -> str:
        return self.trainer_group or f"{self.app_id}-trainer"

    def to_env(self) -> dict[str, str]:
        """The `STREAMREC_*` environment that reproduces these settings in another process
        (a worker, the trainer): the inverse of reading them. Every field that is set is
        there, secrets in clear; a field left at None is left out (unset reads as None).

        >>> import os
        >>> from unittest import mock
        >>> s = Settings(broker="kafka://h1:9092;h2:9092", partitions=3, batch_wait_s=0.1,
        ...              data_dir=Path("/tmp/w"), http_token="t0ken", model_version="v7")
        >>> env = s.to_env()
        >>> env["STREAMREC_PARTITIONS"], env["STREAMREC_HTTP_TOKEN"], "STREAMREC_QDRANT_URL" in env
        ('3', 't0ken', False)
        >>> with mock.patch.dict(os.environ, env, clear=True):
        ...     Settings() == s
        True
        """
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"STREAMREC_{name.upper()}"] = str(value)  # str(float) round-trips exactly
        return env

    def kafka_client_options(self) -> dict[str, object]:
        """Security options for aiokafka clients (SASL/TLS passed through)."""
        options: dict[str, object] = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        if self.security_protocol in ("SSL", "SASL_SSL"):
            import ssl

            context = ssl.create_default_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None
            )
            if self.ssl_certfile:
                context.load_cert_chain(
                    str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None
                )
            options["ssl_context"] = context
        return options
