"""DirectoryModelStore on real files: round trips, ordering, and every way a checkpoint is refused."""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from streamrec.consumers.cli.model_commands import add_model_parser
from streamrec.models.learning.store import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    DirectoryModelStore,
    Manifest,
    ModelStoreError,
    new_version,
    sha256_file,
)

CONFIG = {"dim": 4, "layers": [8, 4], "dropout": 0.1}


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "embedding.weight": torch.randn(5, 4, generator=generator),
        "head.weight": torch.randn(4, 3, generator=generator).t(),  # not contiguous
        "head.bias": torch.zeros(3, dtype=torch.float64),
        "steps": torch.tensor([7], dtype=torch.int64),
    }


def _edit_manifest(store: DirectoryModelStore, name: str, **changes: object) -> None:
    path = store.root / name / MANIFEST_FILE
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_round_trip_keeps_values_and_manifest_fields(tmp_path: Path) -> None:
    store = DirectoryModelStore(tmp_path / "models")
    tensors = _tensors()
    base = store.save(tensors, CONFIG)
    saved = store.save(
        tensors,
        CONFIG,
        parent=base.version,
        data={"events": 1000, "until_ts": 1.7e9},
        metrics={"hr@10": 0.41, "ndcg@10": 0.22},
    )
    manifest, loaded = store.load(saved.version)

    assert manifest == saved
    assert manifest.parent == base.version and base.parent is None
    assert manifest.kind == "ranker" and manifest.format == 1
    assert manifest.config == CONFIG
    assert manifest.data == {"events": 1000, "until_ts": 1.7e9}
    assert manifest.metrics == {"hr@10": 0.41, "ndcg@10": 0.22}
    assert manifest.shapes == {
        "embedding.weight": [5, 4],
        "head.weight": [3, 4],
        "head.bias": [3],
        "steps": [1],
    }
    assert manifest.sha256 == sha256_file(store.root / saved.version / WEIGHTS_FILE)
    assert re.fullmatch(r"ranker-\d{8}T\d{12}Z-" + manifest.sha256[:8], manifest.version)
    assert datetime.fromisoformat(manifest.created_at).utcoffset().total_seconds() == 0
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor), name


def test_load_none_and_latest_return_the_newest_and_list_is_oldest_first(tmp_path: Path) -> None:
    store = DirectoryModelStore(tmp_path)
    # Kinds chosen so that version names sort the other way round from creation.
    saved = [
        store.save(_tensors(n), CONFIG, kind=kind)
        for n, kind in enumerate(["zeta", "beta", "alpha"])
    ]

    assert [m.version for m in store.list()] == [m.version for m in saved]
    assert store.latest() == saved[-1]
    manifest, tensors = store.load()
    assert manifest == saved[-1]
    assert torch.equal(tensors["embedding.weight"], _tensors(2)["embedding.weight"])


def test_empty_store_has_nothing_and_is_not_created_by_reading(tmp_path: Path) -> None:
    store = DirectoryModelStore(tmp_path / "absent")
    assert store.list() == [] and store.latest() is None
    with pytest.raises(ModelStoreError, match="no checkpoint in"):
        store.load()
    assert not store.root.exists()


def test_flipped_byte_in_weights_is_refused_by_sha256(tmp_path: Path) -> None:
    store = DirectoryModelStore(tmp_path)
    saved = store.save(_tensors(), CONFIG)
    path = store.root / saved.version / WEIGHTS_FILE
    payload = bytearray(path.read_bytes())
    payload[-1] ^= 0x01  # inside the tensor data: still a well-formed file
    path.write_bytes(bytes(payload))

    with pytest.raises(ModelStoreError, match="sha256") as caught:
        store.load(saved.version)
    assert saved.version in str(caught.value) and saved.sha256 in str(caught.value)


def test_manifest_shapes_that_differ_from_the_file_are_refused(tmp_path: Path) -> None:
    store = DirectoryModelStore(tmp_path)
    saved = store.save(_tensors(), CONFIG)
    shapes = dict(saved.shapes, **{"embedding.weight": [4, 5]})
    _edit_manifest(store, saved.version, shapes=shapes)
    with pytest.raises(ModelStoreError, match="'embedding.weight' has shape"):
        store.load(saved.version)

    del shapes["steps"]
    _edit_manifest(store, saved.version, shapes=shapes)
    with pytest.raises(ModelStoreError, match="names differ"):
        store.load(saved.version)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensor_is_saved_but_refused_on_load(tmp_path: Path, bad: float) -> None:
    store = DirectoryModelStore(tmp_path)
    tensors = _tensors()
    tensors["head.bias"] = torch.tensor([0.0, bad, 1.0], dtype=torch.float64)
    saved = store.save(tensors, CONFIG)
    with pytest.raises(ModelStoreError, match="'head.bias' contains NaN or Inf"):
        store.load(saved.version)


def test_truncated_weights_are_refused(tmp_path: Path) -> None:
    store = DirectoryModelStore(tmp_path)
    saved = store.save(_tensors(), CONFIG)
    path = store.root / saved.version / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(ModelStoreError, match="sha256"):
        store.load(saved.version)

    # Even with a matching hash (a manifest rewritten after the damage), parsing refuses it
    # with a ModelStoreError, not a raw safetensors exception.
    _edit_manifest(store, saved.version, sha256=sha256_file(path))
    with pytest.raises(ModelStoreError, match="corrupt"):
        store.load(saved.version)


def test_unknown_version_is_refused_with_the_available_ones(tmp_path: Path) -> None:
    store = DirectoryModelStore(tmp_path)
    saved = store.save(_tensors(), CONFIG)
    with pytest.raises(ModelStoreError, match="unknown version") as caught:
        store.load("ranker-20000101T000000000000Z-deadbeef")
    assert saved.version in str(caught.value)
    for sneaky in ["..", f"../{tmp_path.name}/{saved.version}", ".tmp-x", ""]:
        with pytest.raises(ModelStoreError, match="unknown version"):
            store.manifest(sneaky)


def test_save_leaves_no_tmp_dirs_and_list_ignores_leftover_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = DirectoryModelStore(tmp_path)
    saved = store.save(_tensors(), CONFIG)
    assert [p.name for p in tmp_path.iterdir()] == [saved.version]

    # A crashed write looks like a complete checkpoint under a `.tmp-` name: still ignored,
    # and quietly, since leftovers of a crash are expected rather than alarming.
    shutil.copytree(tmp_path / saved.version, tmp_path / ".tmp-crashed")
    with caplog.at_level(logging.WARNING, logger="streamrec.models.learning.store"):
        assert store.list() == [saved]
    assert caplog.records == []


def test_failed_save_writes_nothing(tmp_path: Path) -> None:
    store = DirectoryModelStore(tmp_path / "models")
    with pytest.raises(ValueError):
        store.save(_tensors(), CONFIG, metrics={"ndcg@10": float("nan")})  # not JSON
    with pytest.raises(ValueError):
        store.save(_tensors(), CONFIG, kind="../escape")
    assert not store.root.exists()


def test_broken_manifest_directory_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = DirectoryModelStore(tmp_path)
    good = store.save(_tensors(), CONFIG)
    broken = store.save(_tensors(1), CONFIG)
    (tmp_path / broken.version / MANIFEST_FILE).write_text("{not json")
    (tmp_path / "stray-dir").mkdir()  # no manifest at all

    with caplog.at_level(logging.WARNING, logger="streamrec.models.learning.store"):
        assert store.list() == [good]
    assert broken.version in caplog.text and "stray-dir" in caplog.text
    assert store.load()[0] == good
    with pytest.raises(ModelStoreError, match="not valid JSON"):
        store.load(broken.version)


def test_manifest_json_refuses_unknown_format_and_missing_fields(tmp_path: Path) -> None:
    store = DirectoryModelStore(tmp_path)
    saved = store.save(_tensors(), CONFIG)
    assert Manifest.from_json(saved.to_json()) == saved

    raw = json.loads(saved.to_json())
    with pytest.raises(ModelStoreError, match="format 2"):
        Manifest.from_json(json.dumps(dict(raw, format=2)))
    with pytest.raises(ModelStoreError, match="sha256 must be"):
        Manifest.from_json(json.dumps(dict(raw, sha256="not-a-hash")))
    with pytest.raises(ModelStoreError, match="shapes must"):
        Manifest.from_json(json.dumps(dict(raw, shapes={"w": ["5"]})))
    del raw["sha256"]
    with pytest.raises(ModelStoreError, match="missing fields: sha256"):
        Manifest.from_json(json.dumps(raw))


def test_manifest_whose_version_disagrees_with_its_directory_is_refused(tmp_path: Path) -> None:
    store = DirectoryModelStore(tmp_path)
    saved = store.save(_tensors(), CONFIG)
    _edit_manifest(store, saved.version, version="ranker-20000101T000000000000Z-00000000")
    with pytest.raises(ModelStoreError, match="manifest says version"):
        store.manifest(saved.version)


def test_new_version_sorts_by_time_and_names_the_hash() -> None:
    sha = "1a2b3c4d" + "0" * 56
    early = new_version("ranker", sha, datetime(2026, 11, 24, 10, 15, 2, 123456, tzinfo=UTC))
    later = new_version("ranker", "f" * 64, datetime(2026, 11, 24, 10, 15, 2, 123457, tzinfo=UTC))
    assert early == "ranker-20261124T101502123456Z-1a2b3c4d"
    assert early < later
    with pytest.raises(ValueError):
        new_version("ranker", sha, datetime(2026, 1, 1))  # naive: which zone?


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_are_saved_from_cpu_copies(tmp_path: Path) -> None:
    store = DirectoryModelStore(tmp_path)
    tensors = {name: t.cuda() for name, t in _tensors().items()}
    _, loaded = store.load(store.save(tensors, CONFIG).version)
    assert all(t.device.type == "cpu" for t in loaded.values())
    assert torch.equal(loaded["head.weight"], tensors["head.weight"].cpu())


# --- `streamrec model list|show` ---------------------------------------------------------
def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamrec")
    add_model_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_model_list_and_show_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["model", "--model-dir", str(tmp_path), "list"]) == 0
    assert capsys.readouterr().out.strip() == f"no checkpoints in {tmp_path}"

    store = DirectoryModelStore(tmp_path)
    base = store.save(_tensors(), CONFIG)
    child = store.save(
        _tensors(1), CONFIG, parent=base.version, metrics={"hr@10": 0.5, "ndcg@10": 0.25}
    )

    assert _run(["model", "--model-dir", str(tmp_path), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["VERSION", "PARENT", "CREATED_AT", "METRICS"]
    assert lines[1].split() == [base.version, "-", base.created_at, "-"]
    assert lines[2].split() == [
        child.version,
        base.version,
        child.created_at,
        "hr@10=0.5",
        "ndcg@10=0.25",
    ]

    assert _run(["model", "--model-dir", str(tmp_path), "show", child.version]) == 0
    assert Manifest.from_json(capsys.readouterr().out) == child

    assert _run(["model", "--model-dir", str(tmp_path), "show", "nope"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "unknown version 'nope'" in captured.err
