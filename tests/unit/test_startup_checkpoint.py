"""Probe finding (issue 17): one bad checkpoint at start-up must not stop the worker.

`open_scorer` without a pinned version refuses a newest checkpoint that fails verification
(config mismatch, manifest shapes that do not match the file, a checksum that does not
match), reports it, and serves the previous good one, or none (the content scorer). A pinned
version stays strict: the operator named it. The worker counts each refusal
(tests/e2e/test_startup_checkpoint.py).
"""

from __future__ import annotations

import pytest
import torch

from streamrec.models.learning.ranker import Ranker, RankerConfig
from streamrec.models.learning.serving import open_scorer
from streamrec.models.learning.store import WEIGHTS_FILE, DirectoryModelStore, ModelStoreError
from tests.support.checkpoints import spoil_shapes
from tests.support.fakes import BruteForceIndex

DIM = 8
CONFIG = RankerConfig(text_dim=DIM, dim=8, max_len=5, layers=1, heads=2, id_buckets=64, dropout=0.0)


def save(store: DirectoryModelStore, config: RankerConfig = CONFIG) -> str:
    torch.manual_seed(0)
    return store.save(Ranker(config).state_dict(), config.to_dict()).version


def open_newest(store: DirectoryModelStore, refused: list) -> object:
    return open_scorer(store, None, BruteForceIndex(DIM), lambda name, dim: BruteForceIndex(dim), "items",
                       on_refused=lambda version, error: refused.append((version, error.reason)))


@pytest.mark.parametrize("spoil, reason", [
    (lambda store, version: None, "config"),  # saved with another model's config
    (spoil_shapes, "shape"),
    (lambda store, version: (store.root / version / WEIGHTS_FILE).write_bytes(b"x" * 64), "checksum"),
])
def test_a_bad_newest_checkpoint_is_refused_and_the_previous_good_one_served(tmp_path, spoil, reason) -> None:
    store = DirectoryModelStore(tmp_path)
    good = save(store)
    bad = save(store, RankerConfig(text_dim=DIM + 1, dim=8, max_len=5, layers=1, heads=2, id_buckets=64)
               if reason == "config" else CONFIG)
    spoil(store, bad)
    refused: list = []
    scorer = open_newest(store, refused)
    assert scorer is not None and scorer.version == good
    assert refused == [(bad, reason)]


def test_when_every_checkpoint_is_refused_none_is_served(tmp_path) -> None:
    store = DirectoryModelStore(tmp_path)
    only = save(store)
    spoil_shapes(store, only)
    refused: list = []
    assert open_newest(store, refused) is None  # the pipeline serves the content scorer
    assert refused == [(only, "shape")]


def test_a_pinned_bad_checkpoint_is_still_an_error(tmp_path) -> None:
    store = DirectoryModelStore(tmp_path)
    save(store)
    pinned = save(store)
    spoil_shapes(store, pinned)
    with pytest.raises(ModelStoreError):
        open_scorer(store, pinned, BruteForceIndex(DIM), lambda name, dim: BruteForceIndex(dim), "items")
