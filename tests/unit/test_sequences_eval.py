"""Dataset loaders (tiny files in every format), the leave-one-out split and the metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from streamrec.models.data.log import tie_key
from streamrec.models.data.movielens import iter_movielens_events
from streamrec.models.data.sequences import SequenceDataset, load_sequences
from streamrec.models.evaluation.baselines import (
    CooccurrenceBaseline,
    MarkovBaseline,
    PopularityBaseline,
)
from streamrec.models.evaluation.metrics import evaluate, evaluate_learner, leave_one_out
from streamrec.models.evaluation.prequential import replay_order
from streamrec.models.learning.ranker import Step

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def test_movielens_sorts_by_time_and_breaks_ties_by_hash_not_file_order(tmp_path: Path) -> None:
    rows = ["userId,movieId,rating,timestamp"] + [f"1,{m},4.0,100" for m in range(1, 9)] + ["1,50,2.0,50", "2,3,5.0,7"]
    (tmp_path / "ratings.csv").write_bytes("\r\n".join(rows).encode() + b"\r\n")
    (tmp_path / "movies.csv").write_text('movieId,title,genres\n3,"Heat (1995)",Action|Crime\n')
    order = [s.item_id for s in load_sequences("movielens", tmp_path).sequences["1"]]
    assert order[0] == "50"  # earliest first
    assert order[1:] == sorted(order[1:], key=lambda movie: tie_key("1", movie))  # the tie by hash
    assert order[1:] != [str(m) for m in range(1, 9)]  # not by movie id (file order)
    reversed_file = [rows[0], *reversed(rows[1:])]
    (tmp_path / "ratings.csv").write_bytes("\r\n".join(reversed_file).encode() + b"\r\n")
    assert [s.item_id for s in load_sequences("movielens", tmp_path).sequences["1"]] == order  # file order irrelevant
    data = load_sequences("movielens", tmp_path)
    assert data.item_text["3"].startswith("Heat (1995)") and data.sequences["1"][0].type == "view"
    assert data.sequences["2"][0].type == "click" and "7 events tied" in data.description["order"]


def test_sequences_are_the_readers_stream_grouped_by_user(tmp_path: Path) -> None:
    rows = ["userId,movieId,rating,timestamp"] + [f"{u},{m},{r},{t}" for u, m, r, t in
                                                  [(1, 5, 4.0, 10), (2, 6, 3.0, 10), (1, 7, 1.0, 10), (2, 5, 5.0, 9)]]
    (tmp_path / "ratings.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n")
    events = list(iter_movielens_events(tmp_path))
    data = load_sequences("movielens", tmp_path)
    for user, steps in data.sequences.items():
        assert [(e.item_id, e.type, e.ts) for e in events if e.user_id == user] == [tuple(s) for s in steps]
    replayed = replay_order(data)
    assert [(e.user_id, e.item_id, e.type, e.ts) for e in replayed] == [
        (e.user_id, e.item_id, e.type, e.ts) for e in events
    ]


def test_beauty_and_generic_formats(tmp_path: Path) -> None:
    (tmp_path / "Beauty.txt").write_text("1 10 11 12\n2 11 12\n")
    (tmp_path / "Beauty_item2attributes.json").write_text(json.dumps({"10": [5, 7]}))
    beauty = load_sequences("beauty", tmp_path)
    assert [s.item_id for s in beauty.sequences["1"]] == ["10", "11", "12"]
    assert beauty.sequences["1"][1].ts - beauty.sequences["1"][0].ts == 86_400
    assert "a5 a7" in beauty.item_text["10"] and beauty.item_text["11"] == "product 11"
    (tmp_path / "log.jsonl").write_text('{"user": "u", "item": "x", "timestamp": 2}\n{"user": "u", "item": "y", "timestamp": 1, "type": "purchase"}\n')
    (tmp_path / "items.csv").write_text("id,text\nx,a blue kettle\n")
    generic = load_sequences("generic", tmp_path / "log.jsonl", items_path=tmp_path / "items.csv")
    assert [(s.item_id, s.type) for s in generic.sequences["u"]] == [("y", "purchase"), ("x", "view")]
    assert generic.item_text == {"x": "a blue kettle", "y": "item y"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("user,item,timestamp\nu,x,soon\n", ":2: needs user, item and a numeric timestamp"),
        ("user,item,timestamp,type\nu,x,1,view\nu,y,2,like\n", ":3: unknown event type"),
    ],
)
def test_bad_generic_rows_name_their_line(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "log.csv").write_text(body)
    with pytest.raises(ValueError, match=message):
        load_sequences("generic", tmp_path / "log.csv")


def test_missing_files_say_what_layout_is_expected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ratings.csv"):
        load_sequences("movielens", tmp_path)


class _Fixed:
    """Scores a planted rank for each target (rank r: r-1 unseen items score higher)."""

    name = "fixed"

    def __init__(self, ranks: list[int], n_items: int) -> None:
        self.ranks, self.n_items = ranks, n_items

    def fit(self, train, items) -> None:
        pass

    def score(self, histories):
        scores = np.zeros((len(histories), self.n_items), dtype=np.float32)
        for row, rank in enumerate(self.ranks[: len(histories)]):
            scores[row, 1 : 1 + rank - 1] = 2.0  # better than the target (column 0)
            scores[row, 0] = 1.0
            scores[row, 1 + rank - 1 :] = 0.0
        self.ranks = self.ranks[len(histories) :]
        return scores


def test_metrics_match_a_hand_computation() -> None:
    items = [f"i{n}" for n in range(40)]
    cases = [(f"u{n}", [], Step("i0", "view", 0.0)) for n in range(3)]
    metrics = evaluate(_Fixed([1, 3, 20], 40), cases, items)
    assert metrics.hr_at_10 == pytest.approx(2 / 3)
    assert metrics.ndcg_at_10 == pytest.approx((1.0 + 1 / math.log2(4)) / 3)
    assert metrics.mrr == pytest.approx((1 + 1 / 3 + 1 / 20) / 3)


def test_history_is_excluded_but_not_the_target() -> None:
    items = ["a", "b", "c"]
    model = _Fixed([3], 3)  # b and c score above the target a
    seen = [Step("b", "view", 0.0), Step("c", "view", 1.0), Step("a", "view", 2.0)]
    assert evaluate(model, [("u", seen, Step("a", "view", 3.0))], items).hr_at_10 == 1.0
    assert evaluate(_Fixed([3], 3), [("u", seen, Step("a", "view", 3.0))], items).mrr == 1.0


def test_split_and_baselines_on_a_toy_dataset(tmp_path: Path) -> None:
    lines = ["user,item,timestamp"] + [f"u{u},{i},{t}" for u in range(6) for t, i in enumerate("abcd")]
    lines += [f"long{u},{i},{t}" for u in range(3) for t, i in enumerate("abcdef")]  # trains b -> c
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\nshort,a,0\n")
    data = load_sequences("generic", tmp_path / "log.csv")
    split = leave_one_out(data)
    assert len(split.test) == 9 and split.train["short"] == data.sequences["short"]
    assert [s.item_id for s in split.train["u0"]] == ["a", "b"] and dict((u, t) for u, _, t in split.valid)["u0"].item_id == "c"
    short_users = [case for case in split.valid if case[0].startswith("u")]
    for model in (MarkovBaseline(), CooccurrenceBaseline(window=1)):
        assert evaluate_learner(model, split, short_users).mrr == 1.0  # after b comes c


@pytest.mark.skipif(not (SHARED / "ml-latest-small").is_dir(), reason="shared MovieLens copy not present")
def test_real_movielens_counts() -> None:
    data = load_sequences("movielens", SHARED / "ml-latest-small")
    assert data.description["n_users"] == 610 and data.description["n_events"] == 100_836


class _Planted:
    """A learn/recommend system that records what it learns and lists each target at a planted
    place (None: not at all) in a full list of the split's items."""

    name = "planted"

    def __init__(self, places: dict[str, int | None], targets: dict[str, str], items: list[str]) -> None:
        self.places, self.targets, self.items = places, targets, items
        self.learned: list[tuple[str, str]] = []

    def learn(self, events) -> None:
        assert len({e.user_id for e in events}) == len(events)  # a micro-batch: users never repeat
        self.learned += [(e.user_id, e.item_id) for e in events]

    def recommend(self, user_ids, k):
        lists = []
        for user in user_ids:
            others = [i for i in self.items if i != self.targets[user]]
            place = self.places[user]
            lists.append((others[: place - 1] + [self.targets[user]] + others[place - 1 :] if place else others)[:k])
        return lists


def test_leave_one_out_over_a_learner_learns_each_prefix_once_and_ranks_the_held_out_item() -> None:
    steps = lambda items: [Step(item, "view", float(t)) for t, item in enumerate(items)]  # noqa: E731
    items = [f"i{n}" for n in range(30)]
    sequences = {"u1": steps(["i1", "i2", "i3", "i4"]), "u2": steps(["i5", "i6", "i7"]), "u3": steps(["i8"]),
                 "u4": steps(["i9", "i10", "i11"])}
    split = leave_one_out(SequenceDataset("t", sequences, {i: i for i in items}))
    targets = {user: target.item_id for user, _, target in split.test}
    learner = _Planted({"u1": 1, "u2": 4, "u4": None}, targets, items)
    metrics = evaluate_learner(learner, split)
    assert sorted(learner.learned) == sorted((u, s.item_id) for u, seq in sequences.items() for s in seq[:-1] or seq)
    assert not {(u, t) for u, t in targets.items()} & set(learner.learned)  # no target is learned
    for user, seq in sequences.items():  # each user's prefix in order
        assert [i for u, i in learner.learned if u == user] == [s.item_id for s in (seq[:-1] if len(seq) >= 3 else seq)]
    assert metrics.n_users == 3 and metrics.hr_at_10 == pytest.approx(2 / 3)
    assert metrics.ndcg_at_10 == pytest.approx((1.0 + 1 / math.log2(5)) / 3)
    assert metrics.mrr == pytest.approx((1 + 1 / 4 + 0) / 3)  # a target it cannot list: 0
    assert metrics.coverage_at_10 == pytest.approx(10 / 30)  # every top 10 is drawn from i0..i9


def test_the_one_baseline_family_ranks_unseen_and_consumed_items_nowhere() -> None:
    steps = lambda items: [Step(item, "view", float(t)) for t, item in enumerate(items)]  # noqa: E731
    sequences = {"a": steps("xyzw"), "b": steps("xyz"), "c": steps("yxq")}
    split = leave_one_out(SequenceDataset("t", sequences, {i: i for i in "qwxyz"}))
    popularity = PopularityBaseline()
    metrics = evaluate_learner(popularity, split)
    # a: w never learned (a miss); b: z learned from a, listed first after consumed x, y; c: q never learned
    assert metrics.n_users == 3 and metrics.hr_at_10 == pytest.approx(1 / 3) and metrics.mrr == pytest.approx(1 / 3)
    assert popularity.recommend(["b"], k=10) == [["z"]]
