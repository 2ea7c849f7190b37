"""The generic reader: any CSV (with a header) or JSON-lines file of `user,item,timestamp[,type]`,
plus an optional item file of `id,text[,title]`.

**Types**: the `type` column (view, click or purchase), a `view` when absent. **Order**:
`log.stream_order`. Items without an entry in the item file get the text `item <id>`.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> _ = (folder / "log.csv").write_text("user,item,timestamp,type\\nu1,b,20,click\\nu1,a,10,\\n")
>>> log = read_generic(folder / "log.csv")
>>> [(e.item_id, e.type) for e in log.events], log.item_text["a"]
([('a', 'view'), ('b', 'click')], 'item a')
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from streamrec.models.data.log import ORDER_RULE, EventLog, count_ties, stream_order
from streamrec.stream.messages import EVENT_TYPES, Event


def read_records(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, record) from a CSV with a header or a JSON-lines file."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        with path.open(encoding="utf-8") as file:
            for line, text in enumerate(file, start=1):
                if text.strip():
                    try:
                        record = json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{line}: invalid JSON ({exc.msg})") from None
                    if not isinstance(record, dict):
                        raise ValueError(f"{path}:{line}: expected a JSON object")
                    yield line, record
    else:
        with path.open(newline="", encoding="utf-8") as file:
            for line, record in enumerate(csv.DictReader(file), start=2):
                yield line, record


def read_generic(path: Path, items_path: Path | None = None) -> EventLog:
    """The events of `path` in stream order, with the texts of `items_path` (when given)."""
    path = Path(path)
    events = []
    for line, record in read_records(path):
        try:
            user, item = str(record["user"]).strip(), str(record["item"]).strip()
            ts = float(record["timestamp"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}:{line}: needs user, item and a numeric timestamp; got {record}") from None
        kind = str(record.get("type") or "view").strip()
        if kind not in EVENT_TYPES:
            raise ValueError(f"{path}:{line}: unknown event type {kind!r}; one of {sorted(EVENT_TYPES)}")
        if not user or not item:
            raise ValueError(f"{path}:{line}: empty user or item")
        events.append(Event(event_id=f"{path.stem}-{line}", user_id=user, item_id=item, type=kind, ts=ts))
    text: dict[str, str] = {}
    title: dict[str, str] = {}
    if items_path is not None:
        for line, record in read_records(Path(items_path)):
            if "id" not in record or "text" not in record:
                raise ValueError(f"{items_path}:{line}: an item needs id and text")
            item_id = str(record["id"]).strip()
            text[item_id] = str(record["text"])
            title[item_id] = str(record.get("title") or record["text"])[:80]
    used = {event.item_id for event in events}
    text = {i: text.get(i, f"item {i}") for i in used}
    title = {i: title.get(i, i) for i in used}
    ordered = stream_order(events)
    log = EventLog("generic", ordered, text, title)
    log.description = {
        "dataset": "generic", "path": str(path), "items_path": str(items_path) if items_path else None,
        **log.counts(),
        "order": f"{ORDER_RULE}; {count_ties(ordered)} events tied with the user's previous one",
    }
    return log
