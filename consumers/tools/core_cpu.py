"""CPU seconds of the core per event, for before/after comparisons of a change (docs/core-speed.md).

Builds the bench's edge pipeline (`streamrec bench`'s synthetic shop: 10k items, 10,000 users,
MiniLM text for 300 items), warms up on 3,000 events, then times `Recommender.handle` with
`time.process_time` at micro-batches 256, 32 and 1, on one torch thread. CPU time moves less
than wall time on a shared machine; still, compare two trees only in runs made in turn.

    python -m streamrec.consumers.tools.core_cpu            # this tree
    python -m streamrec.consumers.tools.core_cpu --events 2048
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from streamrec.consumers.tools.bench import T0, WARMUP_EVENTS, catalogue_vectors
from streamrec.models.core.encoder import TextEncoder
from streamrec.models.core.pipeline import Pipeline
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.stream.settings import Settings

BATCH_SIZES = (256, 32, 1)


def events_per_cpu_second(events: int = 8_192, items: int = 10_000, users: int = 10_000) -> dict[int, float]:
    """{micro-batch: events per CPU-second}; batch 1 is timed on an eighth of `events`."""
    torch.set_num_threads(1)
    encoder = TextEncoder(None, device="cpu")
    world = SyntheticWorld(seed=3, n_items=items, n_users=users)
    catalogue, _ = catalogue_vectors(world, encoder, 300)
    with tempfile.TemporaryDirectory() as work:
        pipeline = Pipeline.from_settings(Settings(data_dir=Path(work), index_mode="edge"), encoder=encoder)
        for start in range(0, len(catalogue), 2_000):
            pipeline.store_items(catalogue[start : start + 2_000])
        sizes = {size: events if size > 1 else events // 8 for size in BATCH_SIZES}
        stream = world.events(WARMUP_EVENTS + sum(sizes.values()), start_ts=T0, rate_per_s=200.0)
        states: dict = {}

        def run(chunk: list, size: int) -> float:
            started = time.process_time()
            for start in range(0, len(chunk), size):
                handled = pipeline.recommender.handle(chunk[start : start + size], states)
                states.update(handled.states)
            return len(chunk) / max(time.process_time() - started, 1e-9)

        run(stream[:WARMUP_EVENTS], 64)
        offset, rates = WARMUP_EVENTS, {}
        for size, count in sizes.items():
            rates[size] = run(stream[offset : offset + count], size)
            offset += count
        pipeline.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=8_192, help="events timed at batches 256 and 32")
    args = parser.parse_args()
    rates = events_per_cpu_second(args.events)
    print(" ".join(f"batch {size}: {rate:.0f} events/CPU-s" for size, rate in rates.items()))


if __name__ == "__main__":
    main()
