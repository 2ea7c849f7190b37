"""Dataset loaders: MovieLens (`movies.csv` as items, `ratings.csv` as events).

Files are read from where the user keeps them (`--path`); nothing is bundled or downloaded.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from pathlib import Path

from streamrec.stream.messages import Event, Item

CLICK_MIN_RATING = 4.0  # a rating this high or higher counts as a click, lower as a view


def _require(path: Path, name: str) -> Path:
    file = Path(path) / name
    if not file.is_file():
        raise FileNotFoundError(f"expected {name} in {path} (MovieLens latest-small layout)")
    return file


def load_movielens_items(path: Path, ts: float | None = None) -> list[Item]:
    """`movies.csv` (`movieId,title,genres`) -> items whose text is the title and the genres."""
    stamp = time.time() if ts is None else ts
    items = []
    with _require(path, "movies.csv").open(newline="", encoding="utf-8") as file:
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


def iter_movielens_events(path: Path) -> Iterator[Event]:
    """`ratings.csv` -> one event per rating, in file order.

    Mapping: a rating >= 4.0 is a `click`, anything lower a `view`; the rating itself is kept in
    `context`. event_id = `ml-<user>-<movie>-<timestamp>`; ts = the rating's unix timestamp.
    """
    with _require(path, "ratings.csv").open(newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            rating = float(row["rating"])
            user, movie, stamp = row["userId"].strip(), row["movieId"].strip(), row["timestamp"].strip()
            yield Event(
                event_id=f"ml-{user}-{movie}-{stamp}",
                user_id=user,
                item_id=movie,
                type="click" if rating >= CLICK_MIN_RATING else "view",
                ts=float(stamp),
                context={"rating": rating},
            )
