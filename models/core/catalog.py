"""Catalogue items -> text vectors (optionally fused with a precomputed vector) -> the item index.

Split in two steps so that an async caller can run the slow, pure `embed` off its event loop and
the quick `index.upsert` on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from streamrec.models.index.protocol import IndexedItem, ItemIndex
from streamrec.stream.messages import Item

TITLE_MAX_CHARS = 80  # labels in reasons ("similar to <title>") are cut to this length


class Encoder(Protocol):
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...  # (N, dim), L2-normalised


def title_of(item: Item) -> str:
    """A short label: `attributes.title` when given, else the start of the text."""
    title = (item.attributes or {}).get("title")
    text = title if isinstance(title, str) and title.strip() else item.text
    text = " ".join(text.split())
    return text if len(text) <= TITLE_MAX_CHARS else text[: TITLE_MAX_CHARS - 1] + "…"


def fuse(text_vector: np.ndarray, extra: Sequence[float] | None) -> np.ndarray:
    """Mean of the text vector and a same-sized precomputed vector, both normalised; (D,).

    A precomputed vector of another size cannot share the space and is ignored.

    >>> [round(float(x), 3) for x in fuse(np.array([1.0, 0.0], dtype=np.float32), [0.0, 2.0])]
    [0.707, 0.707]
    """
    if extra is None or len(extra) != text_vector.shape[0]:
        return text_vector
    other = np.asarray(extra, dtype=np.float32)
    norm = float(np.linalg.norm(other))
    if norm == 0.0 or not np.isfinite(norm):
        return text_vector
    mixed = text_vector + other / norm
    return (mixed / np.linalg.norm(mixed)).astype(np.float32)


def embed_items(encoder: Encoder, items: Sequence[Item]) -> list[IndexedItem]:
    """Items -> their text vectors (fused with any precomputed vector) and titles, in one
    batched encoder pass. The worker's catalogue and the trainer both embed items here, so
    the model trains on the very vectors it is served with."""
    if not items:
        return []
    vectors = encoder.encode([item.text for item in items])  # (N, D)
    return [
        IndexedItem(item_id=item.item_id, vector=fuse(vector, item.vector), title=title_of(item))
        for item, vector in zip(items, vectors)
    ]


class CatalogIndexer:
    """Embeds catalogue items and upserts them into the index."""

    def __init__(self, encoder: Encoder, index: ItemIndex) -> None:
        if encoder.dim != index.dim:
            raise ValueError(f"encoder dim {encoder.dim} != index dim {index.dim}")
        self.encoder = encoder
        self.index = index

    def embed(self, items: Sequence[Item]) -> list[IndexedItem]:
        """The slow, pure part: one batched encoder pass over the items' text."""
        return embed_items(self.encoder, items)

    def upsert(self, items: Sequence[Item]) -> int:
        """Embed and store; returns how many items were written."""
        indexed = self.embed(items)
        self.index.upsert(indexed)
        return len(indexed)
