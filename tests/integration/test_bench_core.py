"""`streamrec bench`'s core part, small: real MiniLM, real Qdrant (Edge and local mode), the
ranker; the figures' bookkeeping is checked, not their values (machine-dependent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamrec.consumers.tools.bench import BATCH_SIZES, CoreCase, run_bench

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_core_bench_times_every_case_and_batch_size_and_writes_the_report(tmp_path: Path) -> None:
    cases = [CoreCase("edge", 600, "content"), CoreCase("edge", 600, "ranker"), CoreCase("client", 600, "content")]
    out, page = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    results = run_bench(cases, events_per_size=256, users=300, text_items=200, out=out, memory=False,
                        markdown=page, retrieval_sizes=[700])

    assert json.loads(out.read_text()) == results
    assert [row["label"] for row in results["core"]] == [case.label for case in cases]
    for row in results["core"]:
        assert [batch["batch_size"] for batch in row["batches"]] == list(BATCH_SIZES)
        for batch in row["batches"]:
            assert batch["events_per_s"] > 0 and 0 < batch["batch_p50_ms"] <= batch["batch_p99_ms"]
        assert 0 < row["neighbour_lists_from_memory"] <= 1  # users come back to their items
    served = [row["model_version"] for row in results["core"]]
    assert served[0] == served[2] == "content-v1" and served[1] != "content-v1"
    assert [row["users_per_batch"] for row in results["ranker_scoring"]][:3] == [1, 32, 256]
    text = page.read_text()
    assert "| edge / 600 items / ranker | 256 |" in text and "## Ranker scoring alone" in text
    assert [(row["items"], row["excluded"]) for row in results["retrieval"]] == [(700, 0), (700, 50)]
    assert all(0 < row["hnsw_recall"] <= 1 and row["exact_ms_per_query"] > 0 for row in results["retrieval"])
    assert "## Retrieval: exact in memory vs HNSW" in text and "| 700 | 50 |" in text
