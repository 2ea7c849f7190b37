"""The online blend: a linear prior with a learned residual that starts switched off."""

from __future__ import annotations

import numpy as np

from streamrec.models.core.blend import LEARNING_RATE, OnlineBlend


def _context_examples(n: int, seed: int) -> list[tuple[np.ndarray, int]]:
    """Lists of 8 candidates with features (a, b, context): users whose context is 1 take the
    candidate highest on `a`, the others the one highest on `b`. The context is the same for
    every candidate of a list, so only an interaction with it can tell the two kinds apart."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        features = rng.random((8, 3)).astype(np.float32)  # (C, F)
        context = float(rng.random() < 0.5)
        features[:, 2] = context
        taken = int(np.argmax(features[:, 0] if context else features[:, 1]))
        examples.append((features, taken))
    return examples


def _top1_rate(blend: OnlineBlend, examples: list[tuple[np.ndarray, int]]) -> float:
    return float(np.mean([int(np.argmax(blend.score(f))) == taken for f, taken in examples]))


def test_a_new_blend_ranks_exactly_as_its_linear_prior() -> None:
    blend = OnlineBlend(("a", "b", "c"), prior=(1.0, 0.5, 0.0))
    features = np.random.default_rng(1).random((4, 6, 3)).astype(np.float32)  # (B, C, F)
    np.testing.assert_allclose(blend.score(features), features @ np.array([1.0, 0.5, 0.0], dtype=np.float32), rtol=1e-6)


def test_the_residual_learns_an_interaction_a_linear_blend_cannot() -> None:
    train, test = _context_examples(4000, seed=2), _context_examples(500, seed=3)
    linear = OnlineBlend(("a", "b", "context"), prior=(0.5, 0.5, 0.0), hidden=0)
    residual = OnlineBlend(("a", "b", "context"), prior=(0.5, 0.5, 0.0), hidden=16)
    for features, taken in train:
        linear.learn(features, taken)
        residual.learn(features, taken)
    assert _top1_rate(linear, test) < 0.7  # one weight vector for both kinds of user
    assert _top1_rate(residual, test) > 0.85
    assert residual.updates == len(train)


def test_batched_and_single_scores_agree_after_learning() -> None:
    blend = OnlineBlend(("a", "b", "context"), prior=(0.5, 0.5, 0.0))
    for features, taken in _context_examples(300, seed=4):
        blend.learn(features, taken)
    batch = np.stack([f for f, _ in _context_examples(5, seed=5)])  # (B=5, C=8, F=3)
    np.testing.assert_allclose(blend.score(batch), np.stack([blend.score(f) for f in batch]), rtol=1e-5)


def test_steps_do_not_vanish_on_a_long_stream_so_the_blend_keeps_following_drift() -> None:
    """Plain AdaGrad's steps shrink as 1/sqrt(updates): after 10,000 noisy updates a step would
    be ~1/100 of the learning rate. The blend's squared-gradient sums forget, so it stays ~1/10."""
    rng = np.random.default_rng(0)
    blend = OnlineBlend(("a", "b"), prior=(0.0, 0.0), hidden=0)
    for _ in range(10_000):  # features that never predict for sure: gradients never vanish
        blend.learn(rng.random((5, 2)).astype(np.float32), consumed=int(rng.integers(5)))
    before = blend.weights.copy()
    blend.learn(np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32), consumed=1)
    step = np.abs(blend.weights - before).max()
    assert step > LEARNING_RATE / 30, step
