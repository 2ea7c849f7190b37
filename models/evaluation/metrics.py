"""Leave-one-out evaluation with full ranking: the protocol sequential recommenders are judged by.

Each user's last event is the test target and the one before it the validation target; models
learn from everything before those. A target is ranked against **all** items minus the user's
history, so figures are comparable with full-ranking papers and not flattered by sampled
negatives. Two drivers:
- `evaluate`, for a model that scores every item for a history (`SequenceModel`: the ranker).
  The target itself stays in; ties count against it (pessimistic): a model that scores
  everything alike gets rank N, not rank 1.
- `evaluate_learner`, for a learn/recommend system (the baselines of `baselines.py`, the same
  objects the prequential replay runs): it learns every user's history in stream order, then
  the target's place in the user's full recommended list is its rank.

>>> class Constant:
...     name = "constant"
...     def fit(self, train, items): self.n = len(items)
...     def score(self, histories): return np.zeros((len(histories), self.n), dtype=np.float32)
>>> cases = [("u", [Step("a", "view", 0.0)], Step("b", "view", 1.0))]
>>> model = Constant(); model.fit({}, ["a", "b", "c"])
>>> evaluate(model, cases, ["a", "b", "c"]).hr_at_10   # rank 2 of the 2 unseen items
1.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np

from streamrec.models.data.sequences import SequenceDataset
from streamrec.models.evaluation.prequential import StreamSystem, micro_batches, replay_order
from streamrec.models.learning.ranker import Step

Case = tuple[str, list[Step], Step]  # (user, input history, target)


class SequenceModel(Protocol):
    """What the harness evaluates: fit on training sequences, score every item per history."""

    name: str

    def fit(self, train: Mapping[str, Sequence[Step]], items: Sequence[str]) -> None: ...

    def score(self, histories: Sequence[Sequence[Step]]) -> np.ndarray:
        """(B, N) float scores, one column per item passed to `fit`, in that order."""
        ...


@dataclass
class LeaveOneOutSplit:
    items: list[str]
    train: dict[str, list[Step]]  # every sequence minus its last two steps (short ones whole)
    valid: list[Case]  # input seq[:-2], target seq[-2]
    test: list[Case]  # input seq[:-1], target seq[-1]


def leave_one_out(dataset: SequenceDataset) -> LeaveOneOutSplit:
    """Split every user with at least three steps; shorter users only train."""
    train: dict[str, list[Step]] = {}
    valid: list[Case] = []
    test: list[Case] = []
    for user, steps in dataset.sequences.items():
        if len(steps) < 3:
            train[user] = list(steps)
            continue
        train[user] = list(steps[:-2])
        valid.append((user, list(steps[:-2]), steps[-2]))
        test.append((user, list(steps[:-1]), steps[-1]))
    return LeaveOneOutSplit(dataset.items, train, valid, test)


@dataclass
class RankingMetrics:
    hr_at_10: float
    ndcg_at_10: float
    mrr: float
    coverage_at_10: float  # share of all items in at least one top-10 list
    n_users: int
    k: int = 10

    def as_dict(self) -> dict[str, float]:
        out = asdict(self)
        return {
            f"hr@{self.k}": out["hr_at_10"],
            f"ndcg@{self.k}": out["ndcg_at_10"],
            "mrr": out["mrr"],
            f"coverage@{self.k}": out["coverage_at_10"],
            "users": self.n_users,
        }


def evaluate(
    model: SequenceModel,
    cases: Sequence[Case],
    items: Sequence[str],
    k: int = 10,
    batch_size: int = 256,
    progress: bool = False,
) -> RankingMetrics:
    """Rank each case's target among all items minus its history; HR@k, NDCG@k, MRR, coverage."""
    from tqdm import tqdm

    column = {item: n for n, item in enumerate(items)}
    hits = ndcg = reciprocal = 0.0
    shown = np.zeros(len(items), dtype=bool)
    n = 0
    bar = tqdm(total=len(cases), desc=f"ranking ({model.name})", unit="user", disable=not progress, leave=False)
    for start in range(0, len(cases), batch_size):
        part = [case for case in cases[start : start + batch_size] if case[2].item_id in column]
        if not part:
            continue
        scores = np.array(model.score([history for _, history, _ in part]), dtype=np.float64)  # (B, N)
        if scores.shape != (len(part), len(items)):
            raise ValueError(f"{model.name} returned scores {scores.shape}, expected {(len(part), len(items))}")
        targets = np.array([column[target.item_id] for _, _, target in part])  # (B,)
        for row, (_, history, target) in enumerate(part):
            seen = [column[s.item_id] for s in history if s.item_id in column and s.item_id != target.item_id]
            scores[row, seen] = -np.inf
        target_scores = scores[np.arange(len(part)), targets]  # (B,)
        ranks = (scores >= target_scores[:, None]).sum(axis=1)  # (B,) pessimistic: ties count
        hits += float((ranks <= k).sum())
        ndcg += float(np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0).sum())
        reciprocal += float((1.0 / ranks).sum())
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]  # (B, k)
        shown[top.ravel()] = True
        n += len(part)
        bar.update(len(part))
    bar.close()
    if n == 0:
        return RankingMetrics(0.0, 0.0, 0.0, 0.0, 0, k)
    return RankingMetrics(hits / n, ndcg / n, reciprocal / n, float(shown.mean()), n, k)


def evaluate_learner(
    learner: StreamSystem,
    split: LeaveOneOutSplit,
    cases: Sequence[Case] | None = None,
    k: int = 10,
    batch_size: int = 256,
    progress: bool = False,
) -> RankingMetrics:
    """Leave-one-out over a learn/recommend system: learn every user's history, then rank each
    held-out item (`cases`: the split's test cases unless given).

    The learner takes in, in stream order, each user's steps before their held-out item (the
    case's history; a user without a case: their training steps), then recommends a full list
    to each case's user; the target's place in it is its rank. The ranking is the learner's own:
    over the items it has learned, minus those the user consumed, ties in its own order; an item
    it cannot list is a miss (reciprocal rank 0).

    >>> from streamrec.models.evaluation.baselines import MarkovBaseline
    >>> steps = lambda items: [Step(item, "view", float(t)) for t, item in enumerate(items)]
    >>> data = SequenceDataset("t", {"u1": steps("abcd"), "u2": steps("xbcd"), "u3": steps("yabc")},
    ...                        {i: i for i in "abcdxy"})
    >>> metrics = evaluate_learner(MarkovBaseline(), leave_one_out(data))  # learns a-b-c, x-b-c, y-a-b
    >>> metrics.n_users, metrics.hr_at_10  # u3's c follows b; nobody learned d, u1's and u2's target
    (3, 0.3333333333333333)
    """
    from tqdm import tqdm

    cases = split.test if cases is None else cases
    histories = {user: list(steps) for user, steps in split.train.items()}
    for user, history, _ in cases:
        histories[user] = list(history)
    for batch in micro_batches(replay_order(SequenceDataset("leave-one-out", histories, {})), 4096):
        learner.learn(batch)
    column = {item: n for n, item in enumerate(split.items)}
    hits = ndcg = reciprocal = 0.0
    shown: set[str] = set()
    n = 0
    bar = tqdm(total=len(cases), desc=f"ranking ({learner.name})", unit="user", disable=not progress, leave=False)
    for start in range(0, len(cases), batch_size):
        part = [case for case in cases[start : start + batch_size] if case[2].item_id in column]
        lists = learner.recommend([user for user, _, _ in part], len(column)) if part else []
        for (_, _, target), ranked in zip(part, lists):
            place = ranked.index(target.item_id) + 1 if target.item_id in ranked else None
            if place is not None:
                hits += place <= k
                ndcg += 1.0 / np.log2(place + 1.0) if place <= k else 0.0
                reciprocal += 1.0 / place
            shown.update(ranked[:k])
        n += len(part)
        bar.update(len(part))
    bar.close()
    if n == 0:
        return RankingMetrics(0.0, 0.0, 0.0, 0.0, 0, k)
    coverage = len(shown & column.keys()) / len(column)
    return RankingMetrics(hits / n, float(ndcg) / n, reciprocal / n, coverage, n, k)


def results_table(rows: Mapping[str, RankingMetrics]) -> str:
    """A markdown table, one row per model."""
    k = next(iter(rows.values())).k if rows else 10
    lines = [
        f"| model | HR@{k} | NDCG@{k} | MRR | coverage@{k} | users |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in rows.items():
        lines.append(
            f"| {name} | {m.hr_at_10:.4f} | {m.ndcg_at_10:.4f} | {m.mrr:.4f} | {m.coverage_at_10:.4f} | {m.n_users} |"
        )
    return "\n".join(lines)

