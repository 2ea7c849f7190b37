"""`streamrec bench`: throughput and latency of the core the workers run (no broker involved).

Prints a table and writes JSON: catalogue embedding (items/s), the event -> list pipeline
(learn, retrieve from Qdrant Edge, score, top-K) per micro-batch size, and the ranker's
scoring throughput (candidates per second at batch 1 and 256).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from streamrec.models.pipeline import Pipeline
from streamrec.models.ranker import Ranker, RankerConfig, Step
from streamrec.models.recommender import UserBatch
from streamrec.models.scoring import ScoringBatch
from streamrec.models.serving import RankerScorer
from streamrec.models.state import UserState
from streamrec.models.store import Manifest
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


def ranker_scoring(device: str = "cpu", candidates: int = 100, repeats: int = 20) -> list[dict]:
    """Candidates scored per second by the default-size ranker (user tower + item tower + score)."""
    config = RankerConfig()
    model = Ranker(config).to(device).eval()
    rows = []
    for users in (1, 256):
        text = torch.nn.functional.normalize(torch.randn(users, candidates, config.text_dim), dim=-1)
        ids = [[f"item-{u}-{c}" for c in range(candidates)] for u in range(users)]
        history = [[Step(f"item-{u}-{n}", "view", T0 + 60.0 * n) for n in range(config.max_len)] for u in range(users)]
        vectors = {step.item_id: text[0, 0].numpy() for steps in history for step in steps}
        scorer = RankerScorer(model, _bench_manifest(config), device)
        timings = []
        for _ in range(repeats + 2):
            begin = time.perf_counter()
            user_vectors = scorer.user_vectors(history, vectors)
            scorer.score(ScoringBatch(
                history=torch.zeros(users, 1, config.text_dim), history_weights=torch.ones(users, 1),
                candidates=text, candidate_mask=torch.ones(users, candidates, dtype=torch.bool),
                candidate_ids=ids, user_vectors=user_vectors,
            ))
            timings.append(time.perf_counter() - begin)
        per_batch = float(np.median(timings[2:]))
        rows.append({"users_per_batch": users, "candidates_per_user": candidates,
                     "batch_ms": round(per_batch * 1000, 2),
                     "candidates_per_s": round(users * candidates / per_batch)})
    return rows


def _bench_manifest(config: RankerConfig) -> Manifest:
    return Manifest(version="bench", parent=None, created_at="1970-01-01T00:00:00+00:00", kind="ranker",
                    config=config.to_dict(), sha256="0" * 64, shapes={}, data={}, metrics={})


def run_bench(n_items: int, n_users: int, events_per_size: int, out: Path | None) -> dict:
    work = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    try:
        settings = Settings(data_dir=work)
        pipeline = Pipeline.from_settings(settings)
        world = SyntheticWorld(seed=3, n_items=n_items, n_users=n_users)
        items = world.items(ts=T0)
        started = time.perf_counter()
        pipeline.catalog.upsert(items)
        pipeline.optimize_index()
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
        results["ranker_scoring"] = ranker_scoring(results["device"])
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

    print(f"\nranker scoring ({results['device']}, default size, {results['ranker_scoring'][0]['candidates_per_user']} candidates per user):")
    print(f"{'users':>6} {'batch ms':>9} {'candidates/s':>13}")
    for row in results["ranker_scoring"]:
        print(f"{row['users_per_batch']:>6} {row['batch_ms']:>9} {row['candidates_per_s']:>13}")
