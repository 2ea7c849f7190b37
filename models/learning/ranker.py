"""The learned ranker: a text item tower, a sequential user tower and one interaction formula.

- **Item tower**: the frozen MiniLM text vector of an item (cached per item) through a learned
  projection, plus a learned id embedding. Ids are hashed with `hashlib.blake2b` into two
  bucket tables (two hashes per id, summed, so two items rarely share both rows): an unseen id
  needs no vocabulary rebuild, and a brand-new item is still scored through its text.
- **User tower**: a small causal transformer (SASRec-style) over the user's last L items, each
  item vector plus an event-type embedding, a time-gap embedding and a position embedding
  (counted back from the newest event);
  sequences are left-padded so the last position is always the newest event, and its output
  is the user vector.
- **Interaction**: `score(u, i) = w·(u ⊙ h_i) + b`, a sigmoid of it for a probability. Since
  `w·(u ⊙ h) = (u ⊙ w)·h`, retrieval with the query `u ⊙ w` by dot product ranks items exactly
  as the score does: retrieval and scoring can never disagree for one model version.

>>> torch.manual_seed(0) and None
>>> config = RankerConfig(text_dim=8, dim=16, max_len=4, layers=1, heads=2, id_buckets=64)
>>> model = Ranker(config).eval()
>>> text = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)  # (N=3, T=8)
>>> items = model.item_vectors(text, hash_ids(["tea", "cake", "new"], config.id_buckets))
>>> items.shape                                                         # (N, D)
torch.Size([3, 16])
>>> steps = [Step("tea", "view", 0.0), Step("cake", "purchase", 60.0)]
>>> seq = encode_sequences([steps], config.max_len, config.gap_buckets)  # rows: tea=0, cake=1
>>> user = model.user_vectors(items[seq.rows.clamp(min=0)], seq)       # (B=1, D)
>>> model.score(user, items[None]).shape                                # (B, C)
torch.Size([1, 3])
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn
from torch.nn import functional as F

#: Event type -> embedding row (0 is padding).
TYPE_IDS: dict[str, int] = {"view": 1, "click": 2, "purchase": 3}
PAD = 0
FIRST_EVENT_GAP = 1  # gap bucket of an event with no previous one


@dataclass(frozen=True)
class RankerConfig:
    """Every shape of the ranker; saved inside each checkpoint's manifest."""

    text_dim: int = 384  # size of the frozen text vectors (all-MiniLM-L6-v2: 384)
    dim: int = 64  # D: width of item vectors, user vectors and the transformer
    max_len: int = 50  # L: most recent events the user tower reads
    layers: int = 2  # transformer blocks in the user tower
    heads: int = 2  # attention heads per block (dim must divide by it)
    dropout: float = 0.5  # dropout on embeddings, attention and MLP while training
    id_buckets: int = 1 << 15  # rows of each of the two hashed id tables (0 = no id embedding)
    gap_buckets: int = 32  # log2-spaced buckets of the seconds since the previous event

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be a multiple of heads {self.heads}")
        if min(self.text_dim, self.dim, self.max_len, self.layers, self.heads) < 1:
            raise ValueError(f"every size of {self} must be positive")
        if self.gap_buckets < 3:
            raise ValueError("gap_buckets must be at least 3 (padding, first event, one gap)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankerConfig:
        """The config a manifest describes; unknown keys are refused, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ranker config keys: {sorted(unknown)}")
        return cls(**data)


# --- inputs ------------------------------------------------------------------------------
class Step(NamedTuple):
    """One event of a user's sequence, as the ranker reads it."""

    item_id: str
    type: str  # view | click | purchase
    ts: float  # event time, unix seconds


class StepLike(Protocol):
    """Anything with an item, an event type and a time (`Step`, `state.Interaction`)."""

    @property
    def item_id(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def ts(self) -> float: ...


@functools.lru_cache(maxsize=1 << 20)
def _digest(item_id: str) -> tuple[int, int]:
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=16, person=b"streamrec-id").digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def hash_ids(item_ids: Sequence[str], buckets: int) -> torch.Tensor:
    """Two stable bucket rows per item id; (N, 2) int64. The same in every process.

    >>> hash_ids(["tea"], 1000).tolist() == hash_ids(["tea"], 1000).tolist()
    True
    """
    if buckets < 1:
        return torch.zeros((len(item_ids), 2), dtype=torch.long)
    pairs = [_digest(item_id) for item_id in item_ids]
    return torch.tensor([[a % buckets, b % buckets] for a, b in pairs], dtype=torch.long).reshape(
        len(item_ids), 2
    )


def gap_bucket(gap_s: float, buckets: int) -> int:
    """Seconds since the previous event -> a log2-spaced bucket in [2, buckets).

    >>> [gap_bucket(g, 32) for g in (0, 1, 60, 86_400)]
    [2, 3, 7, 18]
    """
    step = int(math.log2(1.0 + max(0.0, gap_s)))
    return 2 + min(step, buckets - 3)


@dataclass
class SequenceBatch:
    """A batch of user sequences, left-padded to L so position L-1 is each user's newest event.

    `rows` index a table of item vectors the caller holds (-1 where padded); the ranker reads
    the item vectors through that table, so one item tower pass serves the whole batch.
    """

    rows: torch.Tensor  # (B, L) int64 row of each event's item, -1 = padding
    types: torch.Tensor  # (B, L) int64 TYPE_IDS, 0 = padding
    gaps: torch.Tensor  # (B, L) int64 gap buckets, 0 = padding

    @property
    def mask(self) -> torch.Tensor:
        return self.rows >= 0  # (B, L) True where a real event sits

    def to(self, device: torch.device | str) -> SequenceBatch:
        return SequenceBatch(self.rows.to(device), self.types.to(device), self.gaps.to(device))

    def trimmed(self) -> SequenceBatch:
        """Without the leading columns that are padding in every row (same outputs, less work).

        Positions count back from the newest event, so dropping left padding changes nothing.
        """
        filled = int(self.mask.sum(dim=1).max()) if self.rows.numel() else 0
        keep = max(filled, 1)
        return SequenceBatch(self.rows[:, -keep:], self.types[:, -keep:], self.gaps[:, -keep:])


def encode_sequences(
    sequences: Sequence[Sequence[StepLike]],
    max_len: int,
    gap_buckets: int,
    row_of: dict[str, int] | None = None,
) -> SequenceBatch:
    """The last L events of each sequence (oldest first) as a left-padded `SequenceBatch`.

    `row_of` maps item ids to rows of the caller's item table; without it, rows number the
    distinct items in order of appearance. Events whose item has no row are skipped.
    """
    length = max_len
    batch = len(sequences)
    rows = torch.full((batch, length), -1, dtype=torch.long)  # (B, L)
    types = torch.zeros((batch, length), dtype=torch.long)  # (B, L)
    gaps = torch.zeros((batch, length), dtype=torch.long)  # (B, L)
    auto = row_of is None
    table: dict[str, int] = {} if row_of is None else row_of
    for b, steps in enumerate(sequences):
        kept = []
        for step in steps:
            if auto and step.item_id not in table:
                table[step.item_id] = len(table)
            if step.item_id in table:
                kept.append(step)
        kept = kept[-(length + 1) :]  # one extra: the gap of the first kept event
        previous_ts = kept[0].ts if len(kept) > length else None
        window = kept[-length:]
        offset = length - len(window)
        for position, step in enumerate(window):
            rows[b, offset + position] = table[step.item_id]
            types[b, offset + position] = TYPE_IDS.get(step.type, TYPE_IDS["view"])
            gaps[b, offset + position] = (
                FIRST_EVENT_GAP
                if previous_ts is None
                else gap_bucket(step.ts - previous_ts, gap_buckets)
            )
            previous_ts = step.ts
    return SequenceBatch(rows, types, gaps)


# --- the model ---------------------------------------------------------------------------
class ItemTower(nn.Module):
    """Text vector projection + two hashed id embeddings -> item vector."""

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        self.config = config
        self.text = nn.Linear(config.text_dim, config.dim)
        self.ids = nn.Embedding(2 * config.id_buckets, config.dim) if config.id_buckets else None
        if self.ids is not None:
            nn.init.normal_(self.ids.weight, std=0.02)

    def forward(self, text: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        h = self.text(text)  # (N, T) -> (N, D)
        if self.ids is not None:
            offsets = torch.tensor([0, self.config.id_buckets], device=ids.device)  # 2nd table
            h = h + self.ids(ids + offsets).sum(dim=1)  # (N, 2, D) -> (N, D); one lookup
        return h


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then an MLP."""

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.dropout = config.dropout
        self.norm1 = nn.LayerNorm(config.dim)
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.norm2 = nn.LayerNorm(config.dim)
        self.mlp = nn.Sequential(
            nn.Linear(config.dim, 4 * config.dim),
            nn.GELU(),
            nn.Linear(4 * config.dim, config.dim),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape  # (B, L, D)
        q, k, v = self.qkv(self.norm1(x)).split(dim, dim=-1)  # each (B, L, D)
        q, k, v = (t.view(batch, length, self.heads, dim // self.heads).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(  # (B, H, L, D/H)
            q, k, v, attn_mask=allowed[:, None], dropout_p=self.dropout if self.training else 0.0
        )
        attended = attended.transpose(1, 2).reshape(batch, length, dim)  # (B, L, D)
        x = x + F.dropout(self.proj(attended), self.dropout, self.training)
        return x + self.mlp(self.norm2(x))


class Ranker(nn.Module):
    """Item tower, user tower and the interaction `w·(u ⊙ h) + b`."""

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        self.config = config
        self.items = ItemTower(config)
        self.types = nn.Embedding(len(TYPE_IDS) + 1, config.dim, padding_idx=PAD)
        self.gaps = nn.Embedding(config.gap_buckets, config.dim, padding_idx=PAD)
        self.positions = nn.Embedding(config.max_len, config.dim)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self.w = nn.Parameter(torch.ones(config.dim))  # interaction weights
        self.b = nn.Parameter(torch.zeros(()))  # interaction bias
        # Small like the item vectors (~0.03): at torch's default N(0, 1) these embeddings
        # would drown the items in the transformer's input.
        for table in (self.types, self.gaps, self.positions):
            nn.init.normal_(table.weight, std=0.02)
            if table.padding_idx is not None:
                with torch.no_grad():
                    table.weight[table.padding_idx].zero_()

    def item_vectors(self, text: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Item vectors h (N, D) from text vectors (N, T) and hashed ids (N, 2)."""
        return self.items(text, ids)

    def user_states(self, history: torch.Tensor, sequences: SequenceBatch) -> torch.Tensor:
        """The transformer's output at every position; (B, L, D).

        `history` (B, L, D) holds the item vector of each event (anything where padded).
        """
        mask = sequences.mask  # (B, L)
        length = mask.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"sequences of {length} events, the model reads at most {self.config.max_len}")
        positions = torch.arange(length - 1, -1, -1, device=mask.device)  # 0 = the newest event
        x = history + self.types(sequences.types) + self.gaps(sequences.gaps) + self.positions(positions)
        x = F.dropout(x * mask[..., None], self.config.dropout, self.training)  # (B, L, D)
        causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()  # (L, L)
        # A query may look at itself and at earlier real events; padded rows see only
        # themselves (no row may have every key masked: softmax over nothing is NaN).
        eye = torch.eye(length, dtype=torch.bool, device=mask.device)
        allowed = (causal & mask[:, None, :]) | eye  # (B, L, L)
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x)  # (B, L, D)

    def user_vectors(self, history: torch.Tensor, sequences: SequenceBatch) -> torch.Tensor:
        """The user vector u: the output at the newest event; (B, D).

        Leading all-padding columns are dropped first; `history` may be (B, L, D) or already
        trimmed to match.
        """
        trimmed = sequences.trimmed()
        history = history[:, -trimmed.rows.shape[1] :]
        return self.user_states(history, trimmed)[:, -1]

    def queries(self, users: torch.Tensor) -> torch.Tensor:
        """Retrieval queries `u ⊙ w` (B, D): their dot product with h is the score minus b."""
        return users * self.w

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """`w·(u ⊙ h) + b` for users (B, D) and candidates (B, C, D) or (C, D); -> (B, C)."""
        query = self.queries(users)  # (B, D)
        if items.dim() == 2:
            return query @ items.T + self.b  # (B, C)
        return torch.einsum("bd,bcd->bc", query, items) + self.b  # (B, C)

    def probability(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """`sigmoid(score)`: how likely the user engages with each candidate; (B, C)."""
        return torch.sigmoid(self.score(users, items))

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


#: Parameters a warm start from another domain keeps (everything but the id embeddings).
def transferable(name: str) -> bool:
    """True for weights that mean the same in another catalogue (not `items.ids.*`)."""
    return not name.startswith("items.ids.")
