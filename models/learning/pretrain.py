"""`streamrec pretrain` and the ranker's side of `streamrec evaluate`: dataset -> checkpoint.

The dataset is split leave-one-out (`evaluation.leave_one_out`): the model trains on every
user's sequence minus its last two events, early stopping watches the second-to-last (a
seeded sample of users), and the last one is the test, ranked against all items. The
checkpoint lands in the model store with the figures in its manifest.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamrec.models.data.sequences import SequenceDataset
from streamrec.models.evaluation.metrics import RankingMetrics, evaluate, leave_one_out
from streamrec.models.learning.item_table import ItemTable, TextEncoderLike
from streamrec.models.learning.ranker import Ranker, RankerConfig, StepLike, encode_sequences
from streamrec.models.learning.serving import load_ranker
from streamrec.models.learning.store import Manifest, ModelStore
from streamrec.models.learning.training import (
    TrainConfig,
    TrainResult,
    make_windows,
    train_ranker,
    warm_start,
)

log = logging.getLogger(__name__)


class RankerSequenceModel:
    """The ranker behind the evaluation harness's `SequenceModel` interface (full ranking)."""

    name = "ranker"

    def __init__(self, model: Ranker, table: ItemTable, device: torch.device, batch_size: int = 512) -> None:
        self.model = model
        self.table = table
        self.device = device
        self.batch_size = batch_size
        self._items: torch.Tensor | None = None  # (N, D) cached between score calls

    def fit(self, train: Mapping[str, Sequence[StepLike]], items: Sequence[str]) -> None:
        """Already trained; only checks that the columns are the table's items, in order."""
        if list(items) != self.table.items:
            raise ValueError("the ranker scores the item table's items; evaluate with the same order")
        self._items = None

    @torch.inference_mode()
    def score(self, histories: Sequence[Sequence[StepLike]]) -> np.ndarray:
        """Scores of every item for each history; (B, N)."""
        model = self.model.eval().to(self.device)
        if self._items is None:
            self._items = model.item_vectors(
                self.table.text.to(self.device), self.table.ids.to(self.device)
            ).float()  # (N, D)
        out = []
        config = model.config
        for start in range(0, len(histories), self.batch_size):
            part = histories[start : start + self.batch_size]
            sequences = encode_sequences(part, config.max_len, config.gap_buckets, self.table.row_of)
            sequences = sequences.to(self.device)
            users = model.user_vectors(self._items[sequences.rows.clamp(min=0)], sequences)  # (B, D)
            out.append(model.score(users, self._items).float().cpu().numpy())  # (B, N)
        return np.concatenate(out) if out else np.zeros((0, len(self.table)), dtype=np.float32)


@dataclass
class PretrainReport:
    manifest: Manifest
    training: TrainResult
    test: RankingMetrics
    model: Ranker
    table: ItemTable


def pretrain(
    dataset: SequenceDataset,
    store: ModelStore,
    encoder: TextEncoderLike,
    model_config: RankerConfig,
    train_config: TrainConfig,
    device: torch.device,
    init_from: str | None = None,
    cache_dir: Path | None = None,
    valid_users: int = 5_000,
    progress: bool = True,
) -> PretrainReport:
    """Train a ranker on `dataset` (optionally warm-started), evaluate it, save a checkpoint."""
    started = time.perf_counter()
    split = leave_one_out(dataset)
    parent: str | None = None
    source: dict[str, torch.Tensor] | None = None
    if init_from is not None:
        manifest, source = store.load(init_from)
        parent = manifest.version
        source_config = RankerConfig.from_dict(dict(manifest.config))
        # Shapes that the transferred weights fix come from the source; id buckets are new.
        model_config = RankerConfig(**{**source_config.to_dict(), "id_buckets": model_config.id_buckets})
    texts = [dataset.item_text[item] for item in split.items]
    table = ItemTable.embed(split.items, texts, encoder, model_config.id_buckets, cache_dir)
    if table.text.shape[1] != model_config.text_dim:
        raise ValueError(f"text vectors are {table.text.shape[1]}-d, the config says {model_config.text_dim}")
    torch.manual_seed(train_config.seed)
    model = Ranker(model_config)
    if source is not None:
        copied = warm_start(model, source)
        log.info("warm start from %s: %d tensors copied, id embeddings reset", parent, len(copied))
    windows = make_windows(split.train, table, model_config.max_len, model_config.gap_buckets)
    valid = list(split.valid)
    if len(valid) > valid_users:
        valid = random.Random(train_config.seed).sample(valid, valid_users)

    def validate(candidate: Ranker) -> dict[str, float]:
        adapter = RankerSequenceModel(candidate, table, device)
        adapter.fit(split.train, split.items)
        metrics = evaluate(adapter, valid, split.items)
        return {"hr@10": metrics.hr_at_10, "ndcg@10": metrics.ndcg_at_10}

    training = train_ranker(model, table, windows, train_config, device, validate, progress)
    adapter = RankerSequenceModel(model, table, device)
    adapter.fit(split.train, split.items)
    test = evaluate(adapter, split.test, split.items, progress=progress)
    seconds = round(time.perf_counter() - started, 1)
    metrics: dict[str, Any] = {
        "protocol": "leave-one-out, full ranking over all items minus the user's history",
        "test": test.as_dict(),
        "valid": training.best_metrics,
        "best_epoch": training.best_epoch,
        "epochs_run": len(training.epochs),
        "train_seconds": training.seconds,
        "total_seconds": seconds,
        "device": str(device),
        "parameters": model.n_parameters(),
    }
    data = {
        **dataset.description,
        "trained_on": "every sequence minus its last two events (leave-one-out train part)",
        "windows": len(windows),
        "training": train_config.to_dict(),
        "text_encoder": str(getattr(encoder, "path", "")),
    }
    manifest = store.save(
        {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
        model_config.to_dict(),
        kind="ranker",
        parent=parent,
        data=data,
        metrics=metrics,
    )
    return PretrainReport(manifest=manifest, training=training, test=test, model=model, table=table)


def load_for_evaluation(
    store: ModelStore,
    version: str | None,
    dataset: SequenceDataset,
    encoder: TextEncoderLike,
    device: torch.device,
    cache_dir: Path | None = None,
) -> tuple[Manifest, RankerSequenceModel]:
    """A stored checkpoint as a `SequenceModel` over the dataset's items."""
    manifest, tensors = store.load(version)
    model = load_ranker(manifest, tensors).to(device)
    items = dataset.items
    table = ItemTable.embed(
        items, [dataset.item_text[i] for i in items], encoder, model.config.id_buckets, cache_dir
    )
    return manifest, RankerSequenceModel(model, table, device)
