"""The model store: versioned, checksummed checkpoints (safetensors weights + a JSON manifest).

Each checkpoint is one directory, `root/<version>/`, holding `weights.safetensors` and
`manifest.json`. It is written under a temporary name and renamed into place, so a reader
sees a whole checkpoint or none. Loading checks the sha256, the tensor names and shapes,
and that every float is finite, and raises `ModelStoreError` rather than return weights it
cannot vouch for. No pickle is involved anywhere: weights are safetensors, the rest is JSON.

>>> import tempfile, torch
>>> with tempfile.TemporaryDirectory() as tmp:
...     store = DirectoryModelStore(Path(tmp))
...     first = store.save({"w": torch.ones(2, 3)}, {"dim": 3}, metrics={"hr@10": 0.25})
...     second = store.save({"w": torch.zeros(2, 3)}, {"dim": 3}, parent=first.version)
...     manifest, tensors = store.load()  # no version: the newest
...     print(manifest.parent == first.version, manifest.shapes, tensors["w"].sum().item())
...     print([m.version for m in store.list()] == [first.version, second.version])
True {'w': [2, 3]} 0.0
True
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
TMP_PREFIX = ".tmp-"  # in-progress (or crashed) writes; never a version, since versions start a-z
SHOWN_VERSIONS = 5  # an "unknown version" error lists at most this many of the newest

_KIND = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")  # becomes part of a directory name
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ModelStoreError(Exception):
    """A checkpoint that cannot be trusted or found; the message says why, `reason` in a word.

    Reasons: checksum, non_finite, shape, config, corrupt, unknown_version, unreadable.
    """

    def __init__(self, message: str, reason: str = "unreadable") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Manifest:
    """Everything known about one checkpoint except the weights themselves."""

    version: str  # "<kind>-<UTC time, µs>-<first 8 hex of sha256>": sorts by creation per kind
    parent: str | None  # version this one was trained from (None = from scratch)
    created_at: str  # ISO 8601, UTC
    kind: str  # "ranker"
    config: dict[str, Any]  # the model's config dataclass as a dict (opaque to the store)
    sha256: str  # hex sha256 of the weights file bytes
    shapes: dict[str, list[int]]  # tensor name -> shape, as saved
    data: dict[str, Any]  # description of the training data (opaque)
    metrics: dict[str, Any]  # evaluation metrics (opaque)
    format: int = MANIFEST_FORMAT

    def to_json(self) -> str:
        # allow_nan=False: NaN/Infinity are not JSON, and other readers would choke on them.
        return json.dumps(asdict(self), indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelStoreError(f"manifest is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ModelStoreError("manifest is not a JSON object")
        if raw.get("format") != MANIFEST_FORMAT:
            raise ModelStoreError(
                f"unsupported manifest format {raw.get('format')!r} (expected {MANIFEST_FORMAT})"
            )
        missing = [f.name for f in fields(cls) if f.name not in raw]
        if missing:
            raise ModelStoreError(f"manifest is missing fields: {', '.join(missing)}")
        # Unknown extra keys are ignored: a newer writer may add optional fields to format 1.
        manifest = cls(**{f.name: raw[f.name] for f in fields(cls)})
        manifest._check()
        return manifest

    def _check(self) -> None:
        """Refuse field values of the wrong type: a manifest is read from disk, not trusted."""
        problems = []
        if not all(isinstance(v, str) for v in (self.version, self.created_at, self.kind)):
            problems.append("version, created_at and kind must be strings")
        if self.parent is not None and not isinstance(self.parent, str):
            problems.append("parent must be a string or null")
        if not isinstance(self.sha256, str) or not _SHA256.match(self.sha256):
            problems.append("sha256 must be 64 lower-case hex digits")
        if not all(isinstance(v, dict) for v in (self.config, self.data, self.metrics)):
            problems.append("config, data and metrics must be objects")
        if not isinstance(self.shapes, dict) or not all(
            isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
            for shape in self.shapes.values()
        ):
            problems.append("shapes must map names to lists of non-negative integers")
        try:
            if datetime.fromisoformat(self.created_at).utcoffset() is None:
                problems.append("created_at has no time zone")
        except (TypeError, ValueError):
            problems.append(f"created_at is not ISO 8601: {self.created_at!r}")
        if problems:
            raise ModelStoreError("invalid manifest: " + "; ".join(problems))

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.created_at)


class ModelStore(Protocol):
    """Where trained models go and where serving workers get them from."""

    def save(
        self,
        tensors: Mapping[str, torch.Tensor],
        config: Mapping[str, Any],
        *,
        kind: str = "ranker",
        parent: str | None = None,
        data: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> Manifest: ...

    def load(self, version: str | None = None) -> tuple[Manifest, dict[str, torch.Tensor]]: ...

    def manifest(self, version: str) -> Manifest: ...

    def list(self) -> builtins.list[Manifest]: ...

    def latest(self) -> Manifest | None: ...


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so big checkpoints need no big buffer."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def new_version(kind: str, sha256: str, now: datetime | None = None) -> str:
    """A version name that sorts by creation time within a kind and names its content.

    >>> new_version("ranker", "1a2b3c4d" * 8, datetime(2026, 11, 24, 10, 15, 2, 123456, tzinfo=UTC))
    'ranker-20261124T101502123456Z-1a2b3c4d'
    """
    if not _KIND.match(kind):
        raise ValueError(f"kind must match {_KIND.pattern}, got {kind!r}")
    now = datetime.now(UTC) if now is None else now
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")  # a naive time would be read as UTC
    return f"{kind}-{now.astimezone(UTC):%Y%m%dT%H%M%S%fZ}-{sha256[:8]}"


class DirectoryModelStore:
    """A `ModelStore` on a local (or mounted) file system: one directory per version."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)  # created on first save: merely looking must not create dirs

    def __repr__(self) -> str:
        return f"DirectoryModelStore({str(self.root)!r})"

    # --- writing -------------------------------------------------------------------------
    def save(
        self,
        tensors: Mapping[str, torch.Tensor],
        config: Mapping[str, Any],
        *,
        kind: str = "ranker",
        parent: str | None = None,
        data: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> Manifest:
        if not tensors:
            raise ValueError("no tensors to save")
        # Contiguous CPU copies: safetensors writes raw buffers, and a checkpoint must load
        # on a machine without the GPU it was trained on.
        cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        payload = save_safetensors(cpu, metadata={"format": "pt"})
        # Hash the very bytes written below, so the manifest describes exactly the file.
        sha256 = hashlib.sha256(payload).hexdigest()
        now = datetime.now(UTC)
        manifest = Manifest(
            version=new_version(kind, sha256, now),
            parent=parent,
            created_at=now.isoformat(timespec="microseconds"),
            kind=kind,
            config=dict(config),
            sha256=sha256,
            shapes={name: list(t.shape) for name, t in cpu.items()},
            data=dict(data or {}),
            metrics=dict(metrics or {}),
        )
        text = manifest.to_json()  # fails (NaN metric, odd type) before anything is written

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            _write_synced(tmp / WEIGHTS_FILE, payload)
            _write_synced(tmp / MANIFEST_FILE, text.encode())
            _fsync_dir(tmp)
            try:
                os.rename(tmp, self.root / manifest.version)
            except OSError as exc:  # the target exists: same content saved in the same µs
                raise ModelStoreError(f"cannot publish {manifest.version}: {exc}") from exc
            _fsync_dir(self.root)  # make the rename itself durable
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("saved checkpoint %s in %s", manifest.version, self.root)
        # Return what a reader will get back (JSON turns tuples into lists, and so on).
        return Manifest.from_json(text)

    # --- reading -------------------------------------------------------------------------
    def manifest(self, version: str) -> Manifest:
        directory = self._version_dir(version)
        try:
            text = (directory / MANIFEST_FILE).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelStoreError(f"{version}: cannot read manifest: {exc}") from None
        try:
            manifest = Manifest.from_json(text)
        except ModelStoreError as exc:
            raise ModelStoreError(f"{version}: {exc}") from None
        if manifest.version != version:  # a renamed or copied directory: which one is it?
            raise ModelStoreError(f"{version}: manifest says version {manifest.version!r}")
        return manifest

    def load(self, version: str | None = None) -> tuple[Manifest, dict[str, torch.Tensor]]:
        if version is None:
            newest = self.latest()
            if newest is None:
                raise ModelStoreError(f"no checkpoint in {self.root}")
            version = newest.version
        manifest = self.manifest(version)
        try:
            payload = (self.root / version / WEIGHTS_FILE).read_bytes()
        except OSError as exc:
            raise ModelStoreError(f"{version}: cannot read weights: {exc}") from None
        # Hash and parse the same bytes: re-reading the file could see different content.
        actual = hashlib.sha256(payload).hexdigest()
        if actual != manifest.sha256:
            raise ModelStoreError(
                f"{version}: weights sha256 mismatch: manifest {manifest.sha256}, file {actual}",
                reason="checksum",
            )
        try:
            tensors = load_safetensors(payload)
        except (SafetensorError, ValueError, RuntimeError, TypeError) as exc:
            raise ModelStoreError(
                f"{version}: weights file is corrupt: {exc}", reason="corrupt"
            ) from None
        _check_tensors(version, manifest, tensors)
        return manifest, tensors

    def list(self) -> builtins.list[Manifest]:
        """Every readable checkpoint, oldest first; unreadable ones are logged and skipped."""
        if not self.root.exists():
            return []
        try:
            entries = sorted(self.root.iterdir())
        except OSError as exc:
            raise ModelStoreError(f"cannot list {self.root}: {exc}") from None
        manifests = []
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue  # in-progress `.tmp-*` writes, dot files, stray files
            try:
                manifests.append(self.manifest(entry.name))
            except ModelStoreError as exc:
                log.warning("skipping %s: %s", entry, exc)
        return sorted(manifests, key=lambda m: (m.created, m.version))

    def latest(self) -> Manifest | None:
        manifests = self.list()
        return manifests[-1] if manifests else None

    def _version_dir(self, version: str) -> Path:
        # A version is one plain directory name: refuse `..`, `a/b` and hidden tmp dirs.
        plain = bool(version) and Path(version).name == version and not version.startswith(".")
        directory = self.root / version
        if not plain or not directory.is_dir():
            raise ModelStoreError(
                f"unknown version {version!r} in {self.root}; {self._available()}",
                reason="unknown_version",
            )
        return directory

    def _available(self) -> str:
        names = [m.version for m in self.list()]
        if not names:
            return "the store is empty"
        shown = ", ".join(reversed(names[-SHOWN_VERSIONS:]))
        more = f" and {len(names) - SHOWN_VERSIONS} older" if len(names) > SHOWN_VERSIONS else ""
        return f"available (newest first): {shown}{more}"


def _check_tensors(version: str, manifest: Manifest, tensors: Mapping[str, torch.Tensor]) -> None:
    if set(tensors) != set(manifest.shapes):
        missing = sorted(set(manifest.shapes) - set(tensors))
        extra = sorted(set(tensors) - set(manifest.shapes))
        raise ModelStoreError(
            f"{version}: tensor names differ from manifest: missing {missing}, unexpected {extra}",
            reason="shape",
        )
    for name, tensor in tensors.items():
        if list(tensor.shape) != manifest.shapes[name]:
            raise ModelStoreError(
                f"{version}: tensor {name!r} has shape {list(tensor.shape)},"
                f" manifest says {manifest.shapes[name]}",
                reason="shape",
            )
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(
            torch.isfinite(tensor).all()
        ):
            raise ModelStoreError(
                f"{version}: tensor {name!r} contains NaN or Inf", reason="non_finite"
            )


def _write_synced(path: Path, payload: bytes) -> None:
    with path.open("xb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # A directory's entries (new files, a rename) are only durable once the directory is synced.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
