"""`streamrec bench`: throughput and latency of the core the workers run (no broker involved).

Prints a table and writes JSON: catalogue embedding (items/s), and the event -> list pipeline
(learn, retrieve from Qdrant Edge, score, top-K) per micro-batch size.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from streamrec.models.pipeline import Pipeline
from streamrec.models.recommender import UserBatch
from streamrec.models.state import UserState
from streamrec.models.synthetic import SyntheticWorld
from streamrec.stream.settings import Settings

BATCH_SIZES = (1, 16, 256)
WARMUP_EVENTS = 2_000
T0 = 1_750_000_000.0


def _group(events: list) -> dict[str, list]:
    by_user: dict[str, list] = {}
    for event in events:
        by_user.setdefault(event.user_id, []).append(event)
    return by_user


def run_bench(n_items: int, n_users: int, events_per_size: int, out: Path | None) -> dict:
    work = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    try:
        settings = Settings(data_dir=work)
        pipeline = Pipeline.from_settings(settings)
        world = SyntheticWorld(seed=3, n_items=n_items, n_users=n_users)
        items = world.items(ts=T0)
        started = time.perf_counter()
        pipeline.catalog.upsert(items)
        embed_s = time.perf_counter() - started
        results: dict = {
            "device": str(pipeline.catalog.encoder.device) if hasattr(pipeline.catalog.encoder, "device") else "cpu",
            "items": n_items,
            "users": n_users,
            "embed_items_per_s": round(n_items / embed_s, 1),
            "batches": [],
        }
        states: dict[str, UserState] = {}

        def process(chunk: list) -> float:
            batch = [UserBatch(states.setdefault(u, UserState(u)), evs) for u, evs in _group(chunk).items()]
            begin = time.perf_counter()
            pipeline.recommender.process_batch(batch)
            return time.perf_counter() - begin

        stream = iter(world.events(WARMUP_EVENTS + events_per_size * len(BATCH_SIZES), start_ts=T0))
        warm = [next(stream) for _ in range(WARMUP_EVENTS)]
        for start in range(0, len(warm), 64):
            process(warm[start : start + 64])
        for size in BATCH_SIZES:
            chunk_events = [next(stream) for _ in range(events_per_size)]
            timings = [process(chunk_events[i : i + size]) for i in range(0, len(chunk_events), size)]
            total = sum(timings)
            results["batches"].append(
                {
                    "batch_size": size,
                    "events_per_s": round(len(chunk_events) / total, 1),
                    "batch_p50_ms": round(float(np.percentile(timings, 50)) * 1000, 2),
                    "batch_p99_ms": round(float(np.percentile(timings, 99)) * 1000, 2),
                }
            )
        pipeline.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _print(results)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {out}")
    return results


def _print(results: dict) -> None:
    print(f"catalogue: {results['items']} items embedded at {results['embed_items_per_s']} items/s "
          f"({results['device']})")
    print(f"\n{'batch':>6} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for row in results["batches"]:
        print(f"{row['batch_size']:>6} {row['events_per_s']:>10} {row['batch_p50_ms']:>8} {row['batch_p99_ms']:>8}")
