"""The memory bench's items part: RSS of a Qdrant Edge shard behind `CachedItemIndex`.

As the worker opens it, with `items` random clustered 384-d unit vectors: upserted,
`optimize()`d (HNSW), then read back through `get` so the cache holds every vector; plus a
sample of neighbour lists, extrapolated to the neighbour cache's capacity. RSS deltas after
each step, in a fresh process (`bench_memory.py` starts it).
"""

from __future__ import annotations

import gc
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from streamrec.consumers.tools.memory_measure import (
    MIB,
    current_rss,
    per_scale,
    rss_split,
    say,
    settled_rss,
)
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.models.index.protocol import IndexedItem
from streamrec.stream.settings import Settings

TEXT_DIM = 384  # all-MiniLM-L6-v2's vector size
CLUSTERS = 64  # random item vectors are drawn around this many centres
CLUSTER_NOISE = 0.35  # spread of an item vector around its centre (before normalising)
UPSERT_BATCH = 1_000  # items per Qdrant Edge upsert / per cache read
NEIGHBOUR_SAMPLE = 2_000  # items whose neighbour list is filled and measured


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
        rss: dict[str, int] = {"baseline": settled_rss()}
        split: dict[str, dict[str, int]] = {"baseline": rss_split()}
        index = CachedItemIndex(
            EdgeItemIndex(work, dim, name="items", hnsw_ef=settings.hnsw_ef),
            items=items,
            neighbour_lists=settings.neighbour_cache_size,
        )
        rss["opened"], split["opened"] = settled_rss(), rss_split()
        started = time.perf_counter()
        for start in range(0, items, UPSERT_BATCH):
            chunk = ids_titles[start : start + UPSERT_BATCH]
            vectors = _clustered_unit_vectors(rng, centres, len(chunk))  # (n, D)
            index.upsert([IndexedItem(i, v, t) for (i, t), v in zip(chunk, vectors)])
        upsert_s = time.perf_counter() - started
        rss["upserted"] = settled_rss()
        say(f"[memory] items: {items} upserted in {upsert_s:.1f}s; optimize() ...", quiet)
        started = time.perf_counter()
        index.optimize()
        optimize_s = time.perf_counter() - started
        counted = index.count()
        queries = _clustered_unit_vectors(rng, centres, len(sample))  # (S, D)
        for start in range(0, len(queries), 100):  # warm-up: Qdrant pages in what search reads
            index.search_batch(queries[start : start + 100], limit=10, with_items=False)
        rss["optimized"], split["optimized"] = settled_rss(), rss_split()
        say(f"[memory] items: optimized in {optimize_s:.1f}s; reading every vector into the cache ...", quiet)
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
            rss["cached"] = current_rss()
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
            "edge_index": per_scale(per_item_edge, items),
            "vector_cache": per_scale(per_item_cache, items),
            "total": per_scale(per_item_edge + per_item_cache, items),
        },
        "neighbour_list_bytes": round(per_list),
        "neighbour_cache_mib_at_capacity": round(per_list * lists_kept / MIB, 1),
        "neighbour_cache_capacity": lists_kept,
    }


def _deep_list_size(lists: list) -> int:
    """What `similar`'s answer itself holds (not the cache): its lists, not the shared hits."""
    return sys.getsizeof(lists) + sum(sys.getsizeof(hits) for hits in lists)
