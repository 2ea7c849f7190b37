"""`streamrec bench`: throughput and latency of the core the workers run (no broker involved).

For each case (index backend x catalogue size x scorer) it builds the catalogue, warms the
core up on a synthetic stream and times `Recommender.handle` (learn, retrieve from
Qdrant, score, top-K: what a worker does per micro-batch) at micro-batch sizes 1, 32 and 256.
It also times retrieval alone (exact in memory against Qdrant Edge's HNSW graph, by
catalogue size: `bench_retrieval`), the ranker's scoring alone (CPU, and CUDA when present), and, through
`bench_memory` and `bench_e2e`, the memory per 100k users/items and the broker round trip.
Figures are printed, written as JSON and as the markdown of docs/benchmarks.md.

Catalogues: the first `text_items` items are embedded with MiniLM (that is the embedding
figure); larger catalogues reuse those vectors plus noise (running MiniLM over 100k texts
would time the encoder, not the core).
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamrec.consumers.tools.bench_report import write_figures
from streamrec.models.core.catalog import title_of
from streamrec.models.core.encoder import TextEncoder
from streamrec.models.core.pipeline import Pipeline
from streamrec.models.core.scoring import ScoringBatch
from streamrec.models.core.state import UserState
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.models.index.protocol import IndexedItem
from streamrec.models.learning.ranker import Ranker, RankerConfig, Step
from streamrec.models.learning.serving import RankerScorer
from streamrec.models.learning.store import DirectoryModelStore, Manifest
from streamrec.stream.settings import Settings

BATCH_SIZES = (1, 32, 256)
WARMUP_EVENTS = 3_000
T0 = 1_750_000_000.0


@dataclass(frozen=True)
class CoreCase:
    """One configuration of the core to time."""

    backend: str  # "edge" (Qdrant Edge in-process) or "client" (qdrant-client local mode)
    items: int  # catalogue size
    scorer: str  # "content" (no checkpoint) or "ranker" (a default-size checkpoint)

    @property
    def label(self) -> str:
        size = f"{self.items // 1000}k" if self.items % 1000 == 0 else str(self.items)
        return f"{self.backend} / {size} items / {self.scorer}"


DEFAULT_CASES = (
    CoreCase("edge", 10_000, "content"),
    CoreCase("edge", 10_000, "ranker"),
    CoreCase("client", 10_000, "content"),
    CoreCase("edge", 100_000, "content"),
    CoreCase("edge", 100_000, "ranker"),
)  # qdrant-client's local mode searches by brute force in Python: at 100k items a case takes hours


def parse_cases(text: str) -> list[CoreCase]:
    """`edge:10000:content,client:100000:ranker` -> cases.

    >>> parse_cases("edge:10000:ranker")
    [CoreCase(backend='edge', items=10000, scorer='ranker')]
    """
    cases = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        backend, items, scorer = part.split(":")
        if backend not in ("edge", "client") or scorer not in ("content", "ranker"):
            raise ValueError(f"bad case {part!r}: backend edge|client, scorer content|ranker")
        cases.append(CoreCase(backend, int(items), scorer))
    return cases


def catalogue_vectors(
    world: SyntheticWorld, encoder: TextEncoder, text_items: int, seed: int = 0
) -> tuple[list[IndexedItem], float]:
    """Every item of `world` with a vector: the first `text_items` embedded, the rest those
    vectors plus noise (same clusters); also the embedding rate (items/s)."""
    items = world.items(ts=T0)
    embedded = items[:text_items]
    started = time.perf_counter()
    text = encoder.encode([item.text for item in embedded])  # (E, D)
    rate = len(embedded) / (time.perf_counter() - started)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(embedded), size=len(items))
    vectors = text[picks] + 0.25 * rng.standard_normal((len(items), text.shape[1])).astype(np.float32) / np.sqrt(
        text.shape[1]
    )  # (N, D)
    vectors[: len(embedded)] = text
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    catalogue = [IndexedItem(item.item_id, vectors[row], title_of(item)) for row, item in enumerate(items)]
    return catalogue, rate


def time_core(
    case: CoreCase, work: Path, encoder: TextEncoder, catalogue: Sequence[IndexedItem], world: SyntheticWorld,
    events_per_size: int,
) -> dict[str, Any]:
    """Build the case's pipeline, fill its index, warm up, time each micro-batch size.

    qdrant-client's local mode searches by brute force in Python (a test double of the server
    path, not a production backend): its case runs on an eighth of the events."""
    warmup = WARMUP_EVENTS
    if case.backend == "client":
        events_per_size, warmup = max(BATCH_SIZES[-1], events_per_size // 8), WARMUP_EVENTS // 4
    settings = Settings(
        data_dir=work, index_mode=case.backend,
        qdrant_url=":memory:" if case.backend == "client" else None,
    )
    if case.scorer == "ranker":
        config = RankerConfig(text_dim=encoder.dim)
        DirectoryModelStore(settings.resolved_model_dir).save(
            Ranker(config).state_dict(), config.to_dict(), data={"source": "bench, untrained"}
        )
    pipeline = Pipeline.from_settings(settings, encoder=encoder)
    try:
        started = time.perf_counter()
        for start in range(0, len(catalogue), 2_000):
            pipeline.store_items(catalogue[start : start + 2_000])
        pipeline.optimize_index()
        index_s = time.perf_counter() - started
        states: dict[str, UserState] = {}

        def process(chunk: Sequence) -> float:
            begin = time.perf_counter()
            handled = pipeline.recommender.handle(chunk, states)  # the worker's call, grouping included
            states.update(handled.states)
            return time.perf_counter() - begin

        stream = world.events(warmup + events_per_size * len(BATCH_SIZES), start_ts=T0, rate_per_s=200.0)
        for start in range(0, warmup, 64):
            process(stream[start : start + 64])
        rows = []
        offset = warmup
        for size in BATCH_SIZES:
            chunk = stream[offset : offset + events_per_size]
            offset += events_per_size
            timings = [process(chunk[i : i + size]) for i in range(0, len(chunk), size)]
            rows.append({
                "batch_size": size,
                "events_per_s": round(len(chunk) / sum(timings), 1),
                "batch_p50_ms": round(float(np.percentile(timings, 50)) * 1000, 2),
                "batch_p99_ms": round(float(np.percentile(timings, 99)) * 1000, 2),
            })
        cache = pipeline.index
        return {
            **asdict(case), "label": case.label, "model_version": pipeline.recommender.model_version,
            "events_per_size": events_per_size, "warmup_events": warmup,
            "index_build_s": round(index_s, 1), "batches": rows,
            "neighbour_lists_from_memory": round(cache.hits / max(1, cache.hits + cache.misses), 3)
            if hasattr(cache, "hits") else None,
        }
    finally:
        pipeline.close()


def ranker_scoring(device: str = "cpu", candidates: int = 100, repeats: int = 20) -> list[dict]:
    """Scoring alone with the default-size ranker (user tower + item tower + score), per batch."""
    config = RankerConfig()
    model = Ranker(config).to(device).eval()
    rows = []
    for users in (1, 32, 256):
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
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - begin)
        per_batch = float(np.median(timings[2:]))
        rows.append({"device": device, "users_per_batch": users, "candidates_per_user": candidates,
                     "batch_ms": round(per_batch * 1000, 2),
                     "candidates_per_s": round(users * candidates / per_batch)})
    return rows


def _bench_manifest(config: RankerConfig) -> Manifest:
    return Manifest(version="bench", parent=None, created_at="1970-01-01T00:00:00+00:00", kind="ranker",
                    config=config.to_dict(), sha256="0" * 64, shapes={}, data={}, metrics={})


def run_bench(
    cases: Sequence[CoreCase] = DEFAULT_CASES,
    events_per_size: int = 2_048,
    users: int = 10_000,
    text_items: int = 2_000,
    out: Path | None = None,
    e2e_rates: Sequence[int] = (),
    e2e_duration_s: float = 20.0,
    memory: bool = True,
    markdown: Path | None = None,
    retrieval_sizes: Sequence[int] = (),
) -> dict[str, Any]:
    """Every figure of the suite; see the module docstring."""
    results: dict[str, Any] = {
        "machine": {"cpus": _cpus(), "load_average": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "settings": {"events_per_size": events_per_size, "users": users, "text_items": text_items,
                     "batch_sizes": list(BATCH_SIZES), "warmup_events": WARMUP_EVENTS},
        "core": [],
    }
    encoder = TextEncoder(None, device="cuda" if torch.cuda.is_available() else "cpu")
    worlds: dict[int, tuple[SyntheticWorld, list[IndexedItem]]] = {}
    for case in cases:
        if case.items not in worlds:
            world = SyntheticWorld(seed=3, n_items=case.items, n_users=users)
            catalogue, rate = catalogue_vectors(world, encoder, min(text_items, case.items))
            results.setdefault("embed_items_per_s", round(rate, 1))
            worlds[case.items] = (world, catalogue)
        world, catalogue = worlds[case.items]
        print(f"core: {case.label} ...", flush=True)
        work = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
        try:
            results["core"].append(time_core(case, work, encoder, catalogue, world, events_per_size))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    worlds.clear()
    if retrieval_sizes:
        from streamrec.consumers.tools.bench_retrieval import time_retrieval, work_dir

        results["retrieval"] = []
        for size in retrieval_sizes:
            print(f"retrieval: exact in memory vs HNSW, {size:,} items ...", flush=True)
            world = SyntheticWorld(seed=3, n_items=size, n_users=10)
            catalogue, _ = catalogue_vectors(world, encoder, min(text_items, size))
            results["retrieval"] += time_retrieval(catalogue, work_dir())
    print("ranker scoring ...", flush=True)
    results["ranker_scoring"] = ranker_scoring("cpu")
    if torch.cuda.is_available():
        results["ranker_scoring"] += ranker_scoring("cuda")
    if memory:
        from streamrec.consumers.tools.bench_memory import run_memory_bench

        print("memory ...", flush=True)
        results["memory"] = run_memory_bench(users=100_000, items=100_000)
    if e2e_rates:
        from streamrec.consumers.tools.bench_e2e import run_e2e_bench

        print("end to end through the broker ...", flush=True)
        results["e2e"] = run_e2e_bench(e2e_rates, e2e_duration_s, users)
    from streamrec.consumers.tools.bench_report import render_markdown

    text = render_markdown(results)
    print("\n" + text)
    if out is not None:
        write_figures(out, results)
        print(f"wrote {out}")
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text + "\n")
        print(f"wrote {markdown}")
    return results


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
