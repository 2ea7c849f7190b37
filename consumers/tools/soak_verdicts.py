"""The soak's verdicts, from its samples: RSS bounded, lag not growing, no stall, rate held.

They read the last half of the load only, so start-up and the first fill are left out
(`judge`); `find_stall` reads the whole run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

RSS_FLAT_MIB_PER_MIN = 1.0  # "RSS bounded": slope over the last half at most this
LAG_FLAT_SHARE = 0.02  # "lag not growing": slope at most this share of the rate (and 1 msg/s)
HELD_SHARE = 0.95  # "rate held": answered at least this share of the rate offered
FILLING_SHARE = 0.01  # a bounded structure that grew by more than this share is still filling
STALL_S = 30.0  # no event counted and none answered for this long, with a backlog: a stall
LATE_FETCH_SHARE = 0.1  # "broker fetches in time": at most this share of the tail fetches over the wait


def slope_per_s(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t, y) points; None with fewer than 3.

    >>> slope_per_s([(0, 1.0), (5, 2.0), (10, 3.0)])
    0.2
    """
    if len(points) < 3:
        return None
    t, y = np.array(points, dtype=float).T
    if np.ptp(t) == 0:
        return None
    return round(float(np.polyfit(t, y, 1)[0]), 6)


def judge(results: dict[str, Any]) -> dict[str, Any]:
    """The verdicts, from the samples of the load's last half.

    - **RSS bounded**: the worker's RSS slope at most `RSS_FLAT_MIB_PER_MIN`. Over it, the verdict
      says whether the bounded structures were still filling then (users seen, interactions held
      up to the history length, de-duplication ids below capacity): growth while they fill is
      expected and says nothing of a leak; growth while all are full is one.
    - **lag not growing**: the slope of the driver's backlog (events sent, not yet answered) at
      most `LAG_FLAT_SHARE` of the rate offered (and at least 1 event/s). The worker's lag gauge
      says the same in messages but moves in steps of the commit interval, too coarse to judge
      a slope by over a short run; its slope is reported beside.
    - **rate held**: events answered per second over the last half at least `HELD_SHARE` of the
      rate offered, with the lag not growing.
    - **broker fetches in time**: a fetch at the tail of `events` and of `recommendations` (the
      driver's probe, one request for every partition, as a consumer sends it) answered within
      the consumers' `fetch_max_wait_ms` in all but `LATE_FETCH_SHARE` of the last half's
      samples. On the embedded Tansu a longer one comes back empty for a consumer that may wait
      only that long: a spike (the cores busy) is asked again and passes, but once the stored
      batches take longer than the wait to list, every fetch does, the consumer stops, and the
      broker, not the worker, bounds the run (README, "The embedded broker's limit").
    """
    plan = results["settings"]
    half = plan["duration_s"] / 2
    load = [s for s in results.get("samples", []) if s["phase"] == "load" and s["t_s"] >= half]
    verdicts: dict[str, Any] = {"samples_judged": len(load), "from_t_s": half}

    def series(key: str) -> list[tuple[float, float]]:
        return [(s["t_s"], float(s[key])) for s in load if s.get(key) is not None]

    rss_slope = slope_per_s(series("worker_rss_mib"))
    filling = _still_filling(load, plan)
    rss: dict[str, Any] = {"slope_mib_per_min": None if rss_slope is None else round(rss_slope * 60, 2),
                           "limit_mib_per_min": RSS_FLAT_MIB_PER_MIN, "still_filling": filling}
    if rss_slope is None:
        rss["verdict"] = "unknown (too few samples)"
    elif rss_slope * 60 <= RSS_FLAT_MIB_PER_MIN:
        rss["verdict"] = "bounded"
    elif filling:
        rss["verdict"] = "growing while bounded structures fill"
    else:
        rss["verdict"] = "growing (leak?)"
    rss["ok"] = rss["verdict"] != "growing (leak?)" if rss_slope is not None else None
    verdicts["rss"] = rss

    lag_slope, backlog_slope = slope_per_s(series("lag")), slope_per_s(series("backlog"))
    lag_limit = max(1.0, LAG_FLAT_SHARE * plan["rate"])
    verdicts["lag"] = {
        "slope_per_s": lag_slope, "backlog_slope_per_s": backlog_slope, "limit_per_s": lag_limit,
        "ok": None if backlog_slope is None else backlog_slope <= lag_limit,
    }

    verdicts["progress"] = find_stall(results.get("samples", []))

    fetches = [value for key in ("events_fetch_ms", "lists_fetch_ms") for _, value in series(key)]
    wait = plan.get("fetch_max_wait_ms")
    late = None if wait is None else sum(value >= wait for value in fetches)
    verdicts["broker"] = {
        "max_fetch_ms": max(fetches) if fetches else None,
        "median_fetch_ms": round(float(np.median(fetches)), 1) if fetches else None,
        "late": late, "fetches": len(fetches), "limit_ms": wait, "late_share_limit": LATE_FETCH_SHARE,
        "ok": None if not fetches or late is None else late <= LATE_FETCH_SHARE * len(fetches),
    }

    answered = series("answered")
    answered_per_s = slope_per_s(answered)
    send = results.get("send", {})
    verdicts["rate"] = {
        "offered_per_s": plan["rate"],
        "sent_per_s": send.get("sent_per_s"),
        "answered_per_s_last_half": None if answered_per_s is None else round(answered_per_s, 1),
        "held_share": HELD_SHARE,
        "ok": (None if answered_per_s is None else
               answered_per_s >= HELD_SHARE * plan["rate"] and bool(verdicts["lag"]["ok"])),
    }
    return verdicts


def find_stall(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The first stretch of at least `STALL_S` in which the worker counted no new event and no
    list answered one while events waited (a worker that stopped, not one that is slow).

    >>> flat = [{"t_s": 10.0 * k, "events_counted": 500.0, "answered": 400, "backlog": 100,
    ...          "broker_cores": 1.0} for k in range(5)]
    >>> find_stall(flat)["stalled_from_t_s"], find_stall(flat[:3])["ok"]
    (0.0, True)
    """
    start: dict[str, Any] | None = None
    for sample in samples:
        if sample.get("events_counted") is None:
            continue  # /metrics did not answer: no figure either way
        moving = start is None or (sample["events_counted"], sample["answered"]) != (
            start["events_counted"], start["answered"])
        if moving or sample["backlog"] <= 0:
            start = sample if sample["backlog"] > 0 else None
            continue
        if sample["t_s"] - start["t_s"] >= STALL_S:
            stalled = [s for s in samples if s["t_s"] >= start["t_s"] and s.get("broker_cores") is not None]
            broker = float(np.mean([s["broker_cores"] for s in stalled])) if stalled else None
            return {"ok": False, "stalled_from_t_s": start["t_s"], "events_counted": start["events_counted"],
                    "answered": start["answered"], "broker_cores": None if broker is None else round(broker, 2)}
    return {"ok": True, "stalled_from_t_s": None}


def _still_filling(load: Sequence[dict[str, Any]], plan: dict[str, Any]) -> list[str]:
    """Which bounded structures grew by more than `FILLING_SHARE` over the samples."""
    if len(load) < 2:
        return []
    first, last = load[0], load[-1]
    out = []
    for key, label in (("users_seen", "users seen"), ("interactions_held", "interactions held")):
        if last[key] > first[key] * (1 + FILLING_SHARE):
            out.append(f"{label} {first[key]} -> {last[key]}")
    ids = (first.get("dedup_ids"), last.get("dedup_ids"))
    if None not in ids and ids[1] > ids[0] * (1 + FILLING_SHARE) and ids[1] < plan["dedup_capacity"]:
        out.append(f"de-duplication ids {ids[0]:.0f} -> {ids[1]:.0f} (capacity {plan['dedup_capacity']})")
    return out


def rss_figures(samples: Sequence[dict[str, Any]], key: str = "worker_rss_mib") -> dict[str, float | None]:
    """RSS at the first load sample, its peak, and at the end (MiB)."""
    values = [s[key] for s in samples if s.get(key) is not None]
    if not values:
        return {"start": None, "peak": None, "end": None}
    return {"start": values[0], "peak": max(values), "end": values[-1]}
