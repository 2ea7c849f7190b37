"""Resident memory as the memory bench measures it: RSS of this process after a garbage
collection, split into heap and mapped files, and deltas reported per 100k users or items."""

from __future__ import annotations

import gc

from streamrec.consumers.tools.processes import rss_bytes

SCALE = 100_000  # figures are reported per this many users / items
MIB = 2**20


def current_rss() -> int:
    """Resident set size of this process, bytes."""
    rss = rss_bytes("self")
    assert rss is not None, "/proc/self/statm is readable while this process runs"
    return rss


def settled_rss() -> int:
    """`current_rss` after a full garbage collection (what is still referenced)."""
    gc.collect()
    return current_rss()


def rss_split() -> dict[str, int]:
    """RssAnon (heap) and RssFile (mapped files, e.g. Qdrant's segments) of this process, bytes."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("RssAnon:", "RssFile:")):
                name, value, _ = line.split()
                out[name.rstrip(":")] = int(value) * 1024
    return out


def per_scale(delta_bytes: float, count: int) -> float:
    """MiB per `SCALE` of something, from the bytes `count` of them took.

    >>> per_scale(4 * MIB, 50_000)
    8.0
    """
    return round(delta_bytes / max(count, 1) * SCALE / MIB, 1)


def say(text: str, quiet: bool = False) -> None:
    if not quiet:
        print(text, flush=True)
