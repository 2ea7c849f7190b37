"""`streamrec evaluate --protocol prequential` on the synthetic shop: the real core (MiniLM,
Qdrant Edge, the ranker, the trainer on the replay clock) against baselines, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

EVENTS = 1_500
WARMUP = 0.3


def test_prequential_command_replays_every_system_and_writes_json_and_png(tmp_path: Path) -> None:
    out = tmp_path / "eval" / "synthetic.json"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "STREAMREC_DATA_DIR": str(tmp_path / "data"),
        "STREAMREC_TRAINER_EVERY_EVENTS": "300",
        "STREAMREC_TRAINER_STEPS": "20",
        "STREAMREC_TRAINER_MIN_EVENTS": "100",
    }
    done = subprocess.run(
        [sys.executable, "-m", "streamrec.consumers.cli", "evaluate", "--protocol", "prequential",
         "--dataset", "synthetic", "--synthetic-events", str(EVENTS), "--warmup", str(WARMUP),
         "--systems", "popularity,markov,content,ranker", "--bootstrap-epochs", "20", "--seed", "3",
         "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=380,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    totals = json.loads(out.read_text())
    systems = totals["systems"]
    # The synthetic shop also shows the ceiling its generator allows (the taste oracle).
    assert list(systems) == ["oracle (knows the hidden tastes)", "popularity", "last-item Markov",
                             "streamrec content scorer", "streamrec (ranker + trainer)"]
    measured = EVENTS - totals["measured_from"]
    assert totals["measured_from"] == int(EVENTS * WARMUP)
    for name, row in systems.items():
        assert row["warm"]["events"] + row["cold"]["events"] == measured, name
        assert sum(point["n"] for point in row["curve"]) == row["warm"]["events"], name
        assert 0 <= row["warm"]["hr@10"] <= 1 and row["warm"]["ndcg@10"] <= row["warm"]["hr@10"]
    # The synthetic users have category tastes the item text names: the core must find them.
    content, popular = systems["streamrec content scorer"], systems["popularity"]
    assert content["warm"]["hr@10"] > 2 * popular["warm"]["hr@10"]
    trained = systems["streamrec (ranker + trainer)"]["system"]
    assert trained["versions"] and trained["versions"][0]["events_seen"] >= totals["measured_from"]
    assert trained["cycles"] >= 2  # the first version and at least one routine cycle
    assert totals["protocol"]["seed"] == 3 and totals["dataset"]["dataset"] == "synthetic"
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| streamrec (ranker + trainer) |" in done.stdout
