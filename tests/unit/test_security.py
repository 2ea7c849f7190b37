"""Security wiring, checked without a broker: the SASL/TLS settings reach Faust and every
aiokafka client streamrec builds; the HTTP endpoint binds to localhost by default; the
source loads nothing through pickle (docs/security.md)."""

from __future__ import annotations

import ast
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiokafka
import faust
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ValidationError

from streamrec.consumers.tools import feed
from streamrec.consumers.trainer import sidecar as trainer
from streamrec.consumers.worker.app import create_app
from streamrec.consumers.worker.model_updates import open_broadcast_reader
from streamrec.models.core.pipeline import Pipeline
from streamrec.models.core.popularity import TrendingItems
from streamrec.models.core.recommender import Recommender
from streamrec.models.core.scoring import ContentScorer
from streamrec.stream import topics
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from tests.support.fakes import BruteForceIndex

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("stream", "models", "consumers")
PASSWORD = "not-a-real-password"


# --- a throwaway CA and client certificate --------------------------------------------
@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ca.pem, client.pem (signed by it), client.key, and other.key (matches neither)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test CA (Debian package openssl)")
    d = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=streamrec-test-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
            "-subj", "/CN=streamrec-test-client")
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "client.pem", "-days", "2")
    openssl("genrsa", "-out", "other.key", "2048")
    return {name: d / name for name in ("ca.pem", "client.pem", "client.key", "other.key")}


@pytest.fixture
def secure(tls: dict[str, Path], tmp_path: Path) -> Settings:
    return Settings(
        broker="kafka://kafka-1:9093;kafka-2:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="streamrec",
        sasl_password=PASSWORD,
        ssl_cafile=tls["ca.pem"],
        ssl_certfile=tls["client.pem"],
        ssl_keyfile=tls["client.key"],
        data_dir=tmp_path / "data",
        trainer_metrics_port=0,
    )


def _ca_names(context: ssl.SSLContext) -> list[str]:
    return [dict(entry[0] for entry in cert["subject"])["commonName"] for cert in context.get_ca_certs()]


def assert_secure_client(client: Any) -> None:
    """An aiokafka client (`AIOKafkaClient`) configured for SASL_SSL with the test CA."""
    assert client._bootstrap_servers in (["kafka-1:9093", "kafka-2:9093"], "kafka-1:9093,kafka-2:9093")
    assert client._security_protocol == "SASL_SSL"
    assert client._sasl_mechanism == "SCRAM-SHA-512"
    assert (client._sasl_plain_username, client._sasl_plain_password) == ("streamrec", PASSWORD)
    context = client._ssl_context
    assert isinstance(context, ssl.SSLContext) and _ca_names(context) == ["streamrec-test-ca"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


# --- Settings -> client options ----------------------------------------------------------
def test_settings_turn_into_sasl_and_tls_options(secure: Settings, tls: dict[str, Path]) -> None:
    options = secure.kafka_client_options()
    assert {k: v for k, v in options.items() if k != "ssl_context"} == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "streamrec", "sasl_plain_password": PASSWORD,
    }
    assert _ca_names(options["ssl_context"]) == ["streamrec-test-ca"]  # type: ignore[arg-type]
    assert PASSWORD not in repr(secure) and PASSWORD not in str(secure.model_dump())

    # The client certificate is really loaded: a key that does not match it is refused.
    with pytest.raises(ssl.SSLError):
        secure.model_copy(update={"ssl_keyfile": tls["other.key"]}).kafka_client_options()

    tls_only = Settings(security_protocol="SSL", ssl_cafile=tls["ca.pem"]).kafka_client_options()
    assert set(tls_only) == {"security_protocol", "ssl_context"} and tls_only["security_protocol"] == "SSL"
    sasl_plain = Settings(security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="p").kafka_client_options()
    assert "ssl_context" not in sasl_plain and sasl_plain["sasl_plain_password"] == "p"
    assert Settings().kafka_client_options() == {"security_protocol": "PLAINTEXT"}
    with pytest.raises(ValidationError, match="SASL"):
        Settings(sasl_username="u")  # credentials without SASL would be silently ignored


# --- Faust --------------------------------------------------------------------------------
def _app(settings: Settings) -> faust.App:
    index = BruteForceIndex(dim=4)
    recommender = Recommender(index=index, scorer=ContentScorer(), trending=TrendingItems())
    return create_app(settings, pipeline=Pipeline(index=index, catalog=None, recommender=recommender))  # type: ignore[arg-type]


async def test_faust_gets_the_credentials_and_passes_them_to_its_clients(secure: Settings) -> None:
    app = _app(secure)
    credentials = app.conf.broker_credentials
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password) == ("streamrec", PASSWORD)
    assert credentials.mechanism.value == "SCRAM-SHA-512" and credentials.protocol.value == "SASL_SSL"
    # The producer and the group consumer Faust would start (built, not connected).
    producer = app.producer._new_producer()
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    try:
        assert_secure_client(producer.client)
        assert_secure_client(consumer._client)
    finally:
        await producer.stop()
        await consumer.stop()


def test_faust_tls_only_and_plaintext(tls: dict[str, Path], tmp_path: Path) -> None:
    tls_only = _app(Settings(security_protocol="SSL", ssl_cafile=tls["ca.pem"], data_dir=tmp_path)).conf.broker_credentials
    assert isinstance(tls_only, faust.SSLCredentials) and _ca_names(tls_only.context) == ["streamrec-test-ca"]
    assert _app(Settings(data_dir=tmp_path)).conf.broker_credentials is None


# --- every aiokafka client of ours -------------------------------------------------------
class Built(Exception):
    """Raised by a recording client's start(): the client was built, nothing connects."""


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every AIOKafkaConsumer / AIOKafkaAdminClient our code builds, stopped before connecting."""
    built: list[Any] = []

    class RecordingConsumer(aiokafka.AIOKafkaConsumer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

        async def start(self) -> None:
            raise Built

    class RecordingAdmin(AIOKafkaAdminClient):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            built.append(self)

        async def start(self) -> None:
            raise Built

    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", RecordingConsumer)  # imported inside functions
    monkeypatch.setattr(feed, "AIOKafkaConsumer", RecordingConsumer)
    monkeypatch.setattr(topics, "AIOKafkaAdminClient", RecordingAdmin)
    yield built


class _NoProducer:
    def __init__(self, settings: Settings) -> None:
        pass

    async def __aenter__(self) -> None:
        raise Built

    async def __aexit__(self, *exc: object) -> None:
        pass


async def test_every_client_streamrec_builds_gets_the_settings(
    secure: Settings, recorded: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    sdk = EventProducer(secure)  # the producer SDK
    assert_secure_client(sdk._producer.client)
    await sdk._producer.stop()

    with pytest.raises(Built):  # topic admin (worker and trainer start-up, `wait_for_broker`)
        await topics.wait_for_broker(secure, timeout_s=0)
    with pytest.raises(Built):  # broadcast readers: model-updates and items (workers, trainer)
        await open_broadcast_reader(secure, [secure.topics.model_updates])
    with pytest.raises(Built):  # `streamrec tail`, the demo
        await feed.open_reader(secure, secure.topics.recommendations, from_beginning=True)
    service = trainer.TrainerService.__new__(trainer.TrainerService)  # no encoder load
    service.settings = secure
    monkeypatch.setattr(trainer, "EventProducer", _NoProducer)
    with pytest.raises(Built):  # the trainer's `events` consumer (its own group)
        await service.run(stop=None)  # type: ignore[arg-type]

    assert [type(client).__name__ for client in recorded] == ["RecordingAdmin", "RecordingConsumer",
                                                               "RecordingConsumer", "RecordingConsumer"]
    for client in recorded:
        assert_secure_client(client._client)
    assert recorded[-1]._group_id == secure.resolved_trainer_group


def _calls(tree: ast.AST) -> Iterator[ast.Call]:
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _source_files() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py"))


def test_no_kafka_client_is_built_without_the_security_options() -> None:
    """A client added later must pass `settings.kafka_client_options()` too (or Faust's own)."""
    clients = 0
    for path in _source_files():
        for call in _calls(ast.parse(path.read_text(), str(path))):
            if _name(call.func) in ("AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"):
                clients += 1
                spread = [kw.value for kw in call.keywords if kw.arg is None]
                assert any("kafka_client_options" in ast.unparse(value) or _name(value) == "options" for value in spread), \
                    f"{path.relative_to(ROOT)}:{call.lineno} builds a Kafka client without the security options"
    assert clients >= 5


# --- HTTP -----------------------------------------------------------------------------------
def test_http_binds_to_localhost_unless_told_otherwise(tmp_path: Path) -> None:
    assert Settings().metrics_host == "127.0.0.1" and Settings().http_token is None
    conf = _app(Settings(data_dir=tmp_path)).conf
    assert (conf.web_bind, conf.web_host) == ("127.0.0.1", "127.0.0.1")
    assert not conf.web_router_enabled and not conf.web_tables_enabled  # no raw table dumps
    exposed = _app(Settings(data_dir=tmp_path, metrics_host="0.0.0.0", http_advertised_url="http://pod-1:6066")).conf
    assert exposed.web_bind == "0.0.0.0" and str(exposed.canonical_url) == "http://pod-1:6066"
    trainer_source = (ROOT / "consumers" / "trainer" / "sidecar.py").read_text()
    assert "start_http_server(settings.trainer_metrics_port, addr=settings.metrics_host" in trainer_source


# --- no pickle ---------------------------------------------------------------------------------
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}


def unsafe_loads(source: str, filename: str = "<source>") -> list[str]:
    """Where `source` deserialises through pickle or runs code from a model file."""
    found = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [f"{filename}:{node.lineno} imports {m}" for m in modules if m.split(".")[0] in UNSAFE_MODULES]
    for call in _calls(tree):
        func, keywords = ast.unparse(call.func), {kw.arg: ast.unparse(kw.value) for kw in call.keywords}
        where = f"{filename}:{call.lineno} {func}"
        if func.endswith("torch.load") and keywords.get("weights_only") != "True":
            found.append(f"{where} without weights_only=True")
        loader = keywords.get("Loader", ast.unparse(call.args[1]) if len(call.args) > 1 else "")
        if func.endswith(("yaml.load", "yaml.load_all")) and "SafeLoader" not in loader:
            found.append(f"{where} without SafeLoader")
        if func.endswith(("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all")):
            found.append(where)
        if keywords.get("allow_pickle") == "True" or keywords.get("trust_remote_code") == "True":
            found.append(f"{where} with {'allow_pickle' if 'allow_pickle' in keywords else 'trust_remote_code'}=True")
        if _name(call.func) in ("eval", "exec") and isinstance(call.func, ast.Name):
            found.append(where)
    return found


def test_the_checker_finds_each_unsafe_load() -> None:
    bad = """
import pickle
from dill import loads
import torch, yaml, numpy as np
torch.load("m.pt")
torch.load("m.pt", weights_only=False)
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
yaml.unsafe_load(text)
np.load("a.npy", allow_pickle=True)
AutoModel.from_pretrained(path, trust_remote_code=True)
eval(text)
"""
    lines = sorted(int(hit.split(":")[1].split()[0]) for hit in unsafe_loads(bad))
    assert lines == [2, 3, 5, 6, 7, 8, 9, 10, 11, 12], unsafe_loads(bad)
    good = """
import torch, yaml
torch.load("m.pt", weights_only=True, map_location="cpu")
yaml.load(text, Loader=yaml.SafeLoader)
yaml.safe_load(text)
"""
    assert unsafe_loads(good) == []


def test_no_pickle_unsafe_torch_load_or_yaml_load_in_the_source() -> None:
    files = _source_files()
    assert len(files) > 20
    found = [hit for path in files for hit in unsafe_loads(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == []


async def test_the_worker_producer_gathers_records_into_few_batches(tmp_path: Path) -> None:
    """Faust's default (linger 0, 16 KB batches) sends a record batch per list; ours lingers."""
    app = _app(Settings(data_dir=tmp_path, producer_linger_ms=7))
    producer = app.producer._new_producer()  # built, not connected
    try:
        accumulator = producer._message_accumulator
        assert accumulator._linger_time == pytest.approx(0.007)
        assert accumulator._batch_size == 256 * 1024
    finally:
        await producer.stop()
