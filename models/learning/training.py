"""Training the ranker: next-item prediction with a sampled softmax.

Each training example is a window of L+1 consecutive events of one user; at every position the
model predicts the next item. The softmax runs over the batch's own target items (in-batch
negatives) plus `negatives` items drawn uniformly from the catalogue, with the log of each
candidate's expected inclusion subtracted from its logit (the "logQ" correction: without it,
popular items, which are in-batch negatives often, would be pushed down too hard). The loss of
a position is weighted by its target's event type (purchase > click > view).

CUDA when present (bf16 autocast); the text encoder stays frozen, its vectors come from the
`ItemTable`. Seeded: the same data, config and seed give the same model on one device.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch.nn import functional as F

from streamrec.models.core.device import autocast
from streamrec.models.core.state import EVENT_WEIGHTS
from streamrec.models.learning.item_table import ItemTable
from streamrec.models.learning.ranker import Ranker, SequenceBatch, StepLike, encode_sequences

log = logging.getLogger(__name__)

#: Loss weight per TYPE_IDS row (0 = padding): purchase > click > view.
_TYPE_WEIGHTS = torch.tensor(
    [0.0, EVENT_WEIGHTS["view"], EVENT_WEIGHTS["click"], EVENT_WEIGHTS["purchase"]]
)
Validator = Callable[[Ranker], Mapping[str, float]]


@dataclass(frozen=True)
class TrainConfig:
    """How to train; saved in the checkpoint manifest next to the model config."""

    epochs: int = 200  # upper bound; early stopping usually ends sooner
    batch_size: int = 128  # windows of L+1 events per step
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    negatives: int = 8192  # uniformly sampled negatives per step (plus in-batch ones)
    patience: int = 12  # epochs without a better validation metric before stopping
    monitor: str = "ndcg@10"  # validation metric that early stopping watches (higher = better)
    seed: int = 0  # seeds shuffling, sampling, dropout and initialisation
    max_steps: int | None = None  # hard cap on steps (quick runs, fine-tuning cycles)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """What training did: epochs with their figures, the best one, wall time."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0
    examples: int = 0
    loss: float | None = None  # weighted mean over every step (`train_steps`)


@dataclass
class Windows:
    """Training windows: (E, L+1) item rows, event types and time-gap buckets."""

    rows: torch.Tensor  # (E, L+1) int64, -1 = padding
    types: torch.Tensor  # (E, L+1)
    gaps: torch.Tensor  # (E, L+1)

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def make_windows(
    sequences: Mapping[str, Sequence[StepLike]] | Sequence[Sequence[StepLike]],
    table: ItemTable,
    max_len: int,
    gap_buckets: int,
) -> Windows:
    """Cut each sequence, from its end backwards, into windows of up to L+1 events.

    A window's first event is also the last event of the window before it, so every event
    but a sequence's first is a target exactly once. Sequences with fewer than two events
    teach nothing and are skipped.
    """
    values = sequences.values() if isinstance(sequences, Mapping) else sequences
    chunks: list[Sequence[StepLike]] = []
    for steps in values:
        known = [s for s in steps if s.item_id in table.row_of]
        end = len(known)
        while end >= 2:
            start = max(0, end - (max_len + 1))
            chunks.append(known[start:end])
            end = start + 1  # the window's first event is the next window's last input
            if start == 0:
                break
    batch = encode_sequences(chunks, max_len + 1, gap_buckets, table.row_of)
    return Windows(batch.rows, batch.types, batch.gaps)


def train_ranker(
    model: Ranker,
    table: ItemTable,
    windows: Windows,
    config: TrainConfig,
    device: torch.device,
    validate: Validator | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `model` in place; with `validate`, keep the best epoch and stop early."""
    result = TrainResult(examples=len(windows))
    best_state: dict[str, torch.Tensor] | None = None
    best_value = -math.inf
    stale = 0
    started = time.perf_counter()
    for epoch in _epochs(model, table, windows, config, device, progress):
        figures: dict[str, float] = {"epoch": epoch.number, "loss": epoch.loss}
        result.steps = epoch.steps
        if validate is not None:
            model.eval()
            figures.update({f"valid_{k}": float(v) for k, v in validate(model).items()})
        figures["seconds"] = round(time.perf_counter() - started, 2)
        result.epochs.append(figures)
        log.log(
            logging.INFO if progress else logging.DEBUG,  # quiet for the trainer's short cycles
            "epoch %s",
            {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()},
        )
        if progress:
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()), flush=True)
        value = figures.get(f"valid_{config.monitor}", -figures["loss"])
        if value > best_value:
            best_value, stale = value, 0
            best_state = copy.deepcopy(model.state_dict())
            result.best_epoch, result.best_metrics = epoch.number, figures
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = round(time.perf_counter() - started, 2)
    return result


def train_steps(
    model: Ranker, table: ItemTable, windows: Windows, steps: int, config: TrainConfig, device: torch.device
) -> TrainResult:
    """Train `model` in place for `steps` optimiser steps and keep the last weights.

    As many passes over `windows` as the steps take; no validation, no early stopping, no
    going back to an earlier epoch (fine-tuning cycles: bounded work from given weights).
    `config.epochs`, `patience`, `monitor` and `max_steps` do not apply; the rest does.
    `loss` is the weighted mean over every step. Same data, config and seed: same weights.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    config = replace(config, epochs=steps, max_steps=steps)  # every epoch takes at least one step
    result = TrainResult(examples=len(windows))
    started = time.perf_counter()
    total_loss = total_weight = 0.0
    for epoch in _epochs(model, table, windows, config, device, progress=False):
        result.epochs.append({"epoch": epoch.number, "loss": epoch.loss, "steps": epoch.steps})
        result.steps = epoch.steps
        total_loss += epoch.loss * epoch.weight
        total_weight += epoch.weight
    model.eval()
    result.loss = total_loss / max(total_weight, 1e-9)
    result.seconds = round(time.perf_counter() - started, 2)
    return result


@dataclass(frozen=True)
class _Epoch:
    number: int  # 1-based
    loss: float  # weighted mean loss of the epoch's steps
    weight: float  # total loss weight of the epoch's positions
    steps: int  # steps so far, all epochs


def _epochs(
    model: Ranker, table: ItemTable, windows: Windows, config: TrainConfig, device: torch.device, progress: bool
) -> Iterator[_Epoch]:
    """Seed, then run epochs of shuffled batches (up to `config.max_steps`), one item each.

    The caller may look at (validate, copy) the model between epochs, or stop early.
    """
    from tqdm import tqdm

    if len(windows) == 0:
        raise ValueError("no training windows: every sequence has fewer than two known events")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model.to(device)
    text, ids = table.text.to(device), table.ids.to(device)
    type_weights = _TYPE_WEIGHTS.to(device)
    n_items = len(table)
    targets = windows.rows[:, 1:]
    popularity = torch.bincount(targets[targets >= 0], minlength=n_items).float()  # (N,)
    popularity = (popularity / popularity.sum()).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    lengths = (windows.rows >= 0).sum(dim=1)  # (E,)
    steps = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        batches = _length_bucketed_batches(lengths, config.batch_size, generator)
        total_loss, total_weight = 0.0, 0.0
        bar = tqdm(batches, desc=f"epoch {epoch}", unit="step", disable=not progress, leave=False)
        for step, chosen in enumerate(bar):
            negatives = torch.randint(n_items, (config.negatives,), generator=generator)
            loss, weight = _step_loss(
                model, text, ids, popularity, type_weights,
                windows.rows[chosen].to(device), windows.types[chosen].to(device),
                windows.gaps[chosen].to(device), negatives.to(device), device,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            steps += 1
            total_loss += float(loss.detach()) * weight
            total_weight += weight
            if step % 20 == 0:
                bar.set_postfix(loss=f"{total_loss / max(total_weight, 1e-9):.3f}")
            if config.max_steps is not None and steps >= config.max_steps:
                break
        yield _Epoch(epoch, total_loss / max(total_weight, 1e-9), total_weight, steps)
        if config.max_steps is not None and steps >= config.max_steps:
            return


def _length_bucketed_batches(
    lengths: torch.Tensor, batch_size: int, generator: torch.Generator, pool: int = 32
) -> list[torch.Tensor]:
    """Shuffled batches of windows of similar length (padding is most of the work otherwise).

    Windows are shuffled, cut into pools of `pool` batches, sorted by length inside a pool,
    split into batches, and the batches shuffled again: random, yet rarely padded much.
    """
    order = torch.randperm(lengths.numel(), generator=generator)
    batches: list[torch.Tensor] = []
    for start in range(0, order.numel(), batch_size * pool):
        chunk = order[start : start + batch_size * pool]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches.extend(chunk.split(batch_size))
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def _step_loss(
    model: Ranker,
    text: torch.Tensor,  # (N, T)
    ids: torch.Tensor,  # (N, 2)
    popularity: torch.Tensor,  # (N,) share of training targets
    type_weights: torch.Tensor,  # (4,)
    rows: torch.Tensor,  # (B, L+1)
    types: torch.Tensor,  # (B, L+1)
    gaps: torch.Tensor,  # (B, L+1)
    negatives: torch.Tensor,  # (K,)
    device: torch.device,
) -> tuple[torch.Tensor, float]:
    """Weighted sampled-softmax loss of one batch, and the total weight of its positions."""
    filled = int((rows >= 0).sum(dim=1).max())  # most windows are shorter than L+1
    rows, types, gaps = rows[:, -filled:], types[:, -filled:], gaps[:, -filled:]
    inputs, targets = rows[:, :-1], rows[:, 1:]  # (B, L) each
    valid = (inputs >= 0) & (targets >= 0)  # (B, L) positions with an input and a next item
    n_items = text.shape[0]
    # One item-tower pass over every item this step touches.
    needed = torch.unique(torch.cat([inputs[inputs >= 0], targets[valid], negatives]))  # (U,)
    local = torch.full((n_items,), -1, dtype=torch.long, device=device)
    local[needed] = torch.arange(needed.numel(), device=device)
    with autocast(device):
        vectors = model.item_vectors(text[needed], ids[needed])  # (U, D)
        history = vectors[local[inputs.clamp(min=0)]]  # (B, L, D)
        states = model.user_states(history, SequenceBatch(inputs, types[:, :-1], gaps[:, :-1]))
        users = states[valid]  # (P, D)
        candidates = torch.unique(torch.cat([targets[valid], negatives]))  # (C,) sorted
        logits = model.score(users, vectors[local[candidates]]).float()  # (P, C)
    n_positions = users.shape[0]
    expected = n_positions * popularity[candidates] + negatives.numel() / n_items  # (C,)
    logits = logits - torch.log(expected.clamp(min=1e-12))
    labels = torch.searchsorted(candidates, targets[valid])  # (P,)
    weights = type_weights[types[:, 1:][valid]]  # (P,)
    losses = F.cross_entropy(logits, labels, reduction="none")  # (P,)
    total = weights.sum()
    return (losses * weights).sum() / total, float(total)


def warm_start(model: Ranker, source: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy every transferable weight (all but the id embeddings) whose shape matches.

    Returns the names copied; a shape mismatch on a transferable weight is an error (the
    configs differ where they must agree).
    """
    from streamrec.models.learning.ranker import transferable

    own = model.state_dict()
    copied = []
    for name, tensor in source.items():
        if not transferable(name) or name not in own:
            continue
        if own[name].shape != tensor.shape:
            raise ValueError(f"cannot warm-start {name}: shape {tuple(tensor.shape)} != {tuple(own[name].shape)}")
        own[name] = tensor.to(own[name].dtype)
        copied.append(name)
    model.load_state_dict(own)
    return copied


def with_overrides(config: TrainConfig, **overrides: Any) -> TrainConfig:
    """A copy of the config with the non-None overrides applied."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
