"""Synthetic world and the dataset readers."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrec.models.data.datasets import read_dataset
from streamrec.models.data.log import stream_order
from streamrec.models.data.movielens import iter_movielens_events, load_movielens_items
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
    assert [(e.user_id, e.item_id, e.type, e.ts) for e in events] == [  # time order, not file order
        ("1", "2", "view", 964981247.0),
        ("1", "1", "click", 964982703.0),
    ]
    assert [e.type for e in iter_movielens_events(tmp_path, strong_rating=None)] == ["view", "view"]


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="movies.csv"):
        load_movielens_items(tmp_path)


@pytest.mark.skipif(not (MOVIELENS / "movies.csv").is_file(), reason="shared MovieLens copy not present")
def test_real_movielens_catalogue() -> None:
    items = load_movielens_items(MOVIELENS, ts=1.0)
    assert len(items) == 9742
    events = list(iter_movielens_events(MOVIELENS))
    assert len(events) == 100_836 and events[0].ts > 8e8
    assert events == stream_order(events) and len({e.event_id for e in events}) == len(events)


@pytest.mark.parametrize("kind", ["movielens", "beauty", "generic", "synthetic"])
def test_every_reader_returns_its_events_in_the_one_stream_order(tmp_path: Path, kind: str) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n2,9,4,5\n1,8,3,5\n1,7,5,1\n")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n7,Heat (1995),Action\n")
    (tmp_path / "Beauty.txt").write_text("1 10 11 12\n2 12 10\n3 11\n")
    (tmp_path / "log.csv").write_text("user,item,timestamp\nb,y,3\na,x,3\na,z,1\n")
    path = {"movielens": tmp_path, "beauty": tmp_path, "generic": tmp_path / "log.csv", "synthetic": None}[kind]
    log = read_dataset(kind, path, synthetic_events=200)
    assert log.events == stream_order(log.events) and log.events
    assert set(log.item_text) == {e.item_id for e in log.events} == set(log.item_title)
    assert log.description["n_events"] == len(log.events) and "order" in log.description
    again = read_dataset(kind, path, synthetic_events=200)
    assert [e.event_id for e in again.events] == [e.event_id for e in log.events]


def test_unknown_dataset_kinds_and_missing_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset kind"):
        read_dataset("netflix", tmp_path)
    with pytest.raises(ValueError, match="needs --path"):
        read_dataset("beauty", None)
