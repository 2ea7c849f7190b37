"""Which hop serves an event: the agent that read it (one hop), or the re-keying hop (two).

A worker owns the table partitions numbered like the `events` partitions it reads (Faust's
assignor co-partitions topics of equal partition counts), and a user's state is written to
the partition Kafka's default partitioner picks for the user id (murmur2 of the key; the
tables' `use_partitioner=True`). So the ingest agent may serve an event itself only when the
event sits where that partitioner puts its user: its message key is the user id (UTF-8) and
its partition is the key's murmur2 partition. The producer SDK, `POST /events` and any
client with Kafka's default (Java) partitioner produce exactly that. Anything else (no key,
another key, or the user's key placed by another partitioner, such as librdkafka's default
`consistent_random` (CRC32) in kcat or confluent-kafka: set `partitioner=murmur2_random`
there) is re-keyed through `events.by-user`, and counted with its reason.

Each check is only sound if `events` has as many partitions as the tables
(`STREAMREC_PARTITIONS`); `hop_mode` decides once at start-up whether one hop runs at all.

>>> key = b"u1"
>>> rekey_reason(key, partition_for(key, 4), "u1", 4) is None  # keyed by its user: served here
True
>>> rekey_reason(None, 0, "u1", 4), rekey_reason(b"u2", partition_for(b"u2", 4), "u1", 4)
('no_key', 'other_key')
>>> rekey_reason(key, (partition_for(key, 4) + 1) % 4, "u1", 4)
'other_partition'
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.partitioner import murmur2

NO_KEY = "no_key"  # the message has no key
OTHER_KEY = "other_key"  # its key is not the event's user id
OTHER_PARTITION = "other_partition"  # keyed by its user, on a partition the default partitioner would not choose
ONE_HOP_OFF = "one_hop_off"  # this worker runs two hops for every event (setting, or a partition mismatch)
REKEY_REASONS = (NO_KEY, OTHER_KEY, OTHER_PARTITION, ONE_HOP_OFF)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java's, aiokafka's) gives `key`.

    >>> [partition_for(k, 4) for k in (b"u1", b"u2", b"u3")]
    [0, 2, 2]
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def rekey_reason(key: bytes | None, partition: int, user_id: str, partitions: int) -> str | None:
    """None when a message holding `user_id`'s event, read on `partition` of a topic of
    `partitions` partitions, is keyed by that user where the tables expect it; else why not."""
    if key is None:
        return NO_KEY
    if key != user_id.encode():
        return OTHER_KEY
    if partition != partition_for(key, partitions):
        return OTHER_PARTITION
    return None


@dataclass(frozen=True)
class HopMode:
    """How this worker serves events keyed by user: in one hop or two, and why."""

    one_hop: bool
    why: str  # for the start-up log line

    @property
    def name(self) -> str:
        return "one hop" if self.one_hop else "two hops"


def hop_mode(enabled: bool, events_partitions: int | None, table_partitions: int, events_topic: str) -> HopMode:
    """One hop when the setting allows it and `events` has the tables' partition count.

    >>> hop_mode(True, 4, 4, "events").one_hop, hop_mode(True, 8, 4, "events").one_hop
    (True, False)
    >>> hop_mode(False, 4, 4, "events").why
    'STREAMREC_ONE_HOP=false'
    """
    if not enabled:
        return HopMode(False, "STREAMREC_ONE_HOP=false")
    if events_partitions is None:
        return HopMode(False, f"the partition count of {events_topic} is unknown")
    if events_partitions != table_partitions:
        return HopMode(
            False,
            f"{events_topic} has {events_partitions} partitions, the tables {table_partitions}"
            " (STREAMREC_PARTITIONS): a worker would write state it does not own",
        )
    return HopMode(True, f"events keyed by user id on {events_topic} are served where they are read")
