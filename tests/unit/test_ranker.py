"""The ranker's shapes, masking, causality, hashing and the retrieval/scoring agreement."""

from __future__ import annotations

import pytest
import torch

from streamrec.models.learning.ranker import (
    FIRST_EVENT_GAP,
    Ranker,
    RankerConfig,
    Step,
    encode_sequences,
    gap_bucket,
    hash_ids,
    transferable,
)
from streamrec.models.learning.training import warm_start

CONFIG = RankerConfig(text_dim=8, dim=16, max_len=6, layers=2, heads=2, id_buckets=97, dropout=0.0)


def _model(seed: int = 0, config: RankerConfig = CONFIG) -> Ranker:
    torch.manual_seed(seed)
    return Ranker(config).eval()


def _steps(items: str, start: float = 0.0) -> list[Step]:
    return [Step(item, "click" if n % 2 else "view", start + 60.0 * n) for n, item in enumerate(items)]


def _user(model: Ranker, sequences: list[list[Step]], max_len: int | None = None) -> torch.Tensor:
    row_of = {c: n for n, c in enumerate("abcdefgh")}
    torch.manual_seed(1)
    text = torch.nn.functional.normalize(torch.randn(len(row_of), CONFIG.text_dim), dim=-1)
    items = model.item_vectors(text, hash_ids(list(row_of), CONFIG.id_buckets))  # (N, D)
    batch = encode_sequences(sequences, max_len or CONFIG.max_len, CONFIG.gap_buckets, row_of)
    return model.user_vectors(items[batch.rows.clamp(min=0)], batch)


def test_shapes() -> None:
    model = _model()
    text = torch.randn(5, CONFIG.text_dim)
    items = model.item_vectors(text, hash_ids(list("abcde"), CONFIG.id_buckets))
    assert items.shape == (5, CONFIG.dim)
    batch = encode_sequences([_steps("abc"), _steps("de")], CONFIG.max_len, CONFIG.gap_buckets)
    states = model.user_states(items[batch.rows.clamp(min=0)], batch)
    assert states.shape == (2, CONFIG.max_len, CONFIG.dim)
    users = model.user_vectors(items[batch.rows.clamp(min=0)], batch)
    assert users.shape == (2, CONFIG.dim)
    assert model.score(users, items).shape == (2, 5)
    assert model.score(users, items[None].expand(2, -1, -1)).shape == (2, 5)
    assert torch.all((model.probability(users, items) > 0) & (model.probability(users, items) < 1))


def test_padding_changes_nothing() -> None:
    model = _model()
    short, longer = _user(model, [_steps("abc")]), _user(model, [_steps("abc"), _steps("abcdef")])
    torch.testing.assert_close(short[0], longer[0], atol=1e-5, rtol=1e-5)
    # What sits under a padded position is never read.
    row_of = {c: n for n, c in enumerate("abc")}
    batch = encode_sequences([_steps("ab")], CONFIG.max_len, CONFIG.gap_buckets, row_of)
    history = torch.randn(1, CONFIG.max_len, CONFIG.dim)
    noisy = history.clone()
    noisy[~batch.mask] = 1e3
    torch.testing.assert_close(model.user_states(history, batch)[batch.mask], model.user_states(noisy, batch)[batch.mask])


def test_user_tower_is_causal() -> None:
    model = _model()
    row_of = {c: n for n, c in enumerate("abcdef")}
    first = encode_sequences([_steps("abcd")], CONFIG.max_len, CONFIG.gap_buckets, row_of)
    second = encode_sequences([_steps("abce")], CONFIG.max_len, CONFIG.gap_buckets, row_of)
    history = torch.randn(1, 6, CONFIG.dim)
    other = history.clone()
    other[0, -1] = torch.randn(CONFIG.dim)  # the newest event differs
    out_a = model.user_states(history, first)
    out_b = model.user_states(other, second)
    torch.testing.assert_close(out_a[:, :-1], out_b[:, :-1])  # earlier positions cannot see it
    assert not torch.allclose(out_a[:, -1], out_b[:, -1])


def test_order_and_event_types_matter() -> None:
    model = _model()
    users = _user(model, [_steps("abc"), _steps("cba"), [Step("a", "purchase", 0.0), *_steps("bc")[1:]]])
    assert not torch.allclose(users[0], users[1])
    assert users.isfinite().all()


def test_encode_keeps_the_newest_events_left_padded_and_skips_unknown_items() -> None:
    row_of = {"a": 0, "b": 1, "c": 2}
    steps = [Step("a", "view", 0.0), Step("x", "view", 5.0), Step("b", "purchase", 60.0), Step("c", "click", 3600.0)]
    batch = encode_sequences([steps], 2, 32, row_of)
    assert batch.rows.tolist() == [[1, 2]]  # b, c: the last two known events
    assert batch.types.tolist() == [[3, 2]]
    assert batch.gaps.tolist() == [[gap_bucket(60.0, 32), gap_bucket(3540.0, 32)]]
    padded = encode_sequences([steps[:1]], 3, 32, row_of)
    assert padded.rows.tolist() == [[-1, -1, 0]] and padded.gaps.tolist() == [[0, 0, FIRST_EVENT_GAP]]


def test_hashed_ids_are_stable_and_in_range() -> None:
    ids = [f"item-{n}" for n in range(2000)]
    rows = hash_ids(ids, 1000)
    assert rows.shape == (2000, 2) and rows.min() >= 0 and rows.max() < 1000
    assert torch.equal(rows, hash_ids(ids, 1000))
    pairs = {tuple(pair) for pair in rows.tolist()}
    assert len(pairs) > 1990  # two hashes: a collision of both rows is rare (~2 expected)
    assert len(set(rows[:, 0].tolist())) < 1000  # while single rows do collide


def test_retrieval_query_ranks_exactly_like_the_score() -> None:
    model = _model()
    with torch.no_grad():
        model.w.copy_(torch.randn(CONFIG.dim))
        model.b.fill_(0.7)
        users = torch.randn(3, CONFIG.dim)
        items = torch.randn(50, CONFIG.dim)
        by_score = model.score(users, items).argsort(dim=-1, descending=True)
        by_dot = (model.queries(users) @ items.T).argsort(dim=-1, descending=True)
    assert torch.equal(by_score, by_dot)


def test_config_round_trip_and_refusals() -> None:
    assert RankerConfig.from_dict(CONFIG.to_dict()) == CONFIG
    with pytest.raises(ValueError, match="unknown"):
        RankerConfig.from_dict({**CONFIG.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="multiple of heads"):
        RankerConfig(dim=10, heads=3)
    with pytest.raises(ValueError, match="at most"):
        model = _model()
        model.user_states(torch.zeros(1, 9, CONFIG.dim), encode_sequences([_steps("ab")], 9, 32))


def test_warm_start_keeps_everything_but_the_id_embeddings() -> None:
    source = _model(seed=1)
    target = _model(seed=2, config=RankerConfig(**{**CONFIG.to_dict(), "id_buckets": 31}))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    copied = warm_start(target, source.state_dict())
    assert copied and all(transferable(name) for name in copied)
    for name, tensor in target.state_dict().items():
        if transferable(name):
            torch.testing.assert_close(tensor, source.state_dict()[name])
        else:
            torch.testing.assert_close(tensor, before[name])  # reset, not copied
    with pytest.raises(ValueError, match="cannot warm-start"):
        warm_start(_model(config=RankerConfig(**{**CONFIG.to_dict(), "dim": 32})), source.state_dict())


def test_scorer_gives_the_same_scores_from_an_item_table_as_from_candidate_vectors() -> None:
    """The serving path applies the item tower once per distinct candidate and gathers; a
    batch that brings every candidate's vector scores the same."""
    from streamrec.models.core.scoring import ScoringBatch
    from streamrec.models.learning.serving import RankerScorer
    from streamrec.models.learning.store import Manifest

    torch.manual_seed(3)
    manifest = Manifest("ranker-test", None, "2026-12-07T00:00:00+00:00", "ranker", CONFIG.to_dict(), "0" * 64, {}, {}, {})
    scorer = RankerScorer(_model(), manifest)
    ids = ["", "a", "b", "c", "d"]  # row 0: padding
    table = torch.nn.functional.normalize(torch.randn(len(ids), CONFIG.text_dim), dim=-1)  # (U, T)
    table[0] = 0.0
    rows = torch.tensor([[1, 2, 3, 0], [3, 4, 1, 2]])  # (B=2, C=4); user 0 has three candidates
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    common = dict(history=torch.zeros(2, 1, CONFIG.text_dim), history_weights=torch.ones(2, 1),
                  candidate_mask=mask, candidate_ids=[["a", "b", "c"], ["c", "d", "a", "b"]],
                  user_vectors=torch.randn(2, CONFIG.dim))
    from_table = scorer.score(ScoringBatch(candidates=None, item_vectors=table, item_rows=rows, item_ids=ids, **common))
    from_vectors = scorer.score(ScoringBatch(candidates=table[rows], **common))
    torch.testing.assert_close(from_table, from_vectors)
    assert torch.isinf(from_table[0, 3]) and torch.isfinite(from_table[1]).all()
