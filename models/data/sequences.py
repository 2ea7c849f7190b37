"""Per-user interaction sequences, derived from a dataset's events: what offline training and
leave-one-out evaluation read.

A user's sequence is their events in the stream's order (`log.stream_order`: by timestamp, ties
by a stable hash of user and item), so the sequences, the prequential replay and the bus replay
are the same data in the same order. Readers: `datasets.read_dataset`.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "log.csv").write_text("user,item,timestamp,type\\nu1,b,20,click\\nu1,a,10,view\\n")
>>> data = load_sequences("generic", folder / "log.csv")
>>> [(s.item_id, s.type) for s in data.sequences["u1"]], data.item_text["a"]
([('a', 'view'), ('b', 'click')], 'item a')
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamrec.models.data.datasets import DatasetKind, read_dataset
from streamrec.models.data.log import EventLog
from streamrec.models.data.movielens import CLICK_MIN_RATING
from streamrec.models.learning.ranker import Step

__all__ = ["SequenceDataset", "Step", "load_sequences"]


@dataclass
class SequenceDataset:
    """Users' time-ordered steps plus the text of every item."""

    name: str
    sequences: dict[str, list[Step]]  # user id -> steps, oldest first
    item_text: dict[str, str]  # item id -> text for the encoder (every item of `sequences`)
    item_title: dict[str, str] = field(default_factory=dict)  # item id -> short label
    description: dict[str, Any] = field(default_factory=dict)  # JSON-able provenance

    @classmethod
    def from_log(cls, log: EventLog) -> SequenceDataset:
        """Each user's events as steps, in the log's (stream) order; users sorted by id.

        >>> from streamrec.stream.messages import Event
        >>> events = [Event(event_id=str(n), user_id=u, item_id=i, type="view", ts=float(n))
        ...           for n, (u, i) in enumerate([("u2", "a"), ("u1", "b"), ("u2", "c")])]
        >>> data = SequenceDataset.from_log(EventLog("t", events, {"a": "", "b": "", "c": ""}))
        >>> {user: [s.item_id for s in steps] for user, steps in data.sequences.items()}
        {'u1': ['b'], 'u2': ['a', 'c']}
        """
        grouped: dict[str, list[Step]] = {}
        for event in log.events:
            grouped.setdefault(event.user_id, []).append(Step(event.item_id, event.type, event.ts))
        sequences = {user: grouped[user] for user in sorted(grouped)}
        return cls(log.name, sequences, dict(log.item_text), dict(log.item_title), dict(log.description))

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
    kind: DatasetKind | str,
    path: Path | None,
    items_path: Path | None = None,
    seed: int = 0,
    strong_rating: float | None = CLICK_MIN_RATING,
    synthetic_events: int = 20_000,
) -> SequenceDataset:
    """Read a dataset (`datasets.read_dataset`, same arguments) and group it into sequences."""
    log = read_dataset(kind, path, items_path, seed=seed, strong_rating=strong_rating,
                       synthetic_events=synthetic_events)
    return SequenceDataset.from_log(log)


def _counts(sequences: dict[str, list[Step]]) -> dict[str, int]:
    return {
        "n_users": len(sequences),
        "n_items": len({s.item_id for steps in sequences.values() for s in steps}),
        "n_events": sum(len(steps) for steps in sequences.values()),
    }
