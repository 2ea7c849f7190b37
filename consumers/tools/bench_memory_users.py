"""The memory bench's users part: RSS of `UserState`s, their table values and their changelog.

`users` states each learn `recent` events (the synthetic world's id formats, event types mixed
75/20/5 %) and are served a list of `SERVED_ITEMS`, measured as RSS deltas in a fresh process
(`bench_memory.py` starts it): the live objects (what a micro-batch works on), the packed
states (`packed_state.pack`: what the worker's `memory://` table holds between batches since
issue 16), beside the version 1 `to_dict()` plain data (what it held before) and the bytes of
a changelog record of each (`to_record` / JSON). The times to pack and unpack a state (every
user of every micro-batch, on the worker's hot path) beside `to_dict` / `from_dict`. A
tracemalloc pass over a small sample says where the bytes of one `UserState` go.
"""

from __future__ import annotations

import gc
import json
import linecache
import random
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from streamrec.consumers.tools.memory_measure import MIB, per_scale, say, settled_rss
from streamrec.models.core.interner import Interner
from streamrec.models.core.packed_state import from_record, pack, to_record, unpack
from streamrec.models.core.state import UserState
from streamrec.models.data.synthetic import TYPE_PROBABILITIES

TARGET_MIB_PER_100K_USERS = 40.0  # issue 6: resident state per 100k users, 50 recent items each
RECENT_ITEMS = 50  # events learned per user (= the default history length)
CATALOGUE_ITEMS = 10_000  # distinct item ids the users' events touch
PROFILE_USERS = 1_000  # users built under tracemalloc for the breakdown
TOP_SITES = 8  # allocation sites listed in the breakdown
T0 = 1_750_000_000.0
SERVED_ITEMS = 10  # items of the last list served to each user (the default k)
TIMED_USERS = 2_000  # states packed / unpacked (and to_dict / from_dict) for the timings


class _Touch(NamedTuple):
    """The fields of an `Event` that `UserState.learn` reads (an `Event` costs ~10 µs to
    build; 5M of them would dominate the run). Same field names, so `learn` cannot tell."""

    event_id: str
    user_id: str
    item_id: str
    type: str
    ts: float


#: SyntheticWorld's item ids; one shared string object per catalogue item.
_CATALOGUE = [f"i{n:05d}" for n in range(CATALOGUE_ITEMS)]


def _user_streams(users: int, recent: int, seed: int) -> Iterator[tuple[str, list[_Touch]]]:
    """Per user: `recent` time-ordered events on a shared catalogue, types 75/20/5 %.

    The strings and floats made here are the ones a state keeps (the allocation breakdown
    names these lines): unique event ids and event times; item ids and types are shared.
    """
    rng = random.Random(seed)
    kinds, weights = zip(*TYPE_PROBABILITIES)
    serial = 0
    for n in range(users):
        user_id = f"u{n:04d}"  # SyntheticWorld's user ids
        ts = T0 + rng.random() * 86_400.0
        touches = []
        for kind in rng.choices(kinds, weights, k=recent):
            event_time = ts = ts + rng.expovariate(1 / 60.0)
            event_id = f"syn-{seed}-0-{serial}"
            touches.append(_Touch(event_id, user_id, rng.choice(_CATALOGUE), kind, event_time))
            serial += 1
        yield user_id, touches


def _build_states(users: int, recent: int, seed: int, progress: bool = False) -> list[UserState]:
    states = []
    every = max(users // 5, 1)
    for n, (user_id, touches) in enumerate(_user_streams(users, recent, seed), start=1):
        state = UserState(user_id, max_history=recent)
        for touch in touches:
            state.learn(touch)  # type: ignore[arg-type]  # duck-typed Event, see _Touch
        state.serve("ranker-0001", _CATALOGUE[n % 997 : n % 997 + SERVED_ITEMS])
        states.append(state)
        if progress and n % every == 0:
            say(f"[memory] users: {n}/{users} states built")
    return states


def _allocation_sites(users: int, recent: int, seed: int) -> tuple[float, list[dict[str, Any]]]:
    """Bytes per user traced by tracemalloc (no allocator slack), and the top sites."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        states = _build_states(users, recent, seed + 1)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    stats = [
        stat for stat in after.compare_to(before, "lineno")
        if stat.size_diff > 0 and not stat.traceback[0].filename.endswith("tracemalloc.py")
    ]
    total = sum(stat.size_diff for stat in stats)
    sites = []
    for stat in sorted(stats, key=lambda s: s.size_diff, reverse=True)[:TOP_SITES]:
        frame = stat.traceback[0]
        sites.append({
            "site": f"{Path(frame.filename).name}:{frame.lineno}",
            "code": linecache.getline(frame.filename, frame.lineno).strip()[:80],
            "bytes_per_user": round(stat.size_diff / users),
            "blocks_per_user": round(stat.count_diff / users, 1),
        })
    del states
    return total / users, sites


def _per_user_us(function: Any, values: list) -> float:
    """Best of three passes over `values`, µs per value."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for value in values:
            function(value)
        best = min(best, time.perf_counter() - started)
    return best / len(values) * 1e6


def _timings(states: list[UserState], recent: int, codes: Interner) -> dict[str, float]:
    """µs per user: pack / unpack (and the changelog record both ways) beside to_dict / from_dict."""
    sample = states[:TIMED_USERS]
    packed = [pack(state, codes) for state in sample]
    dicts = [state.to_dict() for state in sample]
    records = [to_record(p, codes) for p in packed]
    other = Interner()  # a restarted worker's codes

    return {
        "pack": round(_per_user_us(lambda s: pack(s, codes), sample), 1),
        "unpack": round(_per_user_us(lambda p: unpack(p, "u", codes, max_history=recent), packed), 1),
        "to_dict": round(_per_user_us(lambda s: s.to_dict(), sample), 1),
        "from_dict": round(_per_user_us(lambda d: UserState.from_dict(d, max_history=recent), dicts), 1),
        "to_record": round(_per_user_us(lambda p: to_record(p, codes), packed), 1),
        "from_record": round(_per_user_us(lambda r: from_record(r, other), records), 1),
        "json_dumps": round(_per_user_us(json.dumps, dicts), 1),
    }


def measure_users(users: int, recent: int = RECENT_ITEMS, seed: int = 7, quiet: bool = False) -> dict:
    """RSS of `users` states with `recent` events each: objects, packed states, table dicts,
    changelog bytes; pack / unpack times."""
    if users < 1 or recent < 1:
        raise ValueError("users and recent must be >= 1")
    baseline = settled_rss()
    started = time.perf_counter()
    states = _build_states(users, recent, seed, progress=not quiet)
    build_s = time.perf_counter() - started
    with_states = settled_rss()
    complete = sum(len(state.recent) == recent and state.n_events == recent for state in states)
    codes = Interner()
    codes.codes(_CATALOGUE)  # the item dictionary as a worker holds it: every item seen (shared strings)
    codes.code("ranker-0001")
    with_codes = settled_rss()
    packed = [pack(state, codes) for state in states]
    with_packed = settled_rss()
    record_bytes = sum(len(to_record(p, codes)) for p in packed)
    packed_payload = sum(len(p.data) for p in packed)
    sample = min(users, 100)
    packed_ok = all(unpack(p, s.user_id, codes, max_history=recent).snapshot() == s.snapshot()
                    for p, s in zip(packed[:sample], states[:sample]))
    tables = [state.to_dict() for state in states]
    with_tables = settled_rss()
    json_bytes = sum(len(json.dumps(data).encode()) for data in tables)  # Faust's json codec
    round_trips = all(UserState.from_dict(d, max_history=recent).to_dict() == d for d in tables[:sample])
    del tables, packed
    gc.collect()
    say(f"[memory] users: timing pack / unpack of {min(users, TIMED_USERS)} states ...", quiet)
    timings = _timings(states, recent, codes)
    del states
    gc.collect()
    say(f"[memory] users: tracing allocations of {min(users, PROFILE_USERS)} more states ...", quiet)
    traced_per_user, sites = _allocation_sites(min(users, PROFILE_USERS), recent, seed)
    state_bytes = with_states - baseline
    codes_bytes = with_codes - with_states
    packed_bytes = with_packed - with_codes
    table_bytes = with_tables - with_packed
    per_100k = {
        "user_state_objects": per_scale(state_bytes, users),
        "packed": per_scale(packed_bytes, users),
        "packed_record": per_scale(record_bytes, users),
        "table_dicts": per_scale(table_bytes, users),
        "json": per_scale(json_bytes, users),
        "user_state_traced": per_scale(traced_per_user * users, users),
    }
    return {
        "users": users,
        "recent_items": recent,
        "served_items": SERVED_ITEMS,
        "states_complete": complete,
        "round_trip_ok": round_trips and packed_ok,
        "build_s": round(build_s, 2),
        "rss_delta_mib": {
            "user_state_objects": round(state_bytes / MIB, 1),
            "packed": round(packed_bytes / MIB, 1),
            "table_dicts": round(table_bytes / MIB, 1),
            "item_dictionary": round(codes_bytes / MIB, 1),
        },
        "item_dictionary": {"items": len(codes), "bytes_per_item": round(codes_bytes / len(codes))},
        "json_mib": round(json_bytes / MIB, 1),
        "bytes_per_user": {
            "user_state_objects": round(state_bytes / users),
            "packed": round(packed_bytes / users),
            "packed_payload": round(packed_payload / users),
            "packed_record": round(record_bytes / users),
            "table_dicts": round(table_bytes / users),
            "json": round(json_bytes / users),
            "user_state_traced": round(traced_per_user),
        },
        "mib_per_100k_users": per_100k,
        "us_per_user": timings,
        "target_mib_per_100k_users": TARGET_MIB_PER_100K_USERS,
        "meets_target": per_100k["packed"] <= TARGET_MIB_PER_100K_USERS,
        "allocation_sites": sites,
    }
