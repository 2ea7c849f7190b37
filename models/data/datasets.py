"""One reader per dataset, each returning the dataset as one stream of events (`EventLog`).

| kind | reader | file(s) | types |
|---|---|---|---|
| movielens | `movielens.read_movielens` | `ratings.csv`, `movies.csv` | rating >= 4 a click, else a view |
| beauty | `beauty.read_beauty` | `Beauty.txt` (+ attributes) | every review a purchase |
| generic | `generic.read_generic` | CSV / JSON lines (+ item file) | the `type` column, else a view |
| synthetic | `synthetic.read_synthetic` | none: the demo's shop, seeded | generated |

All order their events by the one rule of `log.stream_order` (timestamp, then a stable hash of
user and item). Files are read from where the user keeps them (`--path`); nothing is bundled
or downloaded. Per-user sequences are derived from these events (`sequences.SequenceDataset`).

>>> log = read_dataset("synthetic", None, seed=1, synthetic_events=30)
>>> log.name, len(log.events), log.events == sorted(log.events, key=lambda e: e.ts)
('synthetic', 30, True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from streamrec.models.data.beauty import read_beauty
from streamrec.models.data.generic import read_generic
from streamrec.models.data.log import EventLog
from streamrec.models.data.movielens import CLICK_MIN_RATING, read_movielens
from streamrec.models.data.synthetic import read_synthetic

DatasetKind = Literal["movielens", "beauty", "generic", "synthetic"]
DATASET_KINDS: tuple[str, ...] = ("movielens", "beauty", "generic", "synthetic")


def read_dataset(
    kind: DatasetKind | str,
    path: Path | None,
    items_path: Path | None = None,
    seed: int = 0,
    strong_rating: float | None = CLICK_MIN_RATING,
    synthetic_events: int = 20_000,
) -> EventLog:
    """The dataset `kind` at `path` as events in stream order, with its item texts.

    `items_path`: the generic reader's item file. `strong_rating`: MovieLens ratings at or above
    it are clicks (None: all views). `seed` and `synthetic_events`: the synthetic shop's.
    """
    if kind == "synthetic":
        return read_synthetic(seed=seed, n_events=synthetic_events)
    if kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; one of {', '.join(DATASET_KINDS)}")
    if path is None:
        raise ValueError(f"the {kind} dataset needs --path")
    if kind == "movielens":
        return read_movielens(Path(path), strong_rating)
    if kind == "beauty":
        return read_beauty(Path(path))
    return read_generic(Path(path), items_path)
