"""Memory benchmark: resident memory per 100k users of state and per 100k items indexed.

Two parts, each measured in a fresh Python process (`python -m streamrec.consumers.tools.bench_memory
--part users|items`) so that one part's allocations do not show up in the other's figures:

- **users**: `users` `UserState`s, each having learned `recent` events (the synthetic world's
  id formats, event types mixed 75/20/5 %). Measured as RSS deltas: the live `UserState`
  objects (what a micro-batch works on), their `to_dict()` plain data (what the worker's
  `memory://` table holds for every user between batches), and the JSON bytes of that data
  (what the changelog, and a `rocksdb://` store, hold). A tracemalloc pass over a small sample
  says where the bytes of one `UserState` go, by allocation site.
- **items**: a Qdrant Edge shard (`EdgeItemIndex`) behind `CachedItemIndex`, as the worker
  opens it, with `items` random clustered 384-d unit vectors: upserted, `optimize()`d (HNSW),
  then read back through `get` so the cache holds every vector; plus a sample of neighbour
  lists, extrapolated to the neighbour cache's capacity. RSS deltas after each step.

Item ids are shared string objects (a catalogue's ids repeat across users, and the worker's
JSON decoding caches short strings); event ids are unique per event, as on the bus.

`run_memory_bench(users, items)` returns the figures as a dict and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import linecache
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from streamrec.consumers.tools.bench_report import write_figures
from streamrec.models.core.state import UserState
from streamrec.models.data.synthetic import TYPE_PROBABILITIES, SyntheticWorld
from streamrec.models.index.protocol import IndexedItem
from streamrec.stream.settings import Settings

SCALE = 100_000  # figures are reported per this many users / items
TARGET_MIB_PER_100K_USERS = 40.0  # issue 6: resident state per 100k users, 50 recent items each
RECENT_ITEMS = 50  # events learned per user (= the default history length)
CATALOGUE_ITEMS = 10_000  # distinct item ids the users' events touch
TEXT_DIM = 384  # all-MiniLM-L6-v2's vector size
CLUSTERS = 64  # random item vectors are drawn around this many centres
CLUSTER_NOISE = 0.35  # spread of an item vector around its centre (before normalising)
UPSERT_BATCH = 1_000  # items per Qdrant Edge upsert / per cache read
NEIGHBOUR_SAMPLE = 2_000  # items whose neighbour list is filled and measured
PROFILE_USERS = 1_000  # users built under tracemalloc for the breakdown
TOP_SITES = 8  # allocation sites listed in the breakdown
T0 = 1_750_000_000.0
MIB = 2**20
PART_TIMEOUT_S = 1_800.0


# --- measuring --------------------------------------------------------------------------
def rss_bytes() -> int:
    """Resident set size of this process (/proc/self/statm), bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_split() -> dict[str, int]:
    """RssAnon (heap) and RssFile (mapped files, e.g. Qdrant's segments), bytes."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("RssAnon:", "RssFile:")):
                name, value, _ = line.split()
                out[name.rstrip(":")] = int(value) * 1024
    return out


def _settled_rss() -> int:
    gc.collect()
    return rss_bytes()


def _per_scale(delta_bytes: float, count: int) -> float:
    return round(delta_bytes / max(count, 1) * SCALE / MIB, 1)


def _say(text: str, quiet: bool = False) -> None:
    if not quiet:
        print(text, flush=True)


# --- users ------------------------------------------------------------------------------
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
            _say(f"[memory] users: {n}/{users} states built")
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
    baseline = _settled_rss()
    started = time.perf_counter()
    states = _build_states(users, recent, seed, progress=not quiet)
    build_s = time.perf_counter() - started
    with_states = _settled_rss()
    complete = sum(len(state.recent) == recent and state.n_events == recent for state in states)
    tables = [state.to_dict() for state in states]
    with_tables = _settled_rss()
    json_bytes = sum(len(json.dumps(data).encode()) for data in tables)  # Faust's json codec
    sample = tables[: min(users, 100)]
    round_trips = all(UserState.from_dict(d, max_history=recent).to_dict() == d for d in sample)
    del states, tables
    gc.collect()
    _say(f"[memory] users: tracing allocations of {min(users, PROFILE_USERS)} more states ...", quiet)
    traced_per_user, sites = _allocation_sites(min(users, PROFILE_USERS), recent, seed)
    state_bytes = with_states - baseline
    table_bytes = with_tables - with_states
    per_100k = {
        "user_state_objects": _per_scale(state_bytes, users),
        "table_dicts": _per_scale(table_bytes, users),
        "json": _per_scale(json_bytes, users),
        "user_state_traced": _per_scale(traced_per_user * users, users),
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


# --- items ------------------------------------------------------------------------------
def _clustered_unit_vectors(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    labels = rng.integers(0, len(centres), size=n)
    vectors = centres[labels] + CLUSTER_NOISE * rng.normal(size=(n, centres.shape[1]))  # (n, D)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def _directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure_items(
    items: int, dim: int = TEXT_DIM, seed: int = 7, neighbour_sample: int = NEIGHBOUR_SAMPLE,
    quiet: bool = False,
) -> dict:
    """RSS of a Qdrant Edge shard with `items` vectors behind `CachedItemIndex`, step by step.

    The shard's fixed cost (opening an empty one) is reported apart from the per-item cost.
    The cache is sized to hold every item (the worker's holds `STREAMREC_ITEM_CACHE_SIZE`,
    50k by default). A neighbour list is measured with tracemalloc on a sample (after a
    search warm-up, so Qdrant paging in its graph does not count) and extrapolated to the
    settings' `neighbour_cache_size`.
    """
    from streamrec.models.index.cache import CachedItemIndex
    from streamrec.models.index.edge import EdgeItemIndex

    if items < 1:
        raise ValueError("items must be >= 1")
    settings = Settings()
    world = SyntheticWorld(seed=seed, n_items=items, n_users=1)
    ids_titles = [(item.item_id, str((item.attributes or {})["title"])) for item in world.items(0.0)]
    del world
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, dim))
    sample = [item_id for item_id, _ in ids_titles[: min(items, neighbour_sample)]]
    work = Path(tempfile.mkdtemp(prefix="streamrec-bench-memory-"))
    index: CachedItemIndex | None = None
    try:
        rss: dict[str, int] = {"baseline": _settled_rss()}
        split: dict[str, dict[str, int]] = {"baseline": rss_split()}
        index = CachedItemIndex(
            EdgeItemIndex(work, dim, name="items", hnsw_ef=settings.hnsw_ef),
            items=items,
            neighbour_lists=settings.neighbour_cache_size,
        )
        rss["opened"], split["opened"] = _settled_rss(), rss_split()
        started = time.perf_counter()
        for start in range(0, items, UPSERT_BATCH):
            chunk = ids_titles[start : start + UPSERT_BATCH]
            vectors = _clustered_unit_vectors(rng, centres, len(chunk))  # (n, D)
            index.upsert([IndexedItem(i, v, t) for (i, t), v in zip(chunk, vectors)])
        upsert_s = time.perf_counter() - started
        rss["upserted"] = _settled_rss()
        _say(f"[memory] items: {items} upserted in {upsert_s:.1f}s; optimize() ...", quiet)
        started = time.perf_counter()
        index.optimize()
        optimize_s = time.perf_counter() - started
        counted = index.count()
        queries = _clustered_unit_vectors(rng, centres, len(sample))  # (S, D)
        for start in range(0, len(queries), 100):  # warm-up: Qdrant pages in what search reads
            index.search_batch(queries[start : start + 100], limit=10, with_items=False)
        rss["optimized"], split["optimized"] = _settled_rss(), rss_split()
        _say(f"[memory] items: optimized in {optimize_s:.1f}s; reading every vector into the cache ...", quiet)
        gc.collect()
        tracemalloc.start()  # the cache is Python objects and numpy arrays: traced exactly
        try:
            started = time.perf_counter()
            cached = 0
            for start in range(0, items, UPSERT_BATCH):
                cached += len(index.get([item_id for item_id, _ in ids_titles[start : start + UPSERT_BATCH]]))
            get_s = time.perf_counter() - started
            gc.collect()
            cache_traced = tracemalloc.get_traced_memory()[0]
            rss["cached"] = rss_bytes()
            lists = index.similar(sample, limit=10)
            gc.collect()
            list_bytes = tracemalloc.get_traced_memory()[0] - cache_traced - _deep_list_size(lists)
        finally:
            tracemalloc.stop()
        disk = _directory_bytes(work)
    finally:
        if index is not None:
            index.close()
        shutil.rmtree(work, ignore_errors=True)

    def mib(a: str, b: str) -> float:
        return round((rss[b] - rss[a]) / MIB, 1)

    def split_mib(kind: str) -> float:
        return round((split["optimized"].get(kind, 0) - split["opened"].get(kind, 0)) / MIB, 1)

    per_item_edge = rss["optimized"] - rss["opened"]
    per_item_cache = cache_traced
    per_list = list_bytes / max(len(sample), 1)
    lists_kept = min(items, settings.neighbour_cache_size)
    return {
        "items": items,
        "dim": dim,
        "counted": counted,
        "cached": cached,
        "neighbour_lists_sampled": sum(1 for hits in lists if hits),
        "upsert_s": round(upsert_s, 2),
        "optimize_s": round(optimize_s, 2),
        "get_s": round(get_s, 2),
        "rss_delta_mib": {
            "edge_open_empty": mib("baseline", "opened"),
            "edge_upserts": mib("opened", "upserted"),
            "edge_after_optimize_and_search": mib("opened", "optimized"),
            "edge_anon": split_mib("RssAnon"),
            "edge_file": split_mib("RssFile"),
            "vector_cache": mib("optimized", "cached"),
        },
        "vector_cache_traced_mib": round(cache_traced / MIB, 1),
        "shard_disk_mib": round(disk / MIB, 1),
        "raw_vectors_mib": round(items * dim * 4 / MIB, 1),
        "mib_per_100k_items": {
            "edge_index": _per_scale(per_item_edge, items),
            "vector_cache": _per_scale(per_item_cache, items),
            "total": _per_scale(per_item_edge + per_item_cache, items),
        },
        "neighbour_list_bytes": round(per_list),
        "neighbour_cache_mib_at_capacity": round(per_list * lists_kept / MIB, 1),
        "neighbour_cache_capacity": lists_kept,
    }


def _deep_list_size(lists: list) -> int:
    """What `similar`'s answer itself holds (not the cache): its lists, not the shared hits."""
    return sys.getsizeof(lists) + sum(sys.getsizeof(hits) for hits in lists)


# --- the two parts in fresh processes ---------------------------------------------------
def _run_part(part: str, args: list[str], quiet: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="streamrec-bench-memory-") as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "streamrec.consumers.tools.bench_memory", "--part", part,
                   *args, "--result", str(result)] + (["--quiet"] if quiet else [])
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        completed = subprocess.run(command, env=env, stderr=subprocess.PIPE, timeout=PART_TIMEOUT_S)
        if completed.returncode != 0 or not result.exists():
            tail = completed.stderr.decode(errors="replace")[-3000:]
            raise RuntimeError(f"memory bench part {part!r} failed (exit {completed.returncode}):\n{tail}")
        return json.loads(result.read_text())


def run_memory_bench(
    users: int,
    items: int,
    *,
    recent: int = RECENT_ITEMS,
    dim: int = TEXT_DIM,
    seed: int = 7,
    out: Path | None = None,
    quiet: bool = False,
) -> dict:
    """Both parts, each in a fresh process; returns (and prints) the figures."""
    _say(f"[memory] users part: {users} users x {recent} recent items (fresh process) ...", quiet)
    user_figures = _run_part("users", ["--users", str(users), "--recent", str(recent), "--seed", str(seed)], quiet)
    _say(f"[memory] items part: {items} items, {dim}-d, Qdrant Edge + cache (fresh process) ...", quiet)
    item_figures = _run_part("items", ["--items", str(items), "--dim", str(dim), "--seed", str(seed)], quiet)
    results = {
        "settings": {"users": users, "items": items, "recent_items": recent, "dim": dim, "seed": seed,
                     "catalogue_item_ids": CATALOGUE_ITEMS, "scale": SCALE, "python": sys.version.split()[0]},
        "users": user_figures,
        "items": item_figures,
        "mib_per_100k_users": user_figures["mib_per_100k_users"]["user_state_objects"],
        "mib_per_100k_users_table": user_figures["mib_per_100k_users"]["table_dicts"],
        "mib_per_100k_items": item_figures["mib_per_100k_items"]["total"],
        "target_mib_per_100k_users": TARGET_MIB_PER_100K_USERS,
        "meets_target": user_figures["meets_target"],
    }
    if not quiet:
        print_table(results)
    if out is not None:
        write_figures(out, results)
        _say(f"\nwrote {out}", quiet)
    return results


def print_table(results: dict) -> None:
    u, i = results["users"], results["items"]
    per_u, per_i = u["mib_per_100k_users"], i["mib_per_100k_items"]
    print(f"\nusers: {u['users']} states x {u['recent_items']} recent items "
          f"(target <= {results['target_mib_per_100k_users']:.0f} MiB per 100k users)")
    print(f"{'form':<34} {'MiB/100k users':>15} {'bytes/user':>11}")
    rows = [("UserState objects (RSS)", "user_state_objects"), ("UserState objects (tracemalloc)", "user_state_traced"),
            ("table values, to_dict() (RSS)", "table_dicts"), ("changelog, JSON bytes", "json")]
    for label, key in rows:
        print(f"{label:<34} {per_u[key]:>15} {u['bytes_per_user'][key]:>11}")
    print(f"target met: {'yes' if results['meets_target'] else 'no'}")
    print("\nwhere one UserState's bytes go (tracemalloc, top sites):")
    for site in u["allocation_sites"]:
        print(f"  {site['bytes_per_user']:>7} B/user  {site['site']:<22} {site['code']}")
    print(f"\nitems: {i['items']} x {i['dim']}-d, Qdrant Edge (HNSW) + CachedItemIndex")
    print(f"{'part':<34} {'MiB/100k items':>15}")
    print(f"{'Qdrant Edge shard (RSS)':<34} {per_i['edge_index']:>15}")
    print(f"{'vector cache (tracemalloc)':<34} {per_i['vector_cache']:>15}")
    print(f"{'total':<34} {per_i['total']:>15}")
    delta = i["rss_delta_mib"]
    print(f"(plus {delta['edge_open_empty']} MiB to open an empty shard; Edge RSS anon "
          f"{delta['edge_anon']} / file-backed {delta['edge_file']} MiB; shard on disk "
          f"{i['shard_disk_mib']} MiB, raw vectors {i['raw_vectors_mib']} MiB; upsert {i['upsert_s']}s, "
          f"optimize {i['optimize_s']}s)")
    print(f"(a neighbour list: {i['neighbour_list_bytes']} B; "
          f"{i['neighbour_cache_mib_at_capacity']} MiB with {i['neighbour_cache_capacity']} lists kept)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Resident memory per 100k users of state and per 100k items.")
    parser.add_argument("--users", type=int, default=SCALE)
    parser.add_argument("--items", type=int, default=SCALE)
    parser.add_argument("--recent", type=int, default=RECENT_ITEMS, help="events learned per user")
    parser.add_argument("--dim", type=int, default=TEXT_DIM)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--part", choices=["users", "items"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)  # a part's JSON, for the parent
    parser.add_argument("--quiet", action="store_true", help="no progress lines and no table")
    args = parser.parse_args(argv)
    if args.part is None:
        run_memory_bench(args.users, args.items, recent=args.recent, dim=args.dim, seed=args.seed,
                         out=args.out, quiet=args.quiet)
        return 0
    if args.part == "users":
        figures = measure_users(args.users, args.recent, args.seed, quiet=args.quiet)
    else:
        figures = measure_items(args.items, args.dim, args.seed, quiet=args.quiet)
    text = json.dumps(figures)
    if args.result is not None:
        args.result.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
