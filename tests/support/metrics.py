"""A worker's /metrics, read from the outside (parsed by `consumers/tools/scrape.py`, as the tools do)."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping

from streamrec.consumers.tools.scrape import parse_samples

SCRAPE_TIMEOUT_S = 2.0  # a busy worker on a loaded 2-core machine may take over a second


def scrape(port: int) -> dict[str, float]:
    """The worker's /metrics as {'name{labels}': value}; empty while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT_S) as response:
            return parse_samples(response.read().decode())
    except OSError:
        return {}


def metric_sum(metrics: Mapping[str, float], prefix: str, contains: str = "") -> float:
    """The sum of the series whose name starts with `prefix` and whose text holds `contains`.

    >>> metric_sum({'events_total{outcome="ok"}': 3.0, 'events_total{outcome="duplicate"}': 1.0},
    ...            "events_total", 'outcome="duplicate"')
    1.0
    """
    return sum(v for k, v in metrics.items() if k.startswith(prefix) and contains in k)
