"""Reading a running worker's Prometheus `/metrics` from outside: for the tools that measure it.

The worker exports (`consumers/worker/metrics.py`); the demo, the load rig and the soak read
back what it exported, over HTTP, as any scraper would.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping


def scrape_samples(port: int, host: str = "127.0.0.1") -> dict[str, float] | None:
    """Every sample of a worker's /metrics as {'name{labels}': value}; None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=1.0) as response:
            body = response.read().decode()
    except OSError:
        return None
    return parse_samples(body)


def parse_samples(body: str) -> dict[str, float]:
    """Prometheus text exposition -> {'name{labels}': value} (comments left out).

    >>> parse_samples('# HELP up Is it up.\\nup 1.0\\nlag{topic="events"} 3.0\\n')
    {'up': 1.0, 'lag{topic="events"}': 3.0}
    """
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            samples[series] = float(value)
    return samples


def sample_total(samples: Mapping[str, float], name: str, **labels: str) -> float:
    """The sum of `name`'s series whose labels include `labels` (0 when there is none).

    >>> samples = {'lag{partition="0",topic="events"}': 3.0, 'lag{partition="1",topic="events"}': 4.0,
    ...            'lag{partition="0",topic="items"}': 9.0, "lag_seconds": 1.0}
    >>> sample_total(samples, "lag", topic="events"), sample_total(samples, "lag")
    (7.0, 16.0)
    """
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    total = 0.0
    for series, value in samples.items():
        base, _, rest = series.partition("{")
        if base == name and all(label in rest for label in wanted):
            total += value
    return total


def scrape_metric(port: int, name: str, host: str = "127.0.0.1") -> float | None:
    """One unlabelled metric from a worker's /metrics; None while it does not answer."""
    samples = scrape_samples(port, host)
    return None if samples is None else samples.get(name)
