"""A small ranker checkpoint, trained in-process on a synthetic world, in a worker's model store."""

from __future__ import annotations

import json
from collections import defaultdict

import torch

from streamrec.models.core.encoder import TextEncoder
from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.models.learning.item_table import ItemTable
from streamrec.models.learning.ranker import Ranker, RankerConfig, Step
from streamrec.models.learning.store import MANIFEST_FILE, DirectoryModelStore
from streamrec.models.learning.training import TrainConfig, make_windows, train_ranker
from streamrec.stream.broker import free_port
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics


def train_checkpoint(world: SyntheticWorld, store: DirectoryModelStore) -> str:
    """Train a small ranker on the world's history (real MiniLM text vectors); its version."""
    items = world.items(ts=0.0)
    config = RankerConfig(dim=32, max_len=10, layers=1, heads=2, id_buckets=256, dropout=0.1)
    table = ItemTable.embed([i.item_id for i in items], [i.text for i in items], TextEncoder(), config.id_buckets)
    history: dict[str, list[Step]] = defaultdict(list)
    for event in world.events(600, start_ts=1.7e9, stream=1):
        history[event.user_id].append(Step(event.item_id, event.type, event.ts))
    model = Ranker(config)
    windows = make_windows(history, table, config.max_len, config.gap_buckets)
    train_ranker(model, table, windows, TrainConfig(epochs=3, negatives=32), torch.device("cpu"), progress=False)
    manifest = store.save(model.state_dict(), config.to_dict(), data={"source": "synthetic"})
    return manifest.version


async def with_checkpoint(settings: Settings, world: SyntheticWorld) -> tuple[Settings, DirectoryModelStore, str]:
    """Settings for one worker (own metrics port, K=5), a trained checkpoint in its store, topics made."""
    settings = settings.model_copy(update={"metrics_port": free_port(), "k": 5})
    store = DirectoryModelStore(settings.resolved_model_dir)
    version = train_checkpoint(world, store)
    await ensure_topics(settings)
    return settings, store, version


def spoil_shapes(store: DirectoryModelStore, version: str) -> None:
    """Make a checkpoint's manifest claim shapes its weights file does not have (it then
    fails verification with the reason `shape`)."""
    path = store.root / version / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    name = next(name for name, shape in manifest["shapes"].items() if shape)
    manifest["shapes"][name] = [d + 1 for d in manifest["shapes"][name]]
    path.write_text(json.dumps(manifest))
