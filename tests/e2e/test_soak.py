"""The soak, 30 seconds of it: the same code as `make soak`, at a rate a loaded machine holds.

A real Tansu broker and a real worker process (`streamrec.consumers.tools.soak.run_soak`); the
worker's de-duplication capacity is set below the events sent, so its eviction is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamrec.consumers.tools.soak import run_soak

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

RATE = 100.0
USERS = 5_000
DURATION_S = 30.0
DEDUP_CAPACITY = 1_000  # of the 3,000 events: the set must evict to stay at its capacity
RSS_GROWTH_LIMIT_MIB = 200.0  # over the second half; generous (a leak per event would pass it
# only at under ~140 KB per event); the worker holds ~600 MiB of model and index to start with


def test_a_short_soak_accounts_for_every_event_and_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMREC_DEDUP_CAPACITY", str(DEDUP_CAPACITY))  # the worker reads the env
    out, markdown = tmp_path / "soak.json", tmp_path / "soak.md"
    results = run_soak(RATE, USERS, DURATION_S, sample_s=2.0, items=200, drain_max_s=120.0,
                       out=out, markdown=markdown, quiet=True)

    assert "error" not in results, results.get("error")
    assert results["worker"]["exit_code"] == 0, "the worker ran throughout and stopped cleanly"
    events = results["events"]
    planned = int(RATE * DURATION_S)
    assert events["planned"] == events["sent"] == planned
    # every event answered by a list (its own or a later one of its user), none twice
    assert events["answered"] == planned and 0 < events["lists"] <= planned
    last = results["samples"][-1]
    assert last["events_counted"] == planned, "the worker counted each event once"
    assert last["dead_letters"] == 0

    load = [s for s in results["samples"] if s["phase"] == "load"]
    assert len(load) >= 10 and all(s["worker_rss_mib"] for s in load), "RSS sampled all along"
    second_half = [s["worker_rss_mib"] for s in load if s["t_s"] >= DURATION_S / 2]
    assert max(second_half) - second_half[0] < RSS_GROWTH_LIMIT_MIB
    dedup = [s["dedup_ids"] for s in results["samples"] if s["dedup_ids"] is not None]
    assert max(dedup) <= DEDUP_CAPACITY and dedup[-1] == DEDUP_CAPACITY

    drain = results["drain"]
    assert drain["drained_after_s"] is not None and drain["backlog_left"] == 0
    assert drain["final_lag"] == 0, "the lag drains to 0 once production stops"

    assert json.loads(out.read_text())["events"] == events
    text = markdown.read_text()
    assert "| worker RSS bounded |" in text and "## What bounds the worker's memory" in text
    assert f"de-duplication capacity {DEDUP_CAPACITY:,}" in text
