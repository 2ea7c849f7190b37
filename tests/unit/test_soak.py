"""The soak's bookkeeping and verdicts, on hand-made events, lists and samples (no broker)."""

from __future__ import annotations

import json

import pytest

from streamrec.consumers.tools.soak_ledger import EVENT_ID_PREFIX, Ledger, soak_events
from streamrec.consumers.tools.soak_report import notes_on, render_markdown
from streamrec.consumers.tools.soak_verdicts import judge, rss_figures
from streamrec.models.data.synthetic import SyntheticWorld
from tests.support.events import event


def _list(trigger: str, latency_ms: float = 5.0) -> bytes:
    return json.dumps({"trigger_event_id": trigger, "latency_ms": latency_ms}).encode()


def test_the_ledger_counts_what_each_list_answers() -> None:
    ledger = Ledger(total=5, user_index={"a": 0, "b": 1}, history_length=2)
    for n, user in enumerate("aabab"):
        ledger.on_sent(event(user, n=n, event_id=f"{EVENT_ID_PREFIX}{n}"), at=float(n))
    assert ledger.sent == 5 and ledger.backlog == 5 and ledger.users_seen() == 2

    ledger.on_list(10.0, _list("soak-4"))  # b's 2nd event: answers both of b's
    assert (ledger.lists, ledger.covered, ledger.backlog) == (1, 2, 3)
    ledger.on_list(11.0, _list("soak-4"))  # the same trigger again
    ledger.on_list(11.0, _list("warm-up-1"))  # not a soak event
    assert (ledger.duplicate_lists, ledger.foreign_lists, ledger.lists) == (1, 1, 1)
    ledger.on_list(12.0, _list("soak-1"))  # a's 2nd of 3
    ledger.on_list(13.0, _list("soak-0"))  # a's 1st, arriving late: nothing new answered
    assert (ledger.covered, ledger.backlog) == (4, 1)
    ledger.on_list(14.0, _list("soak-3"))
    assert ledger.backlog == 0 and ledger.covered == ledger.sent
    assert ledger.interactions_held() == 4  # a: 3 events, b: 2, each held up to 2
    driver, worker = ledger.take_window()
    assert driver["max"] == pytest.approx(13_000.0) and worker["p50"] == 5.0
    assert ledger.take_window()[0]["p50"] is None  # the window starts afresh


def test_soak_events_are_numbered_and_generated_in_chunks() -> None:
    world = SyntheticWorld(seed=1, n_items=20, n_users=5)
    events = list(soak_events(world, total=25, chunk=10))
    assert [e.event_id for e in events] == [f"soak-{n}" for n in range(25)]
    assert {e.user_id for e in events} <= set(world.user_ids())


def _samples(rss: list[float], lag: list[float], answered_per_s: float, users: list[int],
             dedup: list[float] | None = None) -> list[dict]:
    out = []
    for k, (r, g, u) in enumerate(zip(rss, lag, users)):
        t = 10.0 * k
        out.append({"t_s": t, "phase": "load", "worker_rss_mib": r, "lag": g, "backlog": g,
                    "answered": answered_per_s * t, "users_seen": u, "interactions_held": u,
                    "dedup_ids": (dedup or [100.0] * len(rss))[k]})
    return out


def _results(samples: list[dict], rate: float = 100.0) -> dict:
    return {"settings": {"rate": rate, "duration_s": 10.0 * (len(samples) - 1), "dedup_capacity": 100},
            "samples": samples, "send": {"sent_per_s": rate}}


def test_flat_memory_and_lag_at_the_rate_offered_pass() -> None:
    n = 11
    verdicts = judge(_results(_samples([500.0] * n, [10.0] * n, 100.0, [1000] * n)))
    assert verdicts["rss"]["verdict"] == "bounded" and verdicts["rss"]["ok"]
    assert verdicts["lag"]["ok"] and verdicts["rate"]["ok"]
    assert verdicts["samples_judged"] == 6  # t >= 50 s of 100 s


def test_memory_growing_while_users_arrive_is_told_apart_from_a_leak() -> None:
    n = 11
    rss = [500.0 + 5 * k for k in range(n)]  # 30 MiB/min
    filling = judge(_results(_samples(rss, [0.0] * n, 100.0, [100 * k for k in range(n)])))
    assert filling["rss"]["verdict"] == "growing while bounded structures fill" and filling["rss"]["ok"]
    assert any("users seen" in reason for reason in filling["rss"]["still_filling"])

    leak = judge(_results(_samples(rss, [0.0] * n, 100.0, [1000] * n)))
    assert leak["rss"]["verdict"] == "growing (leak?)" and leak["rss"]["ok"] is False
    assert leak["rss"]["slope_mib_per_min"] == pytest.approx(30.0)


def test_a_worker_that_falls_behind_fails_lag_and_rate() -> None:
    n = 11
    verdicts = judge(_results(_samples([500.0] * n, [750.0 * 10 * k for k in range(n)], 250.0, [1000] * n),
                              rate=1000.0))
    assert verdicts["lag"]["ok"] is False and verdicts["lag"]["slope_per_s"] == pytest.approx(750.0)
    assert verdicts["rate"]["ok"] is False and verdicts["rate"]["answered_per_s_last_half"] == 250.0


def test_the_report_renders_a_failed_run_and_says_so() -> None:
    results = _results(_samples([500.0, 510.0, 520.0], [0.0] * 3, 100.0, [1, 2, 3]))
    results["settings"].update({"seed": 7, "cpu_count": 2, "load_average": [1.0, 1.0, 1.0], "users": 3, "items": 10,
                                "sample_s": 10.0, "partitions": 4, "batch_size": 256, "history_length": 50,
                                "drain_max_s": 60.0})
    for sample in results["samples"]:
        sample.update({"sent": 0, "answered_per_s": 0.0, "broker_rss_mib": None, "p50_ms": None,
                       "p99_ms": None, "worker_cores": 0.5})
    results["error"] = "the worker exited with code 1"
    results["verdicts"] = judge(results)
    text = render_markdown(results)
    assert "**The run did not complete**: the worker exited with code 1" in text
    assert "| worker RSS bounded |" in text and "start 500, peak 520, end 520 MiB" in text
    assert rss_figures(results["samples"]) == {"start": 500.0, "peak": 520.0, "end": 520.0}
    assert rss_figures([]) == {"start": None, "peak": None, "end": None}


def test_a_worker_that_stops_is_a_stall_and_a_busy_dev_broker_is_named() -> None:
    samples = _samples([500.0] * 11, [100.0 * k for k in range(11)], 0.0, [1000] * 11)
    for k, sample in enumerate(samples):
        sample.update({"events_counted": float(min(k, 3) * 100), "answered": min(k, 3) * 100,
                       "backlog": 50 + 100 * k, "broker_cores": 1.0})
    results = _results(samples)
    results["settings"].update({"broker": "embedded", "cpu_count": 2})
    results["verdicts"] = verdicts = judge(results)
    assert verdicts["progress"] == {"ok": False, "stalled_from_t_s": 30.0, "events_counted": 300.0,
                                    "answered": 300, "broker_cores": 1.0}
    notes = notes_on(results)
    assert any("stalled at t = 30 s" in note and "Tansu" in note for note in notes)

    for sample in samples:  # slow but moving: no stall
        sample["events_counted"] = sample["answered"] = sample["t_s"]
    assert judge(results)["progress"] == {"ok": True, "stalled_from_t_s": None}


def test_a_tail_fetch_slower_than_the_fetch_wait_blames_the_broker() -> None:
    n = 11
    samples = _samples([500.0] * n, [750.0 * 10 * k for k in range(n)], 250.0, [1000] * n)
    for k, sample in enumerate(samples):
        sample.update({"sent": 1000 * 10 * k, "events_fetch_ms": 2.0 * k, "lists_fetch_ms": 1.0,
                       "worker_cores": 0.9, "broker_cores": 0.3})
    results = _results(samples, rate=1000.0)
    results["settings"].update({"broker": "embedded", "cpu_count": 2, "fetch_max_wait_ms": 100})
    results["verdicts"] = verdicts = judge(results)
    assert verdicts["broker"] == {"max_fetch_ms": 20.0, "median_fetch_ms": 5.5, "late": 0, "fetches": 12,
                                  "limit_ms": 100, "late_share_limit": 0.1, "ok": True}
    [note] = [note for note in notes_on(results) if "fetch" in note]
    assert "the worker's own speed on this machine bounds the rate, not the broker" in note

    results["settings"]["fetch_max_wait_ms"] = 20  # one spike of 12 samples: a retry, not a stop
    assert judge(results)["broker"]["late"] == 1 and judge(results)["broker"]["ok"]

    results["settings"]["fetch_max_wait_ms"] = 10
    results["verdicts"] = verdicts = judge(results)
    assert verdicts["broker"]["ok"] is False
    late, worker = [note for note in notes_on(results) if "fetch" in note]
    assert late.startswith("6 of the last half's 12 tail fetches took the fetch wait (10 ms) or longer, the "
                           "first at t = 50 s (50,000 events sent); the median was 5.5 ms")
    assert "Tansu 0.6's memory storage lists every stored record batch" in late and "is asked again" in late
    assert "the worker's own speed on this machine bounds the rate" in worker


def test_the_report_shows_the_broker_side() -> None:
    samples = _samples([500.0] * 3, [0.0] * 3, 100.0, [1, 2, 3])
    for k, sample in enumerate(samples):
        sample.update({"sent": 100 * k, "answered_per_s": 100.0, "broker_rss_mib": 50.0, "p50_ms": 5.0,
                       "p99_ms": 9.0, "worker_cores": 0.5, "broker_cores": 0.2, "driver_cores": 0.1,
                       "events_fetch_ms": 1.5 + k, "lists_fetch_ms": 0.5})
    results = _results(samples)
    results["settings"].update({"seed": 7, "cpu_count": 2, "load_average": [1.0, 1.0, 1.0], "users": 3,
                                "items": 10, "sample_s": 10.0, "partitions": 4, "batch_size": 256,
                                "history_length": 50, "drain_max_s": 60.0, "fetch_max_wait_ms": 100,
                                "sdk_linger_ms": 50, "producer_linger_ms": 5, "producer_batch_bytes": 262_144})
    results["broker_batches"] = {"events": {"0": {"batches": 10, "records": 150}, "1": {"batches": 30, "records": 50}},
                                 "recommendations": {"0": {"batches": 4, "records": 8}}}
    results["verdicts"] = judge(results)
    text = render_markdown(results)
    assert "fetch wait 100 ms, linger: SDK (this driver) 50 ms, worker 5 ms, record batches up to 256 KB" in text
    assert ("| broker fetches in time | tail fetches (events, recommendations): median 1.5 ms, slowest 3.5 ms, "
            "0 of 4 at the wait or over | under 100 ms") in text
    assert "`events` 40 batches (20 a partition, 5.0 records a batch); `recommendations` 4 batches" in text
    assert "| 1.5 / 0.5 |" in text
