"""Faust's aiokafka driver with the fixes streamrec's delivery promises need.

Each fix closes a way a Faust worker lost or skipped events, found by
tests/e2e/test_failover.py (a worker killed mid-stream, workers joining and leaving):

- `fetch_max_wait_ms` is a setting (Faust hard-codes 1500 ms; an idle Tansu fetch answers late);
- table recovery reads changelogs to their real end (`streamrec.stream.offsets`);
- no message of a newly assigned partition is handed out before Faust's seek to the committed
  offsets is done (`SeekGate`): Faust resumes the partitions first, and under CPU load the
  fetcher handed out messages in that window which the seek then handed out again;
- offsets are committed only over messages processed: no "gap" is committed over, and a
  never-processed message at the head of a partition is read again (`head_gap`), reliably
  (`ReadOffsets`), without handing out again the messages processed after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from streamrec.stream.offsets import log_end_offsets
from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)

HELD_POLL_S = 0.05  # the fetcher's wait while every partition it may fetch awaits its seek (s)
CHANGELOG_SUFFIX = "-changelog"  # Faust names a table's changelog topic <app id>-<table>-changelog


def transport_for(settings: Settings) -> type[faust_aiokafka.Transport]:
    """Faust's aiokafka driver, with two fixes for brokers other than Apache Kafka.

    - Faust hard-codes `fetch_max_wait_ms=1500`; this makes it a setting. Real Kafka answers a
      fetch as soon as data is there, but Tansu 0.6 looks again only after half the wait left,
      then half the rest (data reaching an idle fetch waits up to half the wait: 750 ms a hop at
      Faust's 1,500), and lists a partition's stored batches within that wait (docs/settings.md).
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
            # Only table recovery needs the exact end (a changelog read to its last record);
            # the lag gauge asks every few seconds and takes the broker's figure (it runs on
            # the consumer's loop: a probe there would hold up fetching).
            changelogs = {tp: end for tp, end in reported.items() if tp.topic.endswith(CHANGELOG_SUFFIX)}
            if not changelogs:
                return reported
            return {**reported, **await log_end_offsets(settings, changelogs)}

    class Consumer(faust_aiokafka.Consumer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._read_offset = ReadOffsets()  # before any drain loop binds its methods

        @property
        def _seek_gate(self) -> SeekGate:
            # set lazily: Faust's __init__ runs before ours finishes and may fetch already
            return self.__dict__.setdefault("_streamrec_seek_gate", SeekGate())

        async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
            self._seek_gate.assigned(tp for tp in assigned if not tp.topic.endswith(CHANGELOG_SUFFIX))
            await super().on_partitions_assigned(assigned, generation_id)

        def resume_partitions(self, tps: Iterable[TP]) -> None:
            tps = set(tps)
            self._seek_gate.resumed(tp for tp in tps if not tp.topic.endswith(CHANGELOG_SUFFIX))
            super().resume_partitions(tps)

        async def perform_seek(self) -> None:
            # Faust's recovery resumes the stream partitions and only then seeks them to their
            # committed offsets; until the seek is done, what the fetcher reads is held back.
            started = self._seek_gate.seek_started()
            await super().perform_seek()
            self._seek_gate.seek_done(started)

        async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
            if active_partitions and self._seek_gate.waiting:
                held = {tp for tp in active_partitions if self._seek_gate.holds(tp)}
                if held and self._seek_gate.first_hold():
                    log.info("not fetching %d partitions before they are seeked to their committed offsets: %s",
                             len(held), sorted(held))
                active_partitions = active_partitions - held
                if not active_partitions:  # (an empty set would fetch every partition)
                    await asyncio.sleep(HELD_POLL_S)
                    return {}
            return await super()._getmany(active_partitions, timeout)

        def _new_consumer_thread(self) -> ConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

        async def commit(self, *args: Any, **kwargs: Any) -> bool:
            self._read_skipped_again()
            return await super().commit(*args, **kwargs)

        def _read_skipped_again(self) -> None:
            # A message Faust hands to a stream while its flow is paused or from an earlier
            # generation (around a start or a rebalance) is skipped: neither processed nor
            # acked. With later messages acked, `_new_offset` finds the hole; when it was the
            # last one in its partition, nothing would: it waited for the next message.
            in_flight = {message.tp for message in self._unacked_messages}
            for channel in getattr(self.app.topics, "_topics", ()):  # handed out, not yet taken
                queue = getattr(getattr(channel, "queue", None), "_queue", ())
                in_flight.update(event.message.tp for event in list(queue) if hasattr(event, "message"))
            stuck_before, self._stuck = self._stuck, {}
            for tp in self.assignment():
                if tp in in_flight or self._acked.get(tp) or not self.app.topics.acks_enabled_for(tp.topic):
                    continue
                if tp in self._paused_partitions or self._seek_gate.holds(tp):
                    continue  # not fetched now (a rebalance, a recovery): nothing handed out
                committed = self._committed_offset[tp]
                handed_out = dict.get(self._read_offset, tp)  # the last offset given to a stream
                if committed is None or handed_out is None or handed_out < committed:
                    continue
                if self._rewound.get(tp) == committed:
                    continue  # once per committed offset, as for a hole at the head
                self._stuck[tp] = (committed, handed_out)
                if stuck_before.get(tp) != (committed, handed_out):
                    continue  # seen so at two commits in a row, not a message in transit
                log.warning("offsets %s..%s of %s were skipped; reading again from %s",
                            committed, handed_out, tp, committed)
                self._rewind(tp, committed)

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
                self._rewind(tp, rewind)
                return None
            return super()._new_offset(tp)

        def read_again(self, messages: Iterable[Message]) -> None:
            """Give up `messages` unprocessed (their batch failed): Faust stops waiting for
            them, and their partitions are read again from the committed offset, even where
            a rewind went there before (a batch can fail more than once)."""
            for message in messages:
                self._unacked_messages.discard(message)
                self._rewound.pop(message.tp, None)

        def _rewind(self, tp: TP, offset: int) -> None:
            """Read `tp` again from `offset`; messages processed since are not handed out again."""
            self._rewound[tp] = offset
            self._thread.seek(tp, offset)
            self._read_offset.rewind(tp, offset, processed=self._acked.get(tp, ()))

        async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
            async for tp, message in super().getmany(timeout):
                if self._read_offset.processed_before(tp, message.offset):
                    continue  # read again by a rewind, but processed (acked) already
                yield tp, message

        async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
            # Faust takes a jump in the offsets it is handed for offsets that do not exist
            # (compaction, transaction markers) and later commits over them. A jump also
            # happens when messages come out of order around a seek or a rebalance; committing
            # over it then loses the messages in between (seen: a worker restarted after
            # SIGKILL committed past 23 events it never read, then dropped them as old).
            # Offsets are committed only over messages processed; a hole left at the head of
            # a partition is read again (`_new_offset`), once, then treated as Faust does.
            return None

        @property
        def _stuck(self) -> dict[TP, tuple[int, int]]:
            # partition -> (committed, handed out) when read past committed with nothing in flight
            return self.__dict__.setdefault("_stuck_offsets", {})

        @_stuck.setter
        def _stuck(self, value: dict[TP, tuple[int, int]]) -> None:
            self.__dict__["_stuck_offsets"] = value

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


class SeekGate:
    """The stream partitions assigned but not yet seeked to their committed offsets: nothing
    is fetched from them until the seek is done.

    Faust (faust-streaming 0.11) makes newly assigned partitions fetchable before it seeks
    them: its recovery (`Recovery.on_recovery_completed`) resumes the stream partitions and
    only then awaits `perform_seek` (committed offsets from the group coordinator, on the
    consumer thread). Its fetcher runs meanwhile, and each fetch waits on the *live* set of
    active partitions (aiokafka's `fetched_records` re-reads it while it waits up to 1 s), so
    a fetch begun before the resume returns the resumed partitions' messages before the seek.
    They were handed out and processed; the seek then put the partitions back, and they were
    processed again (lists published twice, for events sent after the failure too); the acks
    around the seek left holes that `head_gap` rewinds filled seconds later, after newer
    messages: an old event's list was published after the user's newest one. Under CPU load
    the window is long enough to hit often (tests/e2e/test_failover.py with a CPU hog).
    While a partition awaits its seek, fetches get a copy of the active set without it.

    A seek before the partitions are resumed (Faust seeks when a fetch returns while its
    flow is stopped, during a rebalance) does not count: the first resume after an
    assignment holds them again until the seek that follows it.

    >>> gate = SeekGate()
    >>> gate.assigned(["p0", "p1"]); gate.holds("p0")
    True
    >>> gate.seek_done(gate.seek_started()); gate.holds("p0")  # seeked while paused
    False
    >>> gate.resumed(["p0", "p1"]); gate.holds("p0")  # Faust's recovery: resume, then seek
    True
    >>> seek = gate.seek_started(); gate.assigned(["p1"])  # assigned again during the seek
    >>> gate.seek_done(seek); gate.holds("p0"), gate.holds("p1"), gate.holds("other")
    (False, True, False)
    >>> gate.resumed(["p0"]); gate.holds("p0")  # resumed later on (flow control): not held
    False
    """

    def __init__(self) -> None:
        self.serial = 0  # counts assignments, resumes and seeks: which came first
        self.waiting: dict[Any, int] = {}  # partition -> serial of the assignment or resume it waits since
        self.unresumed: set[Any] = set()  # assigned, not resumed since: a resume holds them again
        self.reported = 0  # the serial at which a hold was last logged

    def assigned(self, partitions: Iterable[Any]) -> None:
        self.serial += 1
        for tp in partitions:
            self.waiting[tp] = self.serial
            self.unresumed.add(tp)

    def resumed(self, partitions: Iterable[Any]) -> None:
        """The first resume of a partition after its assignment: held until the next seek."""
        self.serial += 1
        for tp in partitions:
            if tp in self.unresumed:
                self.unresumed.discard(tp)
                self.waiting[tp] = self.serial

    def seek_started(self) -> int:
        self.serial += 1
        return self.serial

    def seek_done(self, started: int) -> None:
        """The partitions waiting since before the seek `started` are at their committed offsets."""
        self.waiting = {tp: serial for tp, serial in self.waiting.items() if serial > started}

    def holds(self, tp: Any) -> bool:
        return tp in self.waiting

    def first_hold(self) -> bool:
        """True once per assignment: the first time a fetch wanted a partition held here."""
        first, self.reported = self.reported != self.serial, self.serial
        return first


class ReadOffsets(dict):
    """Faust's last offset handed to the streams, per partition; it drops messages below it.

    After a seek back (a rewind), messages fetched before the seek still come first, with
    higher offsets; Faust would raise the read offset past the rewind point on them and then
    drop the messages read again as already seen. Here a rewound partition reports the
    rewind point until the message there has been handed out again.

    >>> offsets = ReadOffsets()
    >>> offsets.rewind("tp", 40); offsets["tp"] = 57  # fetched before the seek
    >>> offsets["tp"]  # 40 and on still pass the `offset >= read offset` filter
    40
    >>> offsets["tp"] = 40; offsets["tp"] = 41; offsets["tp"]
    41

    The offsets processed after the rewind point (acked, not yet committed) are read again
    too: they are not handed out a second time.

    >>> offsets.rewind("tp", 50, processed=[51, 52])
    >>> [n for n in (50, 51, 52, 53) if not offsets.processed_before("tp", n)]
    [50, 53]
    """

    def __init__(self) -> None:
        super().__init__()
        self.rewinds: dict[Any, int] = {}
        self.processed: dict[Any, set[int]] = {}  # tp -> offsets above its rewind point, done

    def __missing__(self, tp: Any) -> None:  # Faust's defaultdict(lambda: None), not stored
        return None

    def __getitem__(self, tp: Any) -> int | None:
        if tp in self.rewinds:
            return self.rewinds[tp]
        return super().__getitem__(tp)

    def __setitem__(self, tp: Any, offset: int | None) -> None:
        if self.rewinds.get(tp) == offset:
            del self.rewinds[tp]  # the rewound message is back: normal filtering again
        super().__setitem__(tp, offset)

    def rewind(self, tp: Any, offset: int, processed: Iterable[int] = ()) -> None:
        self.rewinds[tp] = offset
        done = {n for n in processed if n > offset}
        if done:
            self.processed[tp] = done
        else:
            self.processed.pop(tp, None)
        super().__setitem__(tp, offset or None)

    def processed_before(self, tp: Any, offset: int) -> bool:
        """True (once) for an offset read again by a rewind that was processed before it."""
        done = self.processed.get(tp)
        if not done or offset not in done:
            return False
        done.discard(offset)
        if not done:
            del self.processed[tp]
        return True

    def update(self, *args: Any, **kwargs: Any) -> None:  # Faust's seek to committed offsets
        new = dict(*args, **kwargs)
        for tp in new:
            self.rewinds.pop(tp, None)
            self.processed.pop(tp, None)
        super().update(new)

    def pop(self, tp: Any, *default: Any) -> Any:  # a revoked partition
        self.rewinds.pop(tp, None)
        self.processed.pop(tp, None)
        return super().pop(tp, *default)


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
