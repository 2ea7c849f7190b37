"""Memory benchmark: resident memory per 100k users of state and per 100k items indexed.

Two parts, each measured in a fresh Python process (`python -m streamrec.consumers.tools.bench_memory
--part users|items`) so that one part's allocations do not show up in the other's figures:

- **users** (`bench_memory_users.py`): `users` `UserState`s, each having learned `recent` events (the synthetic world's
  id formats, event types mixed 75/20/5 %). Measured as RSS deltas: the live `UserState`
  objects (what a micro-batch works on), the packed states (what the worker's `memory://` table
  holds for every user between batches) and their changelog records (what the changelog, and a
  `rocksdb://` store, hold), beside the version 1 `to_dict()` plain data and its JSON (what they
  held before the packed state); pack / unpack times per user beside to_dict / from_dict. A tracemalloc pass over a small sample
  says where the bytes of one `UserState` go, by allocation site.
- **items** (`bench_memory_items.py`): a Qdrant Edge shard (`EdgeItemIndex`) behind `CachedItemIndex`, as the worker
  opens it, with `items` random clustered 384-d unit vectors: upserted, `optimize()`d (HNSW),
  then read back through `get` so the cache holds every vector; plus a sample of neighbour
  lists, extrapolated to the neighbour cache's capacity. RSS deltas after each step.

Item ids are shared string objects (a catalogue's ids repeat across users, and the worker's
JSON decoding caches short strings); event ids are unique per event, as on the bus.

`run_memory_bench(users, items)` returns the figures as a dict and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from streamrec.consumers.tools.bench_memory_items import TEXT_DIM, measure_items
from streamrec.consumers.tools.bench_memory_users import (
    CATALOGUE_ITEMS,
    RECENT_ITEMS,
    TARGET_MIB_PER_100K_USERS,
    measure_users,
)
from streamrec.consumers.tools.bench_report import write_figures
from streamrec.consumers.tools.memory_measure import SCALE, say

PART_TIMEOUT_S = 1_800.0


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
    say(f"[memory] users part: {users} users x {recent} recent items (fresh process) ...", quiet)
    user_figures = _run_part("users", ["--users", str(users), "--recent", str(recent), "--seed", str(seed)], quiet)
    say(f"[memory] items part: {items} items, {dim}-d, Qdrant Edge + cache (fresh process) ...", quiet)
    item_figures = _run_part("items", ["--items", str(items), "--dim", str(dim), "--seed", str(seed)], quiet)
    results = {
        "settings": {"users": users, "items": items, "recent_items": recent, "dim": dim, "seed": seed,
                     "catalogue_item_ids": CATALOGUE_ITEMS, "scale": SCALE, "python": sys.version.split()[0]},
        "users": user_figures,
        "items": item_figures,
        "mib_per_100k_users": user_figures["mib_per_100k_users"]["user_state_objects"],
        "mib_per_100k_users_table": user_figures["mib_per_100k_users"]["packed"],
        "mib_per_100k_users_table_before": user_figures["mib_per_100k_users"]["table_dicts"],
        "mib_per_100k_items": item_figures["mib_per_100k_items"]["total"],
        "target_mib_per_100k_users": TARGET_MIB_PER_100K_USERS,
        "meets_target": user_figures["meets_target"],
    }
    if not quiet:
        print_table(results)
    if out is not None:
        write_figures(out, results)
        say(f"\nwrote {out}", quiet)
    return results


def print_table(results: dict) -> None:
    u, i = results["users"], results["items"]
    per_u, per_i = u["mib_per_100k_users"], i["mib_per_100k_items"]
    print(f"\nusers: {u['users']} states x {u['recent_items']} recent items "
          f"(target <= {results['target_mib_per_100k_users']:.0f} MiB per 100k users)")
    print(f"{'form':<34} {'MiB/100k users':>15} {'bytes/user':>11}")
    rows = [("UserState objects (RSS)", "user_state_objects"), ("UserState objects (tracemalloc)", "user_state_traced"),
            ("table values, packed (RSS)", "packed"), ("changelog, packed records", "packed_record"),
            ("before: table values, to_dict() (RSS)", "table_dicts"), ("before: changelog, JSON bytes", "json")]
    for label, key in rows:
        print(f"{label:<38} {per_u[key]:>11} {u['bytes_per_user'][key]:>11}")
    print(f"(a packed state's bytes object holds {u['bytes_per_user']['packed_payload']} B; item dictionary: "
          f"{u['item_dictionary']['items']} ids, ~{u['item_dictionary']['bytes_per_item']} B each, shared by all users)")
    print(f"target met (packed table values): {'yes' if results['meets_target'] else 'no'}")
    t = u["us_per_user"]
    print(f"per user (µs): pack {t['pack']} / unpack {t['unpack']}  vs  to_dict {t['to_dict']} / from_dict "
          f"{t['from_dict']};  changelog record out {t['to_record']} / in {t['from_record']} (JSON dumps {t['json_dumps']})")
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
