"""Leave-one-out evaluation with full ranking: the protocol sequential recommenders are judged by.

Each user's last event is the test target and the one before it the validation target; models
learn from everything before those. A target is ranked against **all** items minus the user's
history (the target itself stays in), so figures are comparable with full-ranking papers and
not flattered by sampled negatives. Ties count against the target (pessimistic): a model that
scores everything alike gets rank N, not rank 1.

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

