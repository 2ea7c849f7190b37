"""Packed user state (version 2): round trips, the changelog record, migration from version 1.

Each test checks behaviour a worker relies on: a state packed and unpacked (in memory, or
through the changelog into another process's item codes) learns, ranks and deduplicates as
the original did; a changelog written before the packed state reads back the same; corrupt
records are refused with a reason, and the worker's `restore` starts such a user afresh.
"""

from __future__ import annotations

import json
import logging
import math
import random
from types import SimpleNamespace

import pytest

from streamrec.consumers.worker.context import WorkerContext
from streamrec.consumers.worker.state_codec import UserStateCodec
from streamrec.models.core.interner import Interner
from streamrec.models.core.packed_state import (
    HOUR_S,
    PackedUserState,
    from_record,
    pack,
    to_record,
    unpack,
)
from streamrec.models.core.state import EVENT_IDS_KEPT, UserState
from streamrec.stream.messages import EVENT_TYPES, Event
from streamrec.stream.settings import Settings

T0 = 1_750_000_000.0
GAP_RELATIVE_ERROR = 2.0**-11  # float16 gaps in hours: half an ulp is 2**-12 of the gap, with room
GAP_ABSOLUTE_ERROR_S = 0.25e-3  # gaps under 0.22 s are float16 subnormals in hours: ~0.2 ms steps


def random_state(rng: random.Random, user: str = "u", history: int = 50) -> tuple[UserState, list[Event]]:
    """A state after a random stream: repeated and new items, out-of-order times, lists served."""
    state, events, ts = UserState(user, max_history=history), [], T0 + rng.random() * 1e6
    for n in range(rng.randint(0, 3 * history)):
        ts += rng.choice([0.0, rng.random(), rng.expovariate(1 / 60), rng.expovariate(1 / 86_400)])
        when = ts - rng.expovariate(1 / 30) if rng.random() < 0.1 else ts  # now and then out of order
        event = Event(event_id=f"{user}-{n}-{rng.getrandbits(32)}", user_id=user,
                      item_id=f"item-{rng.randrange(3 * history)}", type=rng.choice(EVENT_TYPES), ts=when)
        state.learn(event)
        events.append(event)
        if rng.random() < 0.2:
            state.serve(f"v{rng.randrange(5)}", [f"item-{rng.randrange(500)}" for _ in range(rng.randint(0, 12))])
    return state, events


def assert_same_state(got: UserState, want: UserState, read_back: bool = True) -> None:
    """Equal within the documented precision: everything exact but the times of the recent
    items (float16 gaps) and the event ids of all but the newest (digests only)."""
    assert [(i.item_id, i.type) for i in got.recent] == [(i.item_id, i.type) for i in want.recent]
    assert list(got.consumed_ids) == list(want.consumed_ids)  # the same order: least recent first
    assert got.counts == want.counts and got.n_events == want.n_events
    assert got.snapshot() == want.snapshot() and got.last_ts == want.last_ts
    assert got.out_of_order == want.out_of_order and got.last_event_id == want.last_event_id
    assert (got.served_version, got.served) == (want.served_version, want.served)
    assert got.parts().event_digests == want.parts().event_digests
    times, want_times = [i.ts for i in got.recent], [i.ts for i in want.recent]
    for later in range(1, len(times)):  # the gaps the ranker reads
        gap, want_gap = times[later] - times[later - 1], want_times[later] - want_times[later - 1]
        assert abs(gap - want_gap) <= max(GAP_RELATIVE_ERROR * abs(want_gap), GAP_ABSOLUTE_ERROR_S), later
    if want.recent:
        behind = want.last_ts - want_times[-1]  # 0 unless the newest event came out of order
        assert abs(times[-1] - want_times[-1]) <= max(GAP_RELATIVE_ERROR * behind, GAP_ABSOLUTE_ERROR_S)
        if read_back:  # (events learned since keep their ids until the next pack)
            assert all(i.event_id is None for i in got.recent[:-1])


@pytest.mark.parametrize("seed", range(40))
def test_random_states_round_trip_in_memory_and_through_the_changelog(seed: int) -> None:
    rng = random.Random(seed)
    state, _ = random_state(rng, history=rng.choice([1, 3, 50]))
    here, there = Interner(), Interner()
    there.codes(f"other-{n}" for n in range(rng.randrange(100)))  # another process's codes
    packed = pack(state, here)
    in_memory = unpack(packed, "u", here, max_history=state.max_history)
    assert_same_state(in_memory, state)
    moved = unpack(from_record(to_record(packed, here), there), "u", there, max_history=state.max_history)
    assert_same_state(moved, state)
    # packing is stable: a state read back and written again is the same bytes (no drift)
    assert pack(in_memory, here) == packed
    assert to_record(pack(moved, there), there) == to_record(packed, here)


def test_a_state_read_back_continues_learning_as_the_original() -> None:
    rng = random.Random(7)
    state, _ = random_state(rng)
    codes = Interner()
    again = unpack(pack(state, codes), "u", codes)
    for n in range(30):
        event = Event(event_id=f"next-{n}", user_id="u", item_id=f"item-{rng.randrange(60)}",
                      type=rng.choice(EVENT_TYPES), ts=(state.last_ts or T0) + 10 * (n + 1))
        assert state.learn(event) and again.learn(event)
    assert_same_state(again, state, read_back=False)


def test_events_learned_before_the_round_trip_are_not_learned_again() -> None:
    """A crash re-reads events whose state is already in the changelog: they count once."""
    state, events = random_state(random.Random(3))
    while len(events) < EVENT_IDS_KEPT:
        state, events = random_state(random.Random(len(events) + 11))
    here, there = Interner(), Interner()
    restored = unpack(from_record(to_record(pack(state, here), here), there), "u", there)
    assert [restored.learn(event) for event in events[-EVENT_IDS_KEPT:]] == [False] * EVENT_IDS_KEPT
    assert restored.n_events == state.n_events
    assert restored.learn(Event(event_id="new", user_id="u", item_id="x", type="view", ts=T0))


def test_times_keep_float16_gaps_and_extreme_gaps_are_clamped() -> None:
    state, codes = UserState("u"), Interner()
    for n, ts in enumerate([T0, T0 + 0.001, T0 + 86_400.0, T0 + 86_400.0 + 1e9]):
        state.learn(Event(event_id=f"e{n}", user_id="u", item_id="i", type="view", ts=ts))
    times = [i.ts for i in unpack(pack(state, codes), "u", codes).recent]
    assert times[-1] == T0 + 86_400.0 + 1e9  # the newest is last_ts: exact
    assert times[2] - times[1] == pytest.approx(86_400.0, rel=2**-11)
    assert times[1] - times[0] == pytest.approx(0.001, abs=GAP_ABSOLUTE_ERROR_S)
    assert times[-1] - times[-2] == pytest.approx(65_504.0 * HOUR_S)  # 31.7 years: cut to float16's 7.5


def test_consumed_items_past_the_recent_ones_are_kept_in_order() -> None:
    state, codes = UserState("u", max_history=3, max_consumed=6), Interner()
    for n, item in enumerate("abcdbefgh"):
        state.learn(Event(event_id=f"e{n}", user_id="u", item_id=item, type="click", ts=T0 + n))
    again = unpack(pack(state, codes), "u", codes, max_history=3, max_consumed=6)
    assert list(again.consumed_ids) == list(state.consumed_ids) == list("cdbefgh")[-6:]
    assert unpack(pack(state, codes), "u", codes, max_history=2, max_consumed=2).consumed == {"g", "h"}


def test_a_version_1_changelog_record_reads_back_as_the_same_state() -> None:
    """A worker restarted on the packed state reads the JSON its predecessor wrote."""
    rng = random.Random(5)
    state, events = random_state(rng)
    while not state.recent or state.served_version is None:
        state, events = random_state(rng)
    record = json.dumps(state.to_dict()).encode()  # Faust's json codec, as in the old changelog
    codes = Interner()
    migrated = unpack(from_record(record, codes), "u", codes)
    assert_same_state(migrated, state)
    assert [migrated.learn(event) for event in events[-EVENT_IDS_KEPT:]] == [False] * min(len(events), EVENT_IDS_KEPT)
    assert from_record(to_record(pack(migrated, codes), codes), codes) == pack(migrated, codes)  # written as v2


def test_a_version_1_record_with_full_8_byte_digests_still_deduplicates() -> None:
    """Records of the old code hold blake2b 8-byte digests of 256 ids; their top half is kept."""
    import base64
    import hashlib

    ids = [f"old-{n}" for n in range(300)]
    digests = b"".join(hashlib.blake2b(i.encode(), digest_size=8).digest() for i in ids[-256:])
    record = {"v": 1, "user_id": "u", "recent": [["i1", "view", T0, ids[-1]]], "consumed": ["i1"],
              "counts": {"view": 300, "click": 0, "purchase": 0}, "gap_mean": [299, 1.0], "gap_var": [299, 1.0, 2.0],
              "rates": {k: [1.0 if k == "view" else 0.0, T0 if k == "view" else None] for k in EVENT_TYPES},
              "last_ts": T0, "out_of_order": 0, "served": [None, []],
              "ids": base64.b64encode(digests).decode()}
    codes = Interner()
    state = unpack(from_record(json.dumps(record).encode(), codes), "u", codes)
    assert state.n_events == 300 and state.last_event_id == ids[-1]
    assert all(state.has_learned(i) for i in ids[-EVENT_IDS_KEPT:])
    assert not state.has_learned(ids[0]) and not state.has_learned("never-sent")


def test_the_codec_reads_records_of_items_this_process_never_saw() -> None:
    writer, reader = UserStateCodec(), UserStateCodec()
    state = UserState("u")
    state.learn(Event(event_id="e1", user_id="u", item_id="brand-new", type="purchase", ts=T0))
    state.serve("v7", ["x", "y"])
    record = writer.dumps(pack(state, writer.codes))
    packed = reader.loads(record)
    assert isinstance(packed, PackedUserState) and len(reader.codes) == 4  # the item, the list, the version
    assert_same_state(unpack(packed, "u", reader.codes), state)
    with pytest.raises(TypeError):
        writer.dumps(state.to_dict())


@pytest.mark.parametrize("corrupt", [
    b"", b"\x07garbage", b"\x02short", b"{not json", b"[1, 2]", b'{"v": 3}',
    "cut",  # a valid record cut short
    "pool",  # an item index past the string pool
])
def test_corrupt_records_are_refused_with_a_reason(corrupt: bytes | str) -> None:
    state, _ = random_state(random.Random(1))
    codes = Interner()
    record = to_record(pack(state, codes), codes)
    if corrupt == "cut":
        corrupt = record[:-3]
    elif corrupt == "pool":
        corrupt = record[:107] + (10_000).to_bytes(4, "little") + record[111:]
    with pytest.raises(ValueError, match="user state|version|JSON"):
        from_record(corrupt, Interner())
    assert UserStateCodec().loads(corrupt) == corrupt  # handed on raw: restore() says why


def test_packed_bytes_with_codes_this_process_never_gave_out_are_refused() -> None:
    state, _ = random_state(random.Random(2))
    while not state.recent:
        state, _ = random_state(random.Random(len(state.recent) + 9))
    codes = Interner()
    packed = pack(state, codes)
    with pytest.raises(ValueError, match="never gave out"):
        unpack(packed, "u", Interner())
    with pytest.raises(ValueError, match="bytes"):
        unpack(PackedUserState(packed.data[:-1]), "u", codes)


def test_the_worker_restores_a_corrupt_state_as_a_fresh_user(caplog: pytest.LogCaptureFixture) -> None:
    context = SimpleNamespace(settings=Settings(), item_codes=Interner())
    restore = WorkerContext.restore.__get__(context)  # the worker's own restore, without an app
    with caplog.at_level(logging.WARNING):
        assert restore("u", b"\x02broken") is None
    assert "dropping unreadable state of user 'u'" in caplog.text
    state, _ = random_state(random.Random(4))
    assert_same_state(restore("u", pack(state, context.item_codes)), state)
    assert_same_state(restore("u", json.dumps(state.to_dict()).encode()), state)  # a v1 record, raw
    assert restore("u", None) is None


def test_a_packed_state_is_a_fraction_of_the_plain_data() -> None:
    state, _ = random_state(random.Random(8))
    while len(state.recent) < 50:
        state, _ = random_state(random.Random(len(state.recent) + 100))
    codes = Interner()
    packed = pack(state, codes)
    # 107 header + 50 x (4 code + 2 gap + 1/4 type) + 64 x 4 digests + served, extra, newest id
    assert len(packed.data) <= 107 + 50 * 6.25 + 4 * EVENT_IDS_KEPT + 4 * len(state.served) + 4 * 3 * 50 + 64
    assert len(packed.data) < len(json.dumps(state.to_dict())) / 4
    assert not math.isnan(unpack(packed, "u", codes).snapshot()["gap_mean_s"])
