"""The MovieLens reader: `ratings.csv` as events, `movies.csv` as items (latest-small layout).

**Types**: every rating is an event; a rating >= `CLICK_MIN_RATING` (4.0) is a `click`, lower a
`view` (the shared datasets' README allows either mapping; a high rating says more than having
watched). The rating itself is kept in `context`. `strong_rating=None` makes every rating a view.
**Order**: `log.stream_order` (by timestamp, ties by a stable hash of user and item, not by the
file's movie-id order). event_id = `ml-<user>-<movie>-<timestamp>`; ts = the rating's time.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> _ = (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\\r\\n1,7,4.5,20\\r\\n1,3,2.0,10\\r\\n")
>>> [(e.item_id, e.type, e.ts) for e in iter_movielens_events(folder)]
[('3', 'view', 10.0), ('7', 'click', 20.0)]
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from pathlib import Path

from streamrec.models.data.log import ORDER_RULE, EventLog, count_ties, require_file, stream_order
from streamrec.stream.messages import Event, Item

CLICK_MIN_RATING = 4.0  # a rating this high or higher counts as a click, lower as a view
LAYOUT = "MovieLens latest-small layout: ratings.csv and movies.csv"


def load_movielens_items(path: Path, ts: float | None = None) -> list[Item]:
    """`movies.csv` (`movieId,title,genres`) -> items whose text is the title and the genres."""
    stamp = time.time() if ts is None else ts
    items = []
    with require_file(Path(path), "movies.csv", LAYOUT).open(newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            genres = [g for g in row["genres"].split("|") if g and g != "(no genres listed)"]
            title = row["title"].strip()
            text = f"{title}. Genres: {', '.join(genres)}" if genres else title
            items.append(
                Item(
                    item_id=row["movieId"].strip(),
                    text=text,
                    attributes={"title": title, "genres": genres},
                    ts=stamp,
                )
            )
    return items


def iter_movielens_events(path: Path, strong_rating: float | None = CLICK_MIN_RATING) -> Iterator[Event]:
    """`ratings.csv` -> one event per rating, in stream order (the module docstring's rules)."""
    ratings = require_file(Path(path), "ratings.csv", LAYOUT)
    events = []
    with ratings.open(newline="", encoding="utf-8") as file:
        for line, row in enumerate(csv.DictReader(file), start=2):
            try:
                rating = float(row["rating"])
                user, movie = row["userId"].strip(), row["movieId"].strip()
                stamp = row["timestamp"].strip()
                strong = strong_rating is not None and rating >= strong_rating
                events.append(
                    Event(
                        event_id=f"ml-{user}-{movie}-{stamp}",
                        user_id=user,
                        item_id=movie,
                        type="click" if strong else "view",
                        ts=float(stamp),
                        context={"rating": rating},
                    )
                )
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{ratings}:{line}: bad rating row ({exc})") from None
    return iter(stream_order(events))


def read_movielens(path: Path, strong_rating: float | None = CLICK_MIN_RATING) -> EventLog:
    """The whole dataset: rating events in stream order, every rated movie's text and title."""
    require_file(Path(path), "movies.csv", LAYOUT)
    events = list(iter_movielens_events(path, strong_rating))
    items = {item.item_id: item for item in load_movielens_items(path, ts=0.0)}
    used = {event.item_id for event in events}
    text = {i: items[i].text if i in items else f"movie {i}" for i in used}
    title = {i: str((items[i].attributes or {}).get("title", i)) if i in items else i for i in used}
    log = EventLog("movielens", events, text, title)
    mapping = f"rating >= {strong_rating:g} -> click, else view" if strong_rating is not None else "a view"
    log.description = {
        "dataset": "movielens", "path": str(path), **log.counts(),
        "event_mapping": f"every rating is an event: {mapping}",
        "order": f"{ORDER_RULE}; {count_ties(events)} events tied with the user's previous one",
    }
    return log
