"""The Amazon Beauty 5-core reader (`Beauty.txt`: `user item item ...`, items in time order).

**Types**: every review is a `purchase`. **Time**: the file has none, so a user's n-th event is
put at `BEAUTY_START_TS` + n days; the stream order (`log.stream_order`) then interleaves users
round-robin by position, users at the same position ordered by the stable hash. **Items**: no
real text, so `product <id>; attributes a<code> ...` from `Beauty_item2attributes.json` (when
present).

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> _ = (folder / "Beauty.txt").write_text("1 10 11\\n2 12\\n")
>>> log = read_beauty(folder)
>>> sorted((e.user_id, e.item_id, e.ts - BEAUTY_START_TS) for e in log.events)
[('1', '10', 0.0), ('1', '11', 86400.0), ('2', '12', 0.0)]
"""

from __future__ import annotations

import json
from pathlib import Path

from streamrec.models.data.log import ORDER_RULE, EventLog, require_file, stream_order
from streamrec.stream.messages import Event

BEAUTY_START_TS = 1_600_000_000.0  # simulated time of every Beauty user's first event
BEAUTY_STEP_S = 86_400.0  # Beauty has no timestamps: consecutive events one day apart
LAYOUT = "Amazon Beauty layout: Beauty.txt (user item item ...), optional Beauty_item2attributes.json"


def read_beauty(path: Path) -> EventLog:
    """`Beauty.txt` as purchase events in stream order, with the attribute text of each item."""
    path = Path(path)
    source = require_file(path, "Beauty.txt", LAYOUT)
    attributes: dict[str, list[int]] = {}
    attribute_file = path / "Beauty_item2attributes.json"
    if attribute_file.is_file():
        attributes = {str(k): list(v) for k, v in json.loads(attribute_file.read_text()).items()}
    events = []
    with source.open(encoding="utf-8") as file:
        for line, text in enumerate(file, start=1):
            parts = text.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise ValueError(f"{source}:{line}: a user without items")
            user = parts[0]
            events += [
                Event(event_id=f"beauty-{user}-{n}", user_id=user, item_id=item, type="purchase",
                      ts=BEAUTY_START_TS + n * BEAUTY_STEP_S)
                for n, item in enumerate(parts[1:])
            ]
    used = sorted({event.item_id for event in events})
    text = {}
    for item in used:
        codes = attributes.get(item, [])
        text[item] = f"product {item}; attributes " + " ".join(f"a{c}" for c in codes) if codes else f"product {item}"
    log = EventLog("beauty", stream_order(events), text, {i: f"product {i}" for i in used})
    log.description = {
        "dataset": "amazon-beauty-5core", "path": str(path), **log.counts(),
        "event_mapping": "every review is a purchase",
        "time": f"no timestamps: the n-th event of a user at {BEAUTY_START_TS:.0f} + n days",
        "order": ORDER_RULE,
        "item_text": "no real text: 'product <id>; attributes a<code> ...' from the attribute file",
    }
    return log
