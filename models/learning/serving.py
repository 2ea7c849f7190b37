"""Serving a ranker checkpoint: the `Scorer` the recommender calls, and its retrieval vectors.

Retrieval stays consistent with the served version because every version gets its own
retrieval collection (Qdrant Edge: its own shard), named after the version, holding that
version's item vectors `h_i` (dot product). The query is `u ⊙ w`, so Qdrant's dot product
ranks exactly as `score(u, i) = w·(u ⊙ h_i) + b` does. The text collection (MiniLM vectors)
does not depend on the version and is shared by all.

Cost of a new version: one item-tower pass over the catalogue (a 384x64 projection and two
embedding rows per item: milliseconds per 10k items) plus upserting N vectors into the new
collection (see `make bench` for the figure); the old collection serves until the swap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from streamrec.models.core.scoring import ScoringBatch
from streamrec.models.index.protocol import IndexedItem, ItemIndex
from streamrec.models.learning.ranker import (
    Ranker,
    RankerConfig,
    StepLike,
    encode_sequences,
    hash_ids,
)
from streamrec.models.learning.store import Manifest, ModelStore, ModelStoreError

log = logging.getLogger(__name__)

#: Retrieval collections are named `<text collection>.<this>-<version>`.
RETRIEVAL_SUFFIX = "model"
REBUILD_BATCH = 2048  # items per item-tower pass and upsert while building retrieval vectors

RetrievalOpener = Callable[[str, int], ItemIndex]  # (collection name, dim) -> a "dot" index


class RankerScorer:
    """A loaded checkpoint: user vectors, retrieval queries and batched scoring."""

    def __init__(self, ranker: Ranker, manifest: Manifest, device: torch.device | str = "cpu") -> None:
        self.ranker = ranker.to(device).eval()
        self.manifest = manifest
        self.version = manifest.version
        self.device = torch.device(device)
        self.retrieval: ItemIndex | None = None  # set by `attach_retrieval`

    @property
    def config(self) -> RankerConfig:
        return self.ranker.config

    @property
    def history_length(self) -> int:
        return self.config.max_len

    # --- item side ---------------------------------------------------------------------
    @torch.inference_mode()
    def item_vectors(self, item_ids: Sequence[str], text: np.ndarray) -> np.ndarray:
        """This version's item vectors h (N, D) from text vectors (N, T)."""
        if len(item_ids) == 0:
            return np.zeros((0, self.config.dim), dtype=np.float32)
        vectors = self.ranker.item_vectors(
            torch.as_tensor(np.asarray(text, dtype=np.float32), device=self.device),
            hash_ids(list(item_ids), self.config.id_buckets).to(self.device),
        )
        return vectors.float().cpu().numpy()

    def index_items(self, items: Sequence[IndexedItem]) -> None:
        """Write this version's vectors of catalogue items (text vectors in) to its retrieval index."""
        if self.retrieval is None or not items:
            return
        vectors = self.item_vectors([i.item_id for i in items], np.stack([i.vector for i in items]))
        self.retrieval.upsert(
            [IndexedItem(item.item_id, vector, item.title) for item, vector in zip(items, vectors)]
        )

    def attach_retrieval(self, retrieval: ItemIndex, text_index: ItemIndex) -> int:
        """Use `retrieval` for this version; fill it from the text index unless already full.

        Returns how many items were (re)written.
        """
        if retrieval.dim != self.config.dim:
            raise ValueError(f"retrieval index has dim {retrieval.dim}, the model {self.config.dim}")
        self.retrieval = retrieval
        expected = text_index.count()
        if retrieval.count() == expected:
            return 0
        written = 0
        for batch in text_index.scan(REBUILD_BATCH):
            self.index_items(batch)
            written += len(batch)
        retrieval.optimize()
        log.info("built retrieval vectors of %s for %d items", self.version, written)
        return written

    # --- user side ---------------------------------------------------------------------
    @torch.inference_mode()
    def user_vectors(
        self, histories: Sequence[Sequence[StepLike]], text: Mapping[str, np.ndarray]
    ) -> torch.Tensor:
        """User vectors u (B, D) from each user's recent events (oldest first).

        `text` holds the text vector of every item known to the index; events of other items
        (seen before their catalogue entry) are skipped.
        """
        known = sorted({step.item_id for steps in histories for step in steps if step.item_id in text})
        row_of = {item_id: row for row, item_id in enumerate(known)}
        sequences = encode_sequences(histories, self.config.max_len, self.config.gap_buckets, row_of)
        if not known:  # nobody has a known item: zero users (the caller treats them as cold)
            return torch.zeros((len(histories), self.config.dim))
        items = self.ranker.item_vectors(
            torch.as_tensor(np.stack([text[i] for i in known]), device=self.device),
            hash_ids(known, self.config.id_buckets).to(self.device),
        )  # (U, D)
        sequences = sequences.to(self.device)
        users = self.ranker.user_vectors(items[sequences.rows.clamp(min=0)], sequences)  # (B, D)
        return users.float().cpu()

    @torch.inference_mode()
    def queries(self, users: torch.Tensor) -> np.ndarray:
        """Retrieval queries `u ⊙ w` (B, D) for the dot-product retrieval index."""
        return self.ranker.queries(users.to(self.device)).float().cpu().numpy()

    # --- Scorer ------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, batch: ScoringBatch) -> torch.Tensor:
        """`w·(u ⊙ h) + b` for every candidate; (B, C), -inf where padded."""
        if batch.user_vectors is None or batch.candidate_ids is None:
            raise ValueError("the ranker scores batches with user_vectors and candidate_ids")
        if batch.item_vectors is not None and batch.item_rows is not None and batch.item_ids is not None:
            # The item tower once per distinct candidate of the batch, then gathered.
            hashed = hash_ids(batch.item_ids, self.config.id_buckets).to(self.device)  # (U, 2)
            table = self.ranker.item_vectors(batch.item_vectors.to(self.device), hashed)  # (U, D)
            rows = batch.item_rows.to(self.device)  # (B, C)
            items = torch.index_select(table, 0, rows.reshape(-1)).reshape(*rows.shape, -1)  # (B, C, D)
        else:
            candidates = batch.candidate_vectors()  # (B, C, T)
            n_users, n_candidates, text_dim = candidates.shape
            flat_ids = _padded_ids(batch.candidate_ids, n_candidates)
            hashed = hash_ids(flat_ids, self.config.id_buckets).to(self.device)  # (B*C, 2)
            text = candidates.reshape(-1, text_dim).to(self.device)  # (B*C, T)
            items = self.ranker.item_vectors(text, hashed).reshape(n_users, n_candidates, -1)  # (B, C, D)
        scores = self.ranker.score(batch.user_vectors.to(self.device), items).float()  # (B, C)
        return scores.masked_fill(~batch.candidate_mask.to(self.device), float("-inf")).cpu()


def _padded_ids(rows: Sequence[Sequence[str]], width: int) -> list[str]:
    """Row-major ids padded with "" to `width` per row (padding is masked out later)."""
    flat: list[str] = []
    for row in rows:
        flat.extend(row)
        flat.extend([""] * (width - len(row)))
    return flat


def load_ranker(manifest: Manifest, tensors: Mapping[str, torch.Tensor]) -> Ranker:
    """A `Ranker` from a verified checkpoint; config or shape mismatches become ModelStoreError."""
    try:
        config = RankerConfig.from_dict(dict(manifest.config))
        ranker = Ranker(config)
        ranker.load_state_dict(dict(tensors), strict=True)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ModelStoreError(
            f"checkpoint {manifest.version} does not fit the ranker: {exc}", reason="config"
        ) from exc
    return ranker.eval()


def retrieval_name(collection: str, version: str) -> str:
    """The collection (Edge: shard) holding one version's retrieval vectors."""
    return f"{collection}.{RETRIEVAL_SUFFIX}-{version}"


def open_scorer(
    store: ModelStore,
    version: str | None,
    text_index: ItemIndex,
    open_retrieval: RetrievalOpener,
    collection: str,
    device: torch.device | str = "cpu",
    expected_sha256: str | None = None,
    on_refused: RefusalHandler | None = None,
) -> RankerScorer | None:
    """The checkpoint to serve (pinned `version`, else the newest good one), ready; None if
    there is none to serve.

    A pinned version that is missing or fails verification is an error, as is one whose
    weights are not `expected_sha256` (from a `model-updates` message). Unpinned, a newest
    checkpoint that fails verification is refused as a hot swap would refuse it: reported
    to `on_refused` (version, error; by default a warning without traceback), and the next
    older one is tried; None when every one is refused (the caller serves the content scorer).
    """
    if version is not None:
        return _open_version(store, version, text_index, open_retrieval, collection, device, expected_sha256)
    report = on_refused or _warn_refused
    for manifest in reversed(store.list()):  # newest first
        try:
            return _open_version(store, manifest.version, text_index, open_retrieval, collection, device, None)
        except ModelStoreError as exc:
            report(manifest.version, exc)
    return None


RefusalHandler = Callable[[str, ModelStoreError], None]  # (version, why) of a refused checkpoint


def _warn_refused(version: str, error: ModelStoreError) -> None:
    log.warning("refusing checkpoint %s (%s), trying the previous one: %s", version, error.reason, error)


def _open_version(
    store: ModelStore,
    version: str,
    text_index: ItemIndex,
    open_retrieval: RetrievalOpener,
    collection: str,
    device: torch.device | str,
    expected_sha256: str | None,
) -> RankerScorer:
    manifest, tensors = store.load(version)
    if expected_sha256 is not None and manifest.sha256 != expected_sha256:
        raise ModelStoreError(
            f"{manifest.version}: the update names weights {expected_sha256[:12]}..., "
            f"the store holds {manifest.sha256[:12]}...",
            reason="checksum",
        )
    ranker = load_ranker(manifest, tensors)
    if ranker.config.text_dim != text_index.dim:
        raise ModelStoreError(
            f"checkpoint {manifest.version} reads {ranker.config.text_dim}-d text vectors, "
            f"the item index holds {text_index.dim}-d ones (another text encoder?)",
            reason="config",
        )
    scorer = RankerScorer(ranker, manifest, device)
    retrieval = open_retrieval(retrieval_name(collection, manifest.version), ranker.config.dim)
    scorer.attach_retrieval(retrieval, text_index)
    return scorer
