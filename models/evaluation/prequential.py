"""Prequential (test-then-learn) evaluation: replay a dataset as a stream, in time order.

For each event, before it is learned: is its item in the top-K list the system would serve that
user right now? Then every system learns the event. This is how a streaming recommender runs,
so it is how it is judged: no train/test split, no peeking, models that adapt get credit for it.

- **Order**: the readers' one stream order (`data.log.stream_order`): by timestamp, events with
  equal timestamps by a stable hash of user and item, never by file order (MovieLens lists a
  user's tied ratings by movie id, which would leak the future to sequence models). Beauty has
  no timestamps: its reader puts a user's n-th event on day n, so the replay interleaves users
  round-robin by position.
- **Micro-batches**: consecutive events go together (as a worker batches them) as long as no
  user appears twice, so every user's list reflects all their earlier events.
- **Warm-up**: the first `warmup` share of events is learned, not measured.
- **Served lists**: a worker serves every user a list after each micro-batch, and the full
  system learns from those lists (its blend steps on what the user took next from the list
  they were shown). With `serve_all`, a system that says so (`serves_every_event = True`) is
  asked for every event's list, warm-up included, as a worker would be; only the sampled ones
  are measured. By default every system is asked for the measured events' lists only (faster;
  the blend then learns from fewer lists).
- **Cold events**: a user's first event cannot be personalised; it is counted apart
  (`cold`), where each system shows its fallback (the full system: trending items).
- **Candidates**: a system ranks the items it has seen so far, minus the user's consumed ones;
  an item's first event is therefore a miss for everyone.
- **Diversity**: given item vectors, each measured list's intra-list similarity (ILS: the mean
  cosine between its items' text vectors, 1 = ten near-identical items) is averaged per system.

>>> from streamrec.stream.messages import Event
>>> class LastItem:  # lists the item the user touched last: right only on repeats
...     name = "last"
...     def __init__(self): self.last = {}
...     def recommend(self, users, k): return [[self.last[u]] if u in self.last else [] for u in users]
...     def learn(self, events): self.last.update({e.user_id: e.item_id for e in events})
>>> stream = [Event(event_id=str(n), user_id="u", item_id=i, type="view", ts=float(n))
...           for n, i in enumerate("aab")]
>>> result = prequential(stream, [LastItem()], PrequentialConfig(k=10))
>>> result.systems["last"].warm.hr, result.systems["last"].warm.n, result.systems["last"].cold.n
(0.5, 2, 1)
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from streamrec.models.data.log import tie_key
from streamrec.models.data.sequences import SequenceDataset
from streamrec.stream.messages import Event


@runtime_checkable
class StreamSystem(Protocol):
    """Anything the harness can replay a stream through."""

    name: str

    def recommend(self, user_ids: Sequence[str], k: int) -> list[list[str]]:
        """Each user's top-`k` item ids as they would be served now (best first)."""
        ...

    def learn(self, events: Sequence[Event]) -> None:
        """Take in a micro-batch of events (time order; at most one per user)."""
        ...


def serves_every_event(system: StreamSystem) -> bool:
    """Whether `system` learns from the lists it serves, so it must serve them all."""
    return bool(getattr(system, "serves_every_event", False))


@dataclass(frozen=True)
class PrequentialConfig:
    """How the replay is measured."""

    k: int = 10  # list length
    warmup: float = 0.0  # share of the stream learned before measuring starts, in [0, 1)
    sample_every: int = 1  # measure every n-th event after warm-up (all are learned)
    serve_all: bool = False  # True: systems that learn from what they serve get every event's list
    batch_size: int = 256  # most events per micro-batch (users never repeat inside one)
    windows: int = 50  # points on each curve
    progress: bool = False  # a progress bar with events/s

    def __post_init__(self) -> None:
        if self.k < 1 or self.sample_every < 1 or self.batch_size < 1 or self.windows < 1:
            raise ValueError(f"k, sample_every, batch_size and windows must be >= 1 in {self}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be within [0, 1), got {self.warmup}")


@dataclass
class Tally:
    """Hit-rate, NDCG and MRR at K over the events added."""

    n: int = 0
    hits: int = 0
    dcg: float = 0.0
    reciprocal: float = 0.0

    def add(self, rank: int | None) -> None:
        """One measured event; `rank` is the item's 1-based place in the list, None if absent."""
        self.n += 1
        if rank is not None:
            self.hits += 1
            self.dcg += 1.0 / math.log2(rank + 1.0)
            self.reciprocal += 1.0 / rank

    @property
    def hr(self) -> float:
        return self.hits / self.n if self.n else 0.0

    @property
    def ndcg(self) -> float:
        return self.dcg / self.n if self.n else 0.0

    @property
    def mrr(self) -> float:
        return self.reciprocal / self.n if self.n else 0.0

    def as_dict(self, k: int) -> dict[str, float]:
        return {f"hr@{k}": round(self.hr, 6), f"ndcg@{k}": round(self.ndcg, 6),
                f"mrr@{k}": round(self.mrr, 6), "events": self.n}


@dataclass
class CurvePoint:
    events_seen: int  # stream position at the end of the window
    hr: float
    ndcg: float
    mrr: float
    n: int  # measured warm events in the window


@dataclass
class SystemResult:
    """One system's figures over the replay."""

    name: str
    k: int
    warm: Tally = field(default_factory=Tally)  # users with at least one earlier event
    cold: Tally = field(default_factory=Tally)  # users' first events
    curve: list[CurvePoint] = field(default_factory=list)
    listed: set[str] = field(default_factory=set)  # every item shown in a measured list
    similarity: float = 0.0  # sum of measured lists' intra-list similarity
    similarity_lists: int = 0  # lists it was measured on (two or more items with vectors)
    seconds: float = 0.0  # time spent in this system's recommend + learn
    extra: dict[str, Any] = field(default_factory=dict)  # what the system reports of itself

    def as_dict(self, catalogue: int) -> dict[str, Any]:
        both = Tally(self.warm.n + self.cold.n, self.warm.hits + self.cold.hits,
                     self.warm.dcg + self.cold.dcg, self.warm.reciprocal + self.cold.reciprocal)
        return {
            "warm": self.warm.as_dict(self.k),
            "cold": self.cold.as_dict(self.k),
            "all": both.as_dict(self.k),
            f"coverage@{self.k}": round(len(self.listed) / catalogue, 6) if catalogue else 0.0,
            **({f"ils@{self.k}": round(self.similarity / self.similarity_lists, 6)} if self.similarity_lists else {}),
            "seconds": round(self.seconds, 2),
            "curve": [vars(point) for point in self.curve],
            **({"system": self.extra} if self.extra else {}),
        }


@dataclass
class PrequentialResult:
    config: PrequentialConfig
    events: int  # the whole stream
    measured_from: int  # first measured position (after warm-up)
    catalogue: int  # distinct items in the stream
    systems: dict[str, SystemResult]

    def as_dict(self) -> dict[str, Any]:
        return {
            "k": self.config.k,
            "warmup": self.config.warmup,
            "sample_every": self.config.sample_every,
            "serve_all": self.config.serve_all,
            "batch_size": self.config.batch_size,
            "events": self.events,
            "measured_from": self.measured_from,
            "catalogue": self.catalogue,
            "systems": {name: result.as_dict(self.catalogue) for name, result in self.systems.items()},
        }


def replay_order(dataset: SequenceDataset, limit: int | None = None) -> list[Event]:
    """The dataset's events as one stream, in the readers' stream order (`data.log.stream_order`:
    by time, equal times by a stable hash of user and item), each user's own order kept.

    For sequences derived from a reader this is exactly the reader's stream (what `streamrec feed`
    sends); a hand-made dataset whose user lists a tie otherwise keeps its own order.

    >>> from streamrec.models.learning.ranker import Step
    >>> data = SequenceDataset("t", {"u1": [Step("a", "view", 1.0), Step("b", "view", 1.0)],
    ...                              "u2": [Step("c", "view", 0.0)]}, {"a": "", "b": "", "c": ""})
    >>> [(e.user_id, e.item_id) for e in replay_order(data)]
    [('u2', 'c'), ('u1', 'a'), ('u1', 'b')]
    """
    rows = []
    for user in sorted(dataset.sequences):
        key = (-math.inf, 0)
        for position, step in enumerate(dataset.sequences[user]):
            key = max(key, (step.ts, tie_key(user, step.item_id)))  # never before the user's previous step
            rows.append((key, user, position, step))
    rows.sort(key=lambda row: row[:3])
    if limit is not None:
        rows = rows[:limit]
    return [
        Event(event_id=f"{dataset.name}-{n}", user_id=user, item_id=step.item_id, type=step.type, ts=step.ts)
        for n, (_, user, _, step) in enumerate(rows)
    ]


def micro_batches(events: Iterable[Event], batch_size: int) -> Iterator[list[Event]]:
    """Consecutive events, cut before a user repeats or the batch is full.

    >>> from streamrec.stream.messages import Event
    >>> evs = [Event(event_id=str(n), user_id=u, item_id="i", type="view", ts=0.0) for n, u in enumerate("abac")]
    >>> [[e.user_id for e in batch] for batch in micro_batches(evs, 10)]
    [['a', 'b'], ['a', 'c']]
    """
    batch: list[Event] = []
    users: set[str] = set()
    for event in events:
        if event.user_id in users or len(batch) >= batch_size:
            yield batch
            batch, users = [], set()
        batch.append(event)
        users.add(event.user_id)
    if batch:
        yield batch


def intra_list_similarity(items: Sequence[str], vectors: Mapping[str, np.ndarray]) -> float | None:
    """Mean cosine between the (unit) vectors of a list's items, over all pairs; None if fewer
    than two items have a vector.

    >>> v = {"a": np.array([1.0, 0.0]), "b": np.array([1.0, 0.0]), "c": np.array([0.0, 1.0])}
    >>> intra_list_similarity(["a", "b"], v), round(intra_list_similarity(["a", "b", "c"], v), 3)
    (1.0, 0.333)
    """
    rows = [vectors[item] for item in items if item in vectors]
    if len(rows) < 2:
        return None
    matrix = np.stack(rows)  # (K, D)
    cosines = matrix @ matrix.T  # (K, K)
    n = len(rows)
    return float((cosines.sum() - np.trace(cosines)) / (n * (n - 1)))


def prequential(
    stream: Sequence[Event],
    systems: Sequence[StreamSystem],
    config: PrequentialConfig | None = None,
    item_vectors: Mapping[str, np.ndarray] | None = None,
) -> PrequentialResult:
    """Replay `stream` (time order) through every system, test-then-learn; with
    `item_vectors` (unit text vectors), also each system's intra-list similarity."""
    from tqdm import tqdm

    config = config or PrequentialConfig()
    names = [system.name for system in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"system names must be unique, got {names}")
    results = {system.name: SystemResult(system.name, config.k) for system in systems}
    measured_from = math.ceil(len(stream) * config.warmup)
    window = max(1, math.ceil((len(stream) - measured_from) / config.windows))
    in_window = {name: Tally() for name in names}
    next_close = measured_from + window
    seen_users: set[str] = set()
    position = 0
    bar = tqdm(total=len(stream), desc="prequential", unit="event", disable=not config.progress,
               mininterval=1.0, smoothing=0.05)
    for batch in micro_batches(stream, config.batch_size):
        rows = [
            row for row in range(len(batch))
            if position + row >= measured_from and (position + row - measured_from) % config.sample_every == 0
        ]
        tested = [batch[row] for row in rows]
        users = [event.user_id for event in tested]
        for system in systems:
            result = results[system.name]
            started = time.perf_counter()
            if config.serve_all and serves_every_event(system):  # as a worker serves: everyone
                served = system.recommend([event.user_id for event in batch], config.k)
                lists = [served[row] for row in rows]
            else:
                lists = system.recommend(users, config.k) if tested else []
            system.learn(batch)
            result.seconds += time.perf_counter() - started
            for event, items in zip(tested, lists):
                items = items[: config.k]
                rank = items.index(event.item_id) + 1 if event.item_id in items else None
                result.listed.update(items)
                similarity = intra_list_similarity(items, item_vectors) if item_vectors else None
                if similarity is not None:
                    result.similarity += similarity
                    result.similarity_lists += 1
                if event.user_id in seen_users:
                    result.warm.add(rank)
                    in_window[system.name].add(rank)
                else:
                    result.cold.add(rank)
        seen_users.update(event.user_id for event in batch)
        position += len(batch)
        bar.update(len(batch))
        if position >= next_close or position == len(stream):
            _close_window(results, in_window, position)
            next_close = position + window
    bar.close()
    for system in systems:
        report = getattr(system, "report", None)
        if callable(report):
            results[system.name].extra = report()
    catalogue = len({event.item_id for event in stream})
    return PrequentialResult(config, len(stream), measured_from, catalogue, results)


def _close_window(results: dict[str, SystemResult], in_window: dict[str, Tally], position: int) -> None:
    for name, tally in in_window.items():
        if tally.n:
            results[name].curve.append(CurvePoint(position, tally.hr, tally.ndcg, tally.mrr, tally.n))
        in_window[name] = Tally()
