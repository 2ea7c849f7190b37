"""Per-user interaction sequences from a dataset, in time order: what offline training and
evaluation read.

Three sources: MovieLens (`ratings.csv` + `movies.csv`), the Amazon Beauty 5-core sequences
(`Beauty.txt`, optionally `Beauty_item2attributes.json`), and a generic CSV / JSON-lines file
with `user,item,timestamp[,type]` plus an optional item file with `id,text[,title]`.
Timestamp ties inside one user's history are broken by a seeded shuffle (file order inside a
tie can leak the future: MovieLens lists tied ratings by movie id).

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "log.csv").write_text("user,item,timestamp,type\\nu1,b,20,click\\nu1,a,10,view\\n")
>>> data = load_sequences("generic", folder / "log.csv")
>>> [(s.item_id, s.type) for s in data.sequences["u1"]], data.item_text["a"]
([('a', 'view'), ('b', 'click')], 'item a')
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streamrec.models.data.datasets import CLICK_MIN_RATING, load_movielens_items
from streamrec.models.learning.ranker import Step
from streamrec.stream.messages import EVENT_TYPES

DatasetKind = Literal["movielens", "beauty", "generic", "synthetic"]
BEAUTY_START_TS = 1_600_000_000.0  # simulated time of every Beauty user's first event
BEAUTY_STEP_S = 86_400.0  # Beauty has no timestamps: consecutive events one day apart

__all__ = ["SequenceDataset", "Step", "load_sequences"]


@dataclass
class SequenceDataset:
    """Users' time-ordered steps plus the text of every item."""

    name: str
    sequences: dict[str, list[Step]]  # user id -> steps, oldest first
    item_text: dict[str, str]  # item id -> text for the encoder (every item of `sequences`)
    item_title: dict[str, str] = field(default_factory=dict)  # item id -> short label
    description: dict[str, Any] = field(default_factory=dict)  # JSON-able provenance

    @property
    def items(self) -> list[str]:
        """Every item id, sorted (the column order of full-ranking scores)."""
        return sorted(self.item_text)

    def subset_users(self, fraction: float, seed: int) -> SequenceDataset:
        """A seeded sample of `fraction` of the users, with only the items they touched."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        users = sorted(self.sequences)
        chosen = random.Random(seed).sample(users, max(1, round(len(users) * fraction)))
        sequences = {user: self.sequences[user] for user in sorted(chosen)}
        used = {step.item_id for steps in sequences.values() for step in steps}
        return SequenceDataset(
            name=self.name,
            sequences=sequences,
            item_text={i: t for i, t in self.item_text.items() if i in used},
            item_title={i: t for i, t in self.item_title.items() if i in used},
            description={**self.description, "users_fraction": fraction, "users_seed": seed,
                         **_counts(sequences)},
        )


def load_sequences(
    kind: DatasetKind,
    path: Path | None,
    items_path: Path | None = None,
    seed: int = 0,
    strong_rating: float | None = CLICK_MIN_RATING,
) -> SequenceDataset:
    """Load a dataset as time-ordered sequences (see the module docstring for the formats).

    `strong_rating`: MovieLens ratings at or above it become clicks, the others views (None:
    every rating a view). `synthetic` needs no path: the demo's shop (`SyntheticWorld`), seeded.
    """
    if kind == "synthetic":
        from streamrec.models.data.synthetic import synthetic_sequences

        return synthetic_sequences(seed=seed)
    if path is None:
        raise ValueError(f"the {kind} dataset needs --path")
    path = Path(path)
    if kind == "movielens":
        return _movielens(path, seed, strong_rating)
    if kind == "beauty":
        return _beauty(path)
    if kind == "generic":
        return _generic(path, items_path, seed)
    raise ValueError(f"unknown dataset kind {kind!r}; one of movielens, beauty, generic, synthetic")


def _counts(sequences: dict[str, list[Step]]) -> dict[str, int]:
    return {
        "n_users": len(sequences),
        "n_items": len({s.item_id for steps in sequences.values() for s in steps}),
        "n_events": sum(len(steps) for steps in sequences.values()),
    }


def _ordered(rows: Iterable[tuple[str, Step]], seed: int) -> tuple[dict[str, list[Step]], int]:
    """Group by user, sort by time, shuffle inside ties (seeded). Returns (sequences, ties)."""
    grouped: dict[str, list[Step]] = defaultdict(list)
    for user, step in rows:
        grouped[user].append(step)
    rng = random.Random(seed)
    ties = 0
    sequences = {}
    for user in sorted(grouped):
        steps = grouped[user]
        keys = [rng.random() for _ in steps]  # one seeded draw per step breaks ties
        order = sorted(range(len(steps)), key=lambda n: (steps[n].ts, keys[n]))
        ordered = [steps[n] for n in order]
        ties += sum(1 for a, b in zip(ordered, ordered[1:]) if a.ts == b.ts)
        sequences[user] = ordered
    return sequences, ties


def _require(path: Path, name: str, layout: str) -> Path:
    file = path / name
    if not file.is_file():
        raise FileNotFoundError(f"expected {name} in {path} ({layout})")
    return file


def _movielens(path: Path, seed: int, strong_rating: float | None) -> SequenceDataset:
    ratings = _require(path, "ratings.csv", "MovieLens layout: ratings.csv and movies.csv")
    _require(path, "movies.csv", "MovieLens layout: ratings.csv and movies.csv")
    rows = []
    with ratings.open(newline="", encoding="utf-8") as file:
        for line, row in enumerate(csv.DictReader(file), start=2):
            try:
                rating = float(row["rating"])
                strong = strong_rating is not None and rating >= strong_rating
                step = Step(row["movieId"].strip(), "click" if strong else "view",
                            float(row["timestamp"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{ratings}:{line}: bad rating row ({exc})") from None
            rows.append((row["userId"].strip(), step))
    sequences, ties = _ordered(rows, seed)
    items = {item.item_id: item for item in load_movielens_items(path, ts=0.0)}
    used = {s.item_id for steps in sequences.values() for s in steps}
    text = {i: items[i].text if i in items else f"movie {i}" for i in used}
    title = {i: str((items[i].attributes or {}).get("title", i)) if i in items else i for i in used}
    return SequenceDataset("movielens", sequences, text, title, {
        "dataset": "movielens", "path": str(path), **_counts(sequences),
        "event_mapping": "every rating is an event: "
        + (f"rating >= {strong_rating:g} -> click, else view" if strong_rating is not None else "a view"),
        "tie_breaking": f"seeded shuffle inside equal timestamps (seed {seed}); {ties} tied steps",
    })


def _beauty(path: Path) -> SequenceDataset:
    layout = "Amazon Beauty layout: Beauty.txt (user item item ...), optional Beauty_item2attributes.json"
    source = _require(path, "Beauty.txt", layout)
    attributes: dict[str, list[int]] = {}
    attribute_file = path / "Beauty_item2attributes.json"
    if attribute_file.is_file():
        attributes = {str(k): list(v) for k, v in json.loads(attribute_file.read_text()).items()}
    sequences: dict[str, list[Step]] = {}
    with source.open(encoding="utf-8") as file:
        for line, text in enumerate(file, start=1):
            parts = text.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise ValueError(f"{source}:{line}: a user without items")
            sequences[parts[0]] = [
                Step(item, "purchase", BEAUTY_START_TS + n * BEAUTY_STEP_S) for n, item in enumerate(parts[1:])
            ]
    used = sorted({s.item_id for steps in sequences.values() for s in steps})
    text = {}
    for item in used:
        codes = attributes.get(item, [])
        text[item] = f"product {item}; attributes " + " ".join(f"a{c}" for c in codes) if codes else f"product {item}"
    return SequenceDataset("beauty", sequences, text, {i: f"product {i}" for i in used}, {
        "dataset": "amazon-beauty-5core", "path": str(path), **_counts(sequences),
        "event_mapping": "every review is a purchase",
        "time": f"no timestamps: the n-th event of a user at {BEAUTY_START_TS:.0f} + n days",
        "item_text": "no real text: 'product <id>; attributes a<code> ...' from the attribute file",
    })


def _read_records(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, record) from a CSV with a header or a JSON-lines file."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        with path.open(encoding="utf-8") as file:
            for line, text in enumerate(file, start=1):
                if text.strip():
                    try:
                        record = json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{line}: invalid JSON ({exc.msg})") from None
                    if not isinstance(record, dict):
                        raise ValueError(f"{path}:{line}: expected a JSON object")
                    yield line, record
    else:
        with path.open(newline="", encoding="utf-8") as file:
            for line, record in enumerate(csv.DictReader(file), start=2):
                yield line, record


def _generic(path: Path, items_path: Path | None, seed: int) -> SequenceDataset:
    rows = []
    for line, record in _read_records(path):
        try:
            user, item = str(record["user"]).strip(), str(record["item"]).strip()
            ts = float(record["timestamp"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}:{line}: needs user, item and a numeric timestamp; got {record}") from None
        kind = str(record.get("type") or "view").strip()
        if kind not in EVENT_TYPES:
            raise ValueError(f"{path}:{line}: unknown event type {kind!r}; one of {sorted(EVENT_TYPES)}")
        if not user or not item:
            raise ValueError(f"{path}:{line}: empty user or item")
        rows.append((user, Step(item, kind, ts)))
    sequences, ties = _ordered(rows, seed)
    text: dict[str, str] = {}
    title: dict[str, str] = {}
    if items_path is not None:
        for line, record in _read_records(Path(items_path)):
            if "id" not in record or "text" not in record:
                raise ValueError(f"{items_path}:{line}: an item needs id and text")
            item_id = str(record["id"]).strip()
            text[item_id] = str(record["text"])
            title[item_id] = str(record.get("title") or record["text"])[:80]
    used = {s.item_id for steps in sequences.values() for s in steps}
    for item in used:
        text.setdefault(item, f"item {item}")
        title.setdefault(item, item)
    text = {i: t for i, t in text.items() if i in used}
    title = {i: t for i, t in title.items() if i in used}
    return SequenceDataset("generic", sequences, text, title, {
        "dataset": "generic", "path": str(path), "items_path": str(items_path) if items_path else None,
        **_counts(sequences),
        "tie_breaking": f"seeded shuffle inside equal timestamps (seed {seed}); {ties} tied steps",
    })
