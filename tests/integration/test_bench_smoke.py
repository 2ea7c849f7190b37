"""The benchmark modules, small: they run, count what they were asked to, and report sane figures.

Figures themselves are machine-dependent and not asserted (benchmarks print them; tests don't
judge them), only their bookkeeping.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamrec.consumers.tools.bench_e2e import run_e2e_bench
from streamrec.consumers.tools.bench_memory import run_memory_bench

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_memory_bench_counts_what_it_was_asked_for(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    results = run_memory_bench(users=2_000, items=2_000, out=out, quiet=True)

    users, items = results["users"], results["items"]
    assert users["users"] == 2_000 and users["states_complete"] == 2_000
    assert users["recent_items"] == 50 and users["round_trip_ok"]
    for figure in ("user_state_objects", "packed", "packed_record", "table_dicts", "json", "user_state_traced"):
        assert users["bytes_per_user"][figure] > 0, figure
        assert users["mib_per_100k_users"][figure] > 0, figure
    # 50 recent items, each with a unique event id: no form of it fits in under 1 KB per user
    assert users["bytes_per_user"]["json"] > 50 * len('["i00000", "view", 1750000000.0, "syn-7-0-0"]')
    assert users["allocation_sites"] and all(site["bytes_per_user"] > 0 for site in users["allocation_sites"])
    assert items["items"] == items["counted"] == items["cached"] == 2_000
    assert items["neighbour_lists_sampled"] == 2_000
    assert items["mib_per_100k_items"]["total"] > 0 and items["neighbour_list_bytes"] > 0
    assert results["mib_per_100k_users"] == users["mib_per_100k_users"]["user_state_objects"]
    assert results["meets_target"] == (users["mib_per_100k_users"]["packed"] <= results["target_mib_per_100k_users"])
    # the packed table values: a fraction of the plain data they replace, records too
    assert users["bytes_per_user"]["packed"] * 4 < users["bytes_per_user"]["table_dicts"]
    assert users["bytes_per_user"]["packed_record"] * 2 < users["bytes_per_user"]["json"]
    assert all(users["us_per_user"][step] > 0 for step in ("pack", "unpack", "to_dict", "from_dict"))
    assert json.loads(out.read_text()) == results


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_e2e_bench_gets_a_list_for_every_trigger(tmp_path: Path) -> None:
    results = run_e2e_bench(rates=[100], duration_s=3, users=200, items=200, warmup_events=50,
                            out=tmp_path / "e2e.json")

    [row] = results["rates"]
    assert row["rate"] == 100 and row["events_sent"] == 300
    assert row["caught_up"], "every user's last event got its list"
    # every list answers at least its trigger; together they answer every event sent
    assert 0 < row["lists_received"] <= row["events_covered"] == row["events_sent"]
    assert row["coalesced_events"] == row["events_covered"] - row["lists_received"]
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert row["sent_per_s"] > 0 and row["lists_per_s"] > 0
    assert results["worker"]["catalogue_items"] >= 200 and results["worker"]["exit_code"] == 0
    assert results["settings"]["rates"] == [100] and results["settings"]["users"] == 200
    assert results["highest_rate_held"] in (None, 100)  # held or not depends on the machine's load
    assert results["p99_ms_at_1000"] is None  # no 1000 events/s run was asked for
    assert not Path(results["temp_dir"]).exists(), "the worker's data and the logs are removed"
