"""`streamrec model ...`: look into the model store, and tell every worker what to serve.

`list` and `show VERSION` read the store without loading any weights. `publish`, `pin`,
`unpin`, `rollback`, `canary` and `promote` send one message to `model-updates`, which every
worker reads (and a restarted worker replays), so the decision reaches all of them.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="streamrec")
>>> add_model_parser(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["model", "--model-dir", "/tmp/m", "show", "ranker-x"])
>>> args.model_dir, args.version, args.func is cmd_model_show
(PosixPath('/tmp/m'), 'ranker-x', True)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamrec.stream.messages import ModelUpdate

PREFERRED_METRICS = ("hr@10", "ndcg@10")  # shown first when present: the offline headline
MAX_METRICS = 3  # a table row stays readable


def add_model_parser(sub: argparse._SubParsersAction) -> None:
    """Register `model` (with `list` and `show VERSION`) on the CLI's sub-parsers."""
    model = sub.add_parser("model", help="list and inspect saved model checkpoints")
    model.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        metavar="PATH",
        help="model store directory (default: STREAMREC_MODEL_DIR or <data_dir>/models)",
    )
    commands = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="all checkpoints, oldest first")
    listing.set_defaults(func=cmd_model_list)
    show = commands.add_parser("show", help="print one checkpoint's manifest as JSON")
    show.add_argument("version")
    show.set_defaults(func=cmd_model_show)
    for action, text in (
        ("publish", "serve VERSION (unless a version is pinned)"),
        ("pin", "serve VERSION everywhere and ignore new versions until `unpin`"),
        ("canary", "serve VERSION to STREAMREC_CANARY_FRACTION of users first"),
        ("promote", "serve VERSION to everyone (ends a canary)"),
    ):
        command = commands.add_parser(action, help=text)
        command.add_argument("version")
        command.set_defaults(func=cmd_model_control, action=action)
    unpin = commands.add_parser("unpin", help="follow new versions again (serves the newest)")
    unpin.set_defaults(func=cmd_model_control, action="unpin", version=None)
    rollback = commands.add_parser(
        "rollback", help="pin the version served before the current one (or VERSION)"
    )
    rollback.add_argument("version", nargs="?", default=None)
    rollback.set_defaults(func=cmd_model_control, action="rollback")


def cmd_model_list(args: argparse.Namespace) -> int:
    from streamrec.models.learning.store import DirectoryModelStore, ModelStoreError

    root = _model_dir(args)
    try:
        manifests = DirectoryModelStore(root).list()
    except ModelStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not manifests:
        print(f"no checkpoints in {root}")
        return 0
    rows = [("VERSION", "PARENT", "CREATED_AT", "METRICS")]
    rows += [
        (m.version, m.parent or "-", m.created_at, metrics_summary(m.metrics)) for m in manifests
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]  # last column ragged
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    return 0


def cmd_model_show(args: argparse.Namespace) -> int:
    from streamrec.models.learning.store import DirectoryModelStore, ModelStoreError

    try:
        manifest = DirectoryModelStore(_model_dir(args)).manifest(args.version)
    except ModelStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(manifest.to_json(), end="")
    return 0


def cmd_model_control(args: argparse.Namespace) -> int:
    """Send one control message to `model-updates` (needs STREAMREC_BROKER)."""
    import asyncio

    from streamrec.models.learning.store import DirectoryModelStore, ModelStoreError
    from streamrec.stream.model_updates import read_history, update_for
    from streamrec.stream.producer import EventProducer
    from streamrec.stream.settings import Settings

    settings = Settings()
    store = DirectoryModelStore(_model_dir(args))

    async def send() -> str:
        version = args.version
        if args.action == "unpin":
            newest = store.latest()
            if newest is None:
                raise ModelStoreError(f"no checkpoint in {store.root}")
            version = newest.version
        elif args.action == "rollback" and version is None:
            history = await read_history(settings)
            version = previous_version(history)
            if version is None:
                raise ModelStoreError("nothing to roll back to: fewer than two versions were served")
        update = update_for(store, version, args.action)
        async with EventProducer(settings) as producer:
            await producer.send_raw(settings.topics.model_updates, update.to_bytes())
        return version

    try:
        version = asyncio.run(send())
    except ModelStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.action} {version}: sent to {settings.topics.model_updates}")
    return 0


def previous_version(history: Sequence[ModelUpdate]) -> str | None:
    """The main version served before the current one, by folding the topic's history.

    >>> from streamrec.models.learning.control import update
    >>> previous_version([update("publish", "v1"), update("publish", "v2")])
    'v1'
    >>> previous_version([update("publish", "v1")]) is None
    True
    """
    from streamrec.models.learning.control import ModelControl

    control = ModelControl()
    served: list[str] = []
    for message in history:
        main = control.apply(message).main
        if main is not None and (not served or served[-1] != main.version):
            served.append(main.version)
    return served[-2] if len(served) >= 2 else None


def metrics_summary(metrics: Mapping[str, Any]) -> str:
    """A few numeric metrics, headline ones first.

    >>> metrics_summary({"loss": 0.5, "ndcg@10": 0.21349, "hr@10": 0.4, "note": "x"})
    'hr@10=0.4 ndcg@10=0.2135 loss=0.5'
    >>> metrics_summary({})
    '-'
    """
    numeric = {
        k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    order = [k for k in PREFERRED_METRICS if k in numeric]
    order += sorted(k for k in numeric if k not in PREFERRED_METRICS)
    return " ".join(f"{k}={numeric[k]:.4g}" for k in order[:MAX_METRICS]) or "-"


def _model_dir(args: argparse.Namespace) -> Path:
    if args.model_dir is not None:
        return args.model_dir
    # Read settings only when needed: `--model-dir` must work even with a broken environment.
    from pydantic import ValidationError

    from streamrec.stream.settings import Settings

    try:
        return Settings().resolved_model_dir
    except ValidationError as exc:
        raise SystemExit(f"invalid settings: {exc}") from None
