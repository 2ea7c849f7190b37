"""The memory bench's users part: RSS of `UserState`s, their table values and their JSON.

`users` states each learn `recent` events (the synthetic world's id formats, event types mixed
75/20/5 %), measured as RSS deltas in a fresh process (`bench_memory.py` starts it): the live
objects, their `to_dict()` plain data (what a `memory://` table holds between batches) and the
JSON bytes of that data (the changelog). A tracemalloc pass over a small sample says where the
bytes of one `UserState` go, by allocation site.
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
from streamrec.models.core.state import UserState
from streamrec.models.data.synthetic import TYPE_PROBABILITIES

TARGET_MIB_PER_100K_USERS = 40.0  # issue 6: resident state per 100k users, 50 recent items each
RECENT_ITEMS = 50  # events learned per user (= the default history length)
CATALOGUE_ITEMS = 10_000  # distinct item ids the users' events touch
PROFILE_USERS = 1_000  # users built under tracemalloc for the breakdown
TOP_SITES = 8  # allocation sites listed in the breakdown
T0 = 1_750_000_000.0


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


def measure_users(users: int, recent: int = RECENT_ITEMS, seed: int = 7, quiet: bool = False) -> dict:
    """RSS of `users` states with `recent` events each: objects, table dicts, JSON bytes."""
    if users < 1 or recent < 1:
        raise ValueError("users and recent must be >= 1")
    baseline = settled_rss()
    started = time.perf_counter()
    states = _build_states(users, recent, seed, progress=not quiet)
    build_s = time.perf_counter() - started
    with_states = settled_rss()
    complete = sum(len(state.recent) == recent and state.n_events == recent for state in states)
    tables = [state.to_dict() for state in states]
    with_tables = settled_rss()
    json_bytes = sum(len(json.dumps(data).encode()) for data in tables)  # Faust's json codec
    sample = tables[: min(users, 100)]
    round_trips = all(UserState.from_dict(d, max_history=recent).to_dict() == d for d in sample)
    del states, tables
    gc.collect()
    say(f"[memory] users: tracing allocations of {min(users, PROFILE_USERS)} more states ...", quiet)
    traced_per_user, sites = _allocation_sites(min(users, PROFILE_USERS), recent, seed)
    state_bytes = with_states - baseline
    table_bytes = with_tables - with_states
    per_100k = {
        "user_state_objects": per_scale(state_bytes, users),
        "table_dicts": per_scale(table_bytes, users),
        "json": per_scale(json_bytes, users),
        "user_state_traced": per_scale(traced_per_user * users, users),
    }
    return {
        "users": users,
        "recent_items": recent,
        "states_complete": complete,
        "round_trip_ok": round_trips,
        "build_s": round(build_s, 2),
        "rss_delta_mib": {
            "user_state_objects": round(state_bytes / MIB, 1),
            "table_dicts": round(table_bytes / MIB, 1),
        },
        "json_mib": round(json_bytes / MIB, 1),
        "bytes_per_user": {
            "user_state_objects": round(state_bytes / users),
            "table_dicts": round(table_bytes / users),
            "json": round(json_bytes / users),
            "user_state_traced": round(traced_per_user),
        },
        "mib_per_100k_users": per_100k,
        "target_mib_per_100k_users": TARGET_MIB_PER_100K_USERS,
        "meets_target": per_100k["user_state_objects"] <= TARGET_MIB_PER_100K_USERS
        and per_100k["table_dicts"] <= TARGET_MIB_PER_100K_USERS,
        "allocation_sites": sites,
    }
