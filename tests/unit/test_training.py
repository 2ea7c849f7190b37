"""A tiny end-to-end training run: the ranker learns a planted next-item pattern.

Synthetic users walk through the items of one cluster in a fixed cycle; after a few epochs
the ranker must put the true next item in its top 10 far more often than chance, and beat
the popularity baseline under the same harness.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from streamrec.models.data.sequences import SequenceDataset
from streamrec.models.evaluation.baselines import PopularityBaseline
from streamrec.models.evaluation.metrics import evaluate, evaluate_learner, leave_one_out
from streamrec.models.learning.item_table import ItemTable
from streamrec.models.learning.pretrain import RankerSequenceModel
from streamrec.models.learning.ranker import Ranker, RankerConfig, Step
from streamrec.models.learning.training import TrainConfig, make_windows, train_ranker

N_CLUSTERS, PER_CLUSTER = 6, 10


def _cycles(n_users: int = 120, length: int = 10, seed: int = 0) -> SequenceDataset:
    rng = random.Random(seed)
    items = [f"c{c}-{j}" for c in range(N_CLUSTERS) for j in range(PER_CLUSTER)]
    sequences = {}
    for u in range(n_users):
        cluster, start = rng.randrange(N_CLUSTERS), rng.randrange(PER_CLUSTER)
        kinds = ["view", "click", "purchase"]
        sequences[f"u{u}"] = [
            Step(f"c{cluster}-{(start + n) % PER_CLUSTER}", rng.choice(kinds), 1.7e9 + 60.0 * n)
            for n in range(length)
        ]
    return SequenceDataset("cycles", sequences, {i: i for i in items})


def test_training_learns_the_planted_next_item() -> None:
    dataset = _cycles()
    split = leave_one_out(dataset)
    config = RankerConfig(text_dim=8, dim=32, max_len=8, layers=1, heads=2, id_buckets=128, dropout=0.1)
    rng = np.random.default_rng(0)
    text = rng.normal(size=(len(split.items), 8)).astype(np.float32)
    table = ItemTable.from_vectors(split.items, text / np.linalg.norm(text, axis=1, keepdims=True), config.id_buckets)
    model = Ranker(config)
    windows = make_windows(split.train, table, config.max_len, config.gap_buckets)
    adapter = RankerSequenceModel(model, table, torch.device("cpu"))
    adapter.fit(split.train, split.items)
    before = evaluate(adapter, split.test, split.items)

    def validate(candidate: Ranker) -> dict[str, float]:
        return {"ndcg@10": evaluate(RankerSequenceModel(candidate, table, torch.device("cpu")), split.valid, split.items).ndcg_at_10}

    result = train_ranker(
        model, table, windows, TrainConfig(epochs=15, batch_size=32, negatives=16, lr=5e-3, patience=3),
        torch.device("cpu"), validate, progress=False,
    )
    adapter.fit(split.train, split.items)
    after = evaluate(adapter, split.test, split.items)
    baseline = evaluate_learner(PopularityBaseline(), split)
    chance = 10 / (len(split.items) - 10)  # ~10 of the ~50 items a user has not seen
    assert result.best_epoch is not None and result.epochs[0]["loss"] > result.epochs[-1]["loss"]
    assert after.hr_at_10 > 0.6, (before, after)
    assert after.hr_at_10 > 2 * chance and after.hr_at_10 > before.hr_at_10 + 0.3
    assert after.ndcg_at_10 > baseline.ndcg_at_10 + 0.2


def test_training_is_seeded() -> None:
    dataset = _cycles(n_users=40, length=6)
    split = leave_one_out(dataset)
    config = RankerConfig(text_dim=4, dim=8, max_len=4, layers=1, heads=1, id_buckets=32)
    table = ItemTable.from_vectors(split.items, np.eye(len(split.items), 4, dtype=np.float32) + 0.1, config.id_buckets)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = Ranker(config)
        windows = make_windows(split.train, table, config.max_len, config.gap_buckets)
        train_ranker(model, table, windows, TrainConfig(epochs=2, negatives=8, seed=3), torch.device("cpu"), progress=False)
        runs.append(model.state_dict())
    for name in runs[0]:
        torch.testing.assert_close(runs[0][name], runs[1][name])
