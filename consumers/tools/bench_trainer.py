"""`streamrec bench-trainer`: the trainer's cycle and the worker's hot swap, with the default model.

No broker: the parts that cost time are measured where they run.
- **cycle**: one fine-tuning cycle (`ContinualTrainer.run`) on a full default window of
  synthetic events: seconds, steps/s, and what share of the window's training windows the
  bounded steps cover, against the default interval.
- **swap**: what a worker does off the serving path for a new version (read, verify, load,
  build the version's retrieval vectors for the whole catalogue) at 10k items.
- **no gap**: the recommender serves micro-batches on the event loop without pause while a
  swap loads in a thread; lists per second before, during and after.

The catalogue uses random unit text vectors (the encoder's speed is `streamrec bench`'s).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from streamrec.consumers.worker.metrics import WorkerMetrics
from streamrec.consumers.worker.model_updates import ModelSwapper, update_for
from streamrec.models.core.pipeline import Pipeline
from streamrec.models.core.state import UserState
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.models.index.protocol import IndexedItem
from streamrec.models.learning.continual import ContinualConfig, ContinualTrainer
from streamrec.models.learning.ranker import Ranker, RankerConfig
from streamrec.models.learning.store import DirectoryModelStore
from streamrec.models.learning.training import make_windows
from streamrec.stream.settings import Settings

T0 = 1_750_000_000.0
BUCKET_S = 0.5


def _catalogue(world: SyntheticWorld, dim: int, seed: int = 0) -> list[IndexedItem]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(len(world.items(0.0)), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [IndexedItem(item.item_id, vector, item.item_id) for item, vector in zip(world.items(0.0), vectors)]


def bench_cycle(root: Path, settings: Settings) -> dict[str, float]:
    config = ContinualConfig.from_settings(settings)
    world = SyntheticWorld(seed=11, n_items=10_000, n_users=5_000, n_categories=8)
    store = DirectoryModelStore(root / "models")
    trainer = ContinualTrainer(store, config)
    trainer.add_items(_catalogue(world, 384))
    events = world.events(config.window_events, start_ts=T0, rate_per_s=500)
    trainer.add_events(events)
    first = trainer.run(trainer.cut(time.time()))  # from scratch: makes the served version
    trainer.add_events(world.events(config.every_events, start_ts=events[-1].ts, stream=1))
    cycle = trainer.run(trainer.cut(time.time()))  # the steady state: from the served weights
    report = cycle.report
    from streamrec.models.learning.item_table import ItemTable
    from streamrec.models.learning.ranker import Step

    ids = sorted(trainer.vectors)
    table = ItemTable.from_vectors(ids, np.stack([trainer.vectors[i] for i in ids]), RankerConfig().id_buckets)
    sequences: dict[str, list[Step]] = {}
    for e in trainer.window.events()[: report.train_events]:
        sequences.setdefault(e.user_id, []).append(Step(e.item_id, e.type, e.ts))
    n_windows = len(make_windows(sequences, table, RankerConfig().max_len, RankerConfig().gap_buckets))
    covered = report.steps * config.finetune.batch_size / max(1, n_windows)
    return {
        "parameters": float(sum(p.numel() for p in Ranker(RankerConfig()).parameters())),
        "window_events": float(report.window_events),
        "steps": float(report.steps),
        "cycle_s": report.seconds,
        "steps_per_s": report.steps_per_s,
        "window_share_trained": round(min(1.0, covered), 3),
        "interval_s": config.every_s,
        "first_version_s": first.report.seconds,
    }


async def bench_swap(root: Path, n_items: int = 10_000) -> dict[str, float]:
    settings = Settings(data_dir=root / "worker", device="cpu", k=10)
    world = SyntheticWorld(seed=12, n_items=n_items, n_users=2_000, n_categories=8)
    store = DirectoryModelStore(settings.resolved_model_dir)
    torch.manual_seed(0)
    v1 = store.save(Ranker(RankerConfig()).state_dict(), RankerConfig().to_dict()).version
    pipeline = Pipeline.from_settings(settings)
    try:
        pipeline.store_items(_catalogue(world, pipeline.index.dim))
        swapper = ModelSwapper(settings, pipeline, WorkerMetrics())
        await swapper.on_update(update_for(store, v1, "publish"))  # serving v1 since the start
        torch.manual_seed(1)
        v2 = store.save(Ranker(RankerConfig()).state_dict(), RankerConfig().to_dict(), parent=v1).version

        events = world.events(40_000, start_ts=T0, rate_per_s=1000)
        states: dict[str, UserState] = {}
        served: list[tuple[float, int]] = []  # (time, lists)
        swap_window: list[float] = []

        async def swap_later() -> None:
            await asyncio.sleep(2.0)
            swap_window.append(time.perf_counter())
            await swapper.on_update(update_for(store, v2, "publish"))
            swap_window.append(time.perf_counter())

        task = asyncio.ensure_future(swap_later())
        t0 = time.perf_counter()
        position = 0
        while time.perf_counter() - t0 < 7.0 and position < len(events):
            chunk, position = events[position : position + 32], position + 32
            handled = pipeline.recommender.handle(chunk, states)  # the worker's call
            states.update(handled.states)
            served.append((time.perf_counter() - t0, len(handled.lists)))
            await asyncio.sleep(0)  # the worker yields to the loop between micro-batches
        await task
        start, end = swap_window[0] - t0, swap_window[1] - t0

        def rate(lo: float, hi: float) -> float:
            n = sum(count for at, count in served if lo <= at < hi)
            return round(n / max(hi - lo, 1e-9), 1)

        await swapper.drain()

        def longest_pause(lo: float, hi: float) -> float:
            times = [at for at, _ in served if lo <= at <= hi]
            return round(max((b - a for a, b in zip(times, times[1:])), default=0.0), 3)

        return {
            "items": float(n_items),
            "swap_s": round(end - start, 3),
            "lists_per_s_before": rate(0.0, start),
            "lists_per_s_during": rate(start, end),
            "lists_per_s_after": rate(end, served[-1][0]),
            "longest_pause_before_s": longest_pause(0.0, start),
            "longest_pause_during_s": longest_pause(start, end + 0.5),
            "longest_pause_after_s": longest_pause(end + 0.5, served[-1][0]),
            "serving_after": float(pipeline.recommender.model_version == v2),
        }
    finally:
        pipeline.close()


def run_bench_trainer(out: Path | None = None) -> dict[str, dict[str, float]]:
    root = Path(tempfile.mkdtemp(prefix="streamrec-bench-trainer-"))
    try:
        settings = Settings(data_dir=root / "trainer", device="cpu")
        figures = {"cycle": bench_cycle(root, settings), "swap": asyncio.run(bench_swap(root))}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"threads: {torch.get_num_threads()}")
    for section, values in figures.items():
        print(f"\n{section}")
        for key, value in values.items():
            print(f"  {key:<36} {value:g}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=2) + "\n")
    return figures
