"""The bench's retrieval part: exact search in memory against Qdrant Edge's HNSW graph.

For each catalogue size it fills a Qdrant Edge shard, builds its HNSW graph, reads it into an
`ExactItemIndex`, and asks both the same batch of queries (an item's vector plus a little
noise: what a user's recent items look like), without exclusions and with each query's own
set of consumed items left out. Figures per query (ms), HNSW recall against the exact answer,
build and load times; they decide `STREAMREC_EXACT_SEARCH_MAX_ITEMS`.

>>> rows = time_retrieval(_toy_catalogue(300), Path(tempfile.mkdtemp()), queries=16, excluded=(0, 5))
>>> [(row["items"], row["excluded"], row["exact_recall"]) for row in rows]
[(300, 0, 1.0), (300, 5, 1.0)]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.models.index.edge import EdgeItemIndex
from streamrec.models.index.exact import ExactItemIndex
from streamrec.models.index.protocol import IndexedItem, ItemIndex

WRITE_BATCH = 4_000


def time_retrieval(
    catalogue: Sequence[IndexedItem],
    work: Path,
    queries: int = 256,
    limit: int = 20,
    excluded: Sequence[int] = (0, 50),
    hnsw_ef: int = 64,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per exclusion size: ms per query, exact and HNSW, and HNSW's recall@limit."""
    dim = len(catalogue[0].vector)
    edge = EdgeItemIndex(work, dim, hnsw_ef=hnsw_ef)
    try:
        started = time.perf_counter()
        for start in range(0, len(catalogue), WRITE_BATCH):
            edge.upsert(catalogue[start : start + WRITE_BATCH])
        edge.optimize()
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        exact = ExactItemIndex(edge, max_items=len(catalogue))
        load_s = time.perf_counter() - started
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, len(catalogue), size=queries)
        vectors = np.stack([catalogue[p].vector for p in picks])  # (Q, D)
        vectors = vectors + 0.5 * rng.standard_normal(vectors.shape).astype(np.float32) / np.sqrt(dim)
        rows = []
        for size in excluded:
            banned = [
                {catalogue[i].item_id for i in rng.integers(0, len(catalogue), size=size)} for _ in range(queries)
            ] if size else None
            exact_ms, truth = _per_query_ms(exact, vectors, limit, banned)
            hnsw_ms, found = _per_query_ms(edge, vectors, limit, banned)
            rows.append({
                "items": len(catalogue), "excluded": size, "queries": queries, "limit": limit,
                "exact_ms_per_query": round(exact_ms, 3), "hnsw_ms_per_query": round(hnsw_ms, 3),
                "hnsw_recall": round(_recall(found, truth), 3),
                "exact_recall": 1.0,  # by construction: the exact answer is the reference
                "hnsw_build_s": round(build_s, 1), "memory_load_s": round(load_s, 2),
                "memory_mb": round(len(catalogue) * dim * 4 / 2**20, 1),
            })
        return rows
    finally:
        edge.drop()
        shutil.rmtree(work, ignore_errors=True)


def _per_query_ms(
    index: ItemIndex, queries: np.ndarray, limit: int, banned: list[set[str]] | None
) -> tuple[float, list[list[str]]]:
    """The best of three timed passes (the machine is shared), after one warm-up pass."""
    index.search_batch(queries[:8], limit, banned[:8] if banned else None)
    best = float("inf")
    ids: list[list[str]] = []
    for _ in range(3):
        started = time.perf_counter()
        hits = index.search_batch(queries, limit, banned)
        best = min(best, time.perf_counter() - started)
        ids = [[hit.item_id for hit in row] for row in hits]
    return 1000 * best / len(queries), ids


def _recall(found: list[list[str]], truth: list[list[str]]) -> float:
    shares = [len(set(f) & set(t)) / len(t) for f, t in zip(found, truth) if t]
    return float(np.mean(shares)) if shares else 1.0


def _toy_catalogue(n: int, dim: int = 16, seed: int = 0) -> list[IndexedItem]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)  # (N, D)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [IndexedItem(f"i{k}", vectors[k], f"t{k}") for k in range(n)]


def retrieval_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of `time_retrieval` rows."""
    lines = [
        "| items | consumed left out | exact ms/query | HNSW ms/query | HNSW recall@20 | HNSW build s | memory MB |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['items']:,} | {r['excluded']} | {r['exact_ms_per_query']} | {r['hnsw_ms_per_query']} | "
        f"{r['hnsw_recall']} | {r['hnsw_build_s']} | {r['memory_mb']} |"
        for r in rows
    ]
    return "\n".join(lines)


def work_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="streamrec-bench-retrieval-"))
