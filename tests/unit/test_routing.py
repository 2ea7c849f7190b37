"""Which hop serves an event (`consumers/worker/routing.py`): one hop only for an event keyed
by its user where Kafka's default partitioner puts that key, and only when `events` has the
tables' partition count."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from streamrec.consumers.worker.routing import (
    NO_KEY,
    OTHER_KEY,
    OTHER_PARTITION,
    hop_mode,
    partition_for,
    rekey_reason,
)
from streamrec.stream.settings import Settings


@pytest.mark.parametrize("partitions", [1, 3, 4, 16])
def test_partition_for_is_the_producers_default_partitioner(partitions: int) -> None:
    # The reference: aiokafka's partitioner, which the SDK, POST /events and the tables use.
    producer_choice = DefaultPartitioner()
    every = list(range(partitions))
    for key in [f"user-{n}".encode() for n in range(500)] + ["ü-ß-用户".encode(), b""]:
        assert partition_for(key, partitions) == producer_choice(key, every, every), key


def test_an_event_keyed_by_its_user_on_its_partition_is_served_where_it_is_read() -> None:
    for user in ("u1", "shopper-42", "ü-ß-用户"):
        key = user.encode()
        assert rekey_reason(key, partition_for(key, 4), user, 4) is None


def test_every_other_placement_is_re_keyed_with_its_reason() -> None:
    key = b"u1"
    home = partition_for(key, 4)
    assert rekey_reason(None, home, "u1", 4) == NO_KEY
    assert rekey_reason(b"", home, "u1", 4) == OTHER_KEY
    assert rekey_reason(b"u1 ", home, "u1", 4) == OTHER_KEY
    assert rekey_reason("u1".encode("utf-16"), home, "u1", 4) == OTHER_KEY  # not UTF-8
    assert rekey_reason(b"session-9", home, "u1", 4) == OTHER_KEY
    for elsewhere in set(range(4)) - {home}:  # e.g. librdkafka's CRC32 partitioner
        assert rekey_reason(key, elsewhere, "u1", 4) == OTHER_PARTITION


def test_one_hop_runs_only_when_on_and_events_is_partitioned_like_the_tables() -> None:
    settings = Settings()
    assert settings.one_hop is True, "on by default"
    assert hop_mode(True, 4, 4, "events").one_hop
    mismatch = hop_mode(True, 8, 4, "events")
    assert not mismatch.one_hop and "8 partitions" in mismatch.why and "4" in mismatch.why
    assert not hop_mode(True, None, 4, "events").one_hop, "unknown: two hops, always correct"
    off = hop_mode(False, 4, 4, "events")
    assert not off.one_hop and off.name == "two hops"


def test_the_setting_maps_onto_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_ONE_HOP", "false")
    assert Settings().one_hop is False
    assert Settings(one_hop=False).to_env()["STREAMREC_ONE_HOP"] == "False"
