"""Where torch runs: CUDA when present (with bf16 autocast), the CPU otherwise.

One place decides, so the encoder, the ranker and the trainer agree on the device and
on the precision.

>>> device = select_device("cpu")
>>> device.type
'cpu'
>>> import torch
>>> with autocast(device):  # a no-op on the CPU: full float32
...     (torch.ones(2, 3) @ torch.ones(3, 4)).dtype
torch.float32
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

#: The preferences `select_device` accepts (the `STREAMREC_DEVICE` values).
DEVICE_PREFERENCES = ("auto", "cpu", "cuda")

#: Mixed-precision dtype on CUDA: bf16 has float32's range, so no loss scaling is needed.
CUDA_AUTOCAST_DTYPE = torch.bfloat16


def select_device(preference: str = "auto") -> torch.device:
    """The torch device for a preference: `auto` is CUDA when available, else the CPU.

    Asking for `cuda` (or `cuda:N`) on a machine without CUDA is an error rather than a
    silent fallback, so that a GPU deployment never quietly runs on the CPU.
    """
    kind = preference.split(":", 1)[0]
    if kind not in DEVICE_PREFERENCES:
        raise ValueError(f"device must be one of {DEVICE_PREFERENCES}, got {preference!r}")
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {preference!r} was asked for but torch sees no CUDA device "
            "(use 'auto' or 'cpu' on this machine)"
        )
    return torch.device(preference)


def autocast(device: torch.device) -> AbstractContextManager[object]:
    """bf16 mixed precision on CUDA; nothing on the CPU, where bf16 matmuls are slow."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=CUDA_AUTOCAST_DTYPE)
    return contextlib.nullcontext()
