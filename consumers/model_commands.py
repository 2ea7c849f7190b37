"""`streamrec model list|show VERSION`: look into the model store without loading any weights.

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def cmd_model_list(args: argparse.Namespace) -> int:
    from streamrec.models.store import DirectoryModelStore, ModelStoreError

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
    from streamrec.models.store import DirectoryModelStore, ModelStoreError

    try:
        manifest = DirectoryModelStore(_model_dir(args)).manifest(args.version)
    except ModelStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(manifest.to_json(), end="")
    return 0


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
