"""The `model-updates` topic: the message that names a stored version, and the topic's history.

The trainer publishes versions, a worker's canary judge promotes or rejects them, the CLI
pins and rolls back: all write the same `ModelUpdate`, built by `update_for` from the
version's manifest in the model store. Workers, the trainer and the CLI read the topic as a
broadcast (`streamrec.stream.readers`) and fold its history into what they serve.

The store is described by the little it must offer (`VersionStore`): this layer imports no
model code (`models.learning.store.DirectoryModelStore` is one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from streamrec.stream.messages import ModelAction, ModelUpdate
from streamrec.stream.readers import open_broadcast_reader, read_to_end
from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)

MAX_PROBLEM_CHARS = 300  # an unreadable message's problems, as logged


class StoredVersion(Protocol):
    """What a version's manifest says that its `model-updates` message repeats."""

    sha256: str
    parent: str | None
    metrics: Mapping[str, Any]

    @property
    def created(self) -> datetime: ...


class VersionStore(Protocol):
    """A model store as `update_for` reads it: a root directory and each version's manifest."""

    root: Path

    def manifest(self, version: str) -> StoredVersion: ...


def update_for(
    store: VersionStore, version: str, action: ModelAction, metrics: dict[str, float] | None = None
) -> ModelUpdate:
    """The `model-updates` message that names a stored version (the store's error if unknown).

    `metrics`: the figures the message carries; by default the manifest's numeric ones.

    >>> from types import SimpleNamespace
    >>> manifest = SimpleNamespace(sha256="ab" * 32, parent="v0", created=datetime(2024, 1, 1).astimezone(),
    ...                            metrics={"hit_rate@10": 0.25, "note": "text", "best": True})
    >>> store = SimpleNamespace(root=Path("/models"), manifest=lambda version: manifest)
    >>> update = update_for(store, "v1", "publish")
    >>> update.version, update.uri, update.parent_version, update.metrics
    ('v1', 'file:///models/v1', 'v0', {'hit_rate@10': 0.25})
    """
    manifest = store.manifest(version)
    numeric = {
        k: float(v) for k, v in manifest.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return ModelUpdate(
        version=version,
        uri=(store.root / version).resolve().as_uri(),
        sha256=manifest.sha256,
        parent_version=manifest.parent,
        metrics=metrics if metrics is not None else numeric,
        created_at=manifest.created.timestamp(),
        action=action,
    )


def parse_updates(records: Sequence[Any], on_invalid: Callable[[str], None]) -> list[ModelUpdate]:
    """The readable messages among `records`; each unreadable one is reported to `on_invalid`.

    >>> from types import SimpleNamespace as Record
    >>> good = ModelUpdate(version="v1", uri="file:///m/v1", sha256="ab" * 32, created_at=0.0)
    >>> problems = []
    >>> [u.version for u in parse_updates([Record(value=good.to_bytes()), Record(value=b"{")], problems.append)]
    ['v1']
    >>> len(problems)
    1
    """
    updates = []
    for record in records:
        try:
            updates.append(ModelUpdate.model_validate_json(record.value or b""))
        except ValidationError as exc:  # not JSON, or breaks the contract (e.g. a version's bounds)
            on_invalid(_one_line(exc))
    return updates


def _one_line(error: ValidationError) -> str:
    """A contract violation in one short line: field and rule, never the offending value (a
    900 KB version, or one with a newline that would forge a log line).

    >>> try:
    ...     ModelUpdate.model_validate({"version": "v1\\nforged", "uri": "u", "sha256": "ab" * 32, "created_at": 0.0})
    ... except ValidationError as exc:
    ...     print(_one_line(exc))
    version: String should match pattern '^[^\\x00-\\x1f\\x7f-\\x9f]+$'
    """
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<message>'}: {e['msg']}" for e in error.errors())
    return problems[:MAX_PROBLEM_CHARS].replace("\n", " ")


async def catch_up(consumer: Any, tps: Sequence[Any], on_invalid: Callable[[str], None]) -> list[ModelUpdate]:
    """The messages up to the end offsets seen now (the history), in order per partition."""
    return parse_updates(await read_to_end(consumer, tps), on_invalid)


async def read_history(settings: Settings) -> list[ModelUpdate]:
    """Every readable message on `model-updates` so far (for the CLI's rollback)."""
    consumer, tps = await open_broadcast_reader(settings, [settings.topics.model_updates])
    try:
        return await catch_up(consumer, tps, lambda error: log.warning("unreadable message: %s", error))
    finally:
        await consumer.stop()
