"""Where torch runs: CUDA when present (bf16 autocast), the CPU otherwise.

>>> select_device("cpu").type
'cpu'
>>> with autocast(select_device("cpu")):
...     pass
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def select_device(preference: str = "auto") -> torch.device:
    """`auto` picks CUDA when available; asking for `cuda` without one is an error."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("STREAMREC_DEVICE=cuda but torch sees no CUDA device")
    return torch.device(preference)


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bf16 mixed precision on CUDA; nothing on the CPU (bf16 matmuls are slow there)."""
    if device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield
