"""A micro-batch's candidates as rows of one item table: precedence, exclusion, padding."""

from __future__ import annotations

import numpy as np

from streamrec.models.core.candidate_batch import PADDING, CandidateCollector, Source
from streamrec.models.index.protocol import IndexedItem, Neighbour

CATALOGUE = {i: IndexedItem(i, np.full(2, n, dtype=np.float32), i.upper()) for n, i in enumerate("abcdefg", 1)}
fetched: list[list[str]] = []


def _fetch(ids: list[str]) -> dict[str, IndexedItem]:
    fetched.append(list(ids))
    return {i: CATALOGUE[i] for i in ids if i in CATALOGUE}


def test_each_user_keeps_the_first_source_and_the_order_of_first_mention() -> None:
    collector = CandidateCollector(2, consumed=[set(), set()])
    collector.add([0, 1], [["c", "a"], ["b"]], Source.NEIGHBOUR)
    collector.add([1, 0], [["c", "b"], ["a", "d", "c"]], Source.COVISIT)
    batch = collector.build(_fetch)
    assert batch.ids_of(0) == ["c", "a", "d"]
    assert batch.ids_of(1) == ["b", "c"]
    codes = {source.code: source for source in Source}
    assert [codes[int(code)] for code in batch.sources[0, :3]] == [Source.NEIGHBOUR, Source.NEIGHBOUR, Source.COVISIT]
    assert [codes[int(code)] for code in batch.sources[1, :2]] == [Source.NEIGHBOUR, Source.COVISIT]
    assert batch.counts.tolist() == [3, 2] and batch.rows.shape == (2, 3)
    assert batch.mask.tolist() == [[True, True, True], [True, True, False]]
    assert batch.ids[batch.rows[1, 2]] == PADDING  # padding points at row 0


def test_consumed_items_are_skipped_where_the_source_asks_and_unknown_ids_dropped() -> None:
    collector = CandidateCollector(2, consumed=[{"a"}, set()])
    collector.add([0], [["a", "b"]], Source.NEIGHBOUR)  # a search that left out consumed items itself
    collector.add([0, 1], [["a", "c", "nowhere"], ["a"]], Source.NEXT, skip_consumed=True)
    collector.add_shared([CATALOGUE["a"], CATALOGUE["e"], CATALOGUE["f"]], per_user=1, source=Source.TRENDING)
    batch = collector.build(_fetch)
    assert batch.ids_of(0) == ["a", "b", "c", "e"]  # "a" by the first source; the first unconsumed popular: e
    assert batch.ids_of(1) == ["a"]  # its first popular item is "a", which it has already
    assert "nowhere" not in set(batch.ids.tolist())


def test_items_handed_over_are_not_fetched_again_and_the_rest_once() -> None:
    fetched.clear()
    collector = CandidateCollector(2, consumed=[set(), set()])
    collector.add_hits([0], [[Neighbour("a", 0.9, CATALOGUE["a"]), Neighbour("b", 0.8)]], Source.NEIGHBOUR)
    collector.add([1], [["b", "c", "a"]], Source.COVISIT)
    batch = collector.build(_fetch)
    assert fetched == [["b", "c"]]
    vectors = batch.vectors(2)  # (U, D), zeros at the padding row
    assert vectors.shape == (len(batch.ids), 2) and not vectors[0].any()
    assert vectors[batch.rows[1, 1]].tolist() == CATALOGUE["c"].vector.tolist()


def test_users_without_candidates_and_an_empty_batch() -> None:
    collector = CandidateCollector(3, consumed=[set(), set(), set()])
    collector.add([1], [["g"]], Source.NEIGHBOUR)
    batch = collector.build(_fetch)
    assert batch.counts.tolist() == [0, 1, 0] and batch.ids_of(0) == [] and batch.ids_of(1) == ["g"]
    picked = batch.take([1, 0])
    assert picked.ids_of(0) == ["g"] and picked.counts.tolist() == [1, 0]
    empty = CandidateCollector(2, consumed=[set(), set()]).build(_fetch)
    assert empty.counts.tolist() == [0, 0] and empty.rows.shape == (2, 1) and not empty.mask.any()
