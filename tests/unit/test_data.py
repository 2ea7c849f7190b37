"""Synthetic world and MovieLens loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrec.models.data.datasets import iter_movielens_events, load_movielens_items
from streamrec.models.data.synthetic import SyntheticWorld

MOVIELENS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "ml-latest-small"


def test_synthetic_world_is_deterministic_by_seed() -> None:
    a, b, c = SyntheticWorld(seed=1), SyntheticWorld(seed=1), SyntheticWorld(seed=2)
    assert [i.text for i in a.items(0.0)] == [i.text for i in b.items(0.0)]
    assert a.events(50, 1.7e9) == b.events(50, 1.7e9)
    assert a.events(50, 1.7e9) != c.events(50, 1.7e9)
    assert a.events(50, 1.7e9, stream=1) != a.events(50, 1.7e9)


def test_synthetic_events_follow_tastes() -> None:
    world = SyntheticWorld(seed=4, n_items=200, n_users=50, n_categories=8)
    events = world.events(2000, start_ts=1.7e9)
    liked = sum(world.category_of(e.item_id) in world.favourite_categories(e.user_id) for e in events)
    assert liked / len(events) > 0.8
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert len({e.event_id for e in events}) == len(events)
    assert {e.type for e in events} == {"view", "click", "purchase"}


def test_movielens_loader_on_a_small_file(tmp_path: Path) -> None:
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\r\n1,Toy Story (1995),Adventure|Animation\r\n'
        '2,"American President, The (1995)",Comedy|Drama|Romance\r\n3,Unknown (2001),(no genres listed)\r\n'
    )
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\r\n1,1,4.0,964982703\r\n1,2,3.5,964981247\r\n"
    )
    items = load_movielens_items(tmp_path, ts=1.0)
    assert [i.item_id for i in items] == ["1", "2", "3"]
    assert items[1].attributes["title"] == "American President, The (1995)"
    assert items[1].text == "American President, The (1995). Genres: Comedy, Drama, Romance"
    assert items[2].text == "Unknown (2001)"
    events = list(iter_movielens_events(tmp_path))
    assert [(e.user_id, e.item_id, e.type, e.ts) for e in events] == [
        ("1", "1", "click", 964982703.0),
        ("1", "2", "view", 964981247.0),
    ]


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="movies.csv"):
        load_movielens_items(tmp_path)


@pytest.mark.skipif(not (MOVIELENS / "movies.csv").is_file(), reason="shared MovieLens copy not present")
def test_real_movielens_catalogue() -> None:
    items = load_movielens_items(MOVIELENS, ts=1.0)
    assert len(items) == 9742
    first = next(iter_movielens_events(MOVIELENS))
    assert first.user_id == "1" and first.ts > 9e8
