"""Everything the event -> recommendation path needs, built once from the settings.

The Faust worker, the evaluator and the benchmarks all build their pipeline here, so they run
the very same code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from streamrec.models.core.catalog import CatalogIndexer
from streamrec.models.core.collaborative import CollaborativeConfig
from streamrec.models.core.device import select_device
from streamrec.models.core.encoder import TextEncoder
from streamrec.models.core.popularity import TrendingItems
from streamrec.models.core.recommender import Recommender, RecommenderConfig
from streamrec.models.core.scoring import ContentScorer, Scorer
from streamrec.models.index.factory import open_serving_index, retrieval_index_opener
from streamrec.models.index.health import IndexHealth
from streamrec.models.index.protocol import IndexedItem, IndexUnavailableError, ItemIndex
from streamrec.models.learning.serving import RankerScorer, open_scorer
from streamrec.models.learning.store import DirectoryModelStore, ModelStoreError
from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Pipeline:
    """The catalogue indexer and the recommender, sharing one item index.

    The recommender serves the pinned (`STREAMREC_MODEL_VERSION`) or newest good checkpoint of
    the model store; with none, the content scorer, and `model_version` says so. Newer
    checkpoints refused at start (failed verification) are in `refused`, for the worker to count.
    """

    index: ItemIndex
    catalog: CatalogIndexer
    recommender: Recommender
    refused: list[tuple[str, str]] = field(default_factory=list)  # (version, reason) refused at start

    @classmethod
    def from_settings(
        cls, settings: Settings, *, scorer: Scorer | None = None, encoder: TextEncoder | None = None
    ) -> Pipeline:
        """Open the index and the scorer the settings name (`scorer`: serve this one instead
        of the model store's; `encoder`: share an already loaded text encoder)."""
        device = select_device(settings.device)
        encoder = encoder or TextEncoder(
            settings.encoder_path, device=str(device), batch_size=settings.encoder_batch_size
        )
        index = open_serving_index(settings, encoder.dim)
        refused: list[tuple[str, str]] = []

        def on_refused(version: str, error: ModelStoreError) -> None:
            log.warning("refusing checkpoint %s at start (%s), trying the previous one: %s",
                        version, error.reason, error)
            refused.append((version, error.reason))

        try:
            scorer = scorer or open_scorer(
                DirectoryModelStore(settings.resolved_model_dir),
                settings.model_version,
                index,
                retrieval_index_opener(settings),
                settings.collection,
                device,
                on_refused=on_refused,
            ) or ContentScorer(device)
        except Exception:
            index.close()
            raise
        if isinstance(scorer, RankerScorer):
            log.info("serving checkpoint %s (%s)", scorer.version, settings.resolved_model_dir)
        else:
            log.info(
                "no checkpoint in %s: serving with the content scorer (%s)",
                settings.resolved_model_dir,
                scorer.version,
            )
        recommender = Recommender(
            index=index,
            scorer=scorer,
            trending=TrendingItems(half_life_s=settings.trending_half_life_s),
            config=RecommenderConfig.from_settings(settings),
            index_health=IndexHealth(retry_s=settings.index_retry_s),
            collaborative=CollaborativeConfig(max_users=settings.signals_max_users),
        )
        return cls(index=index, catalog=CatalogIndexer(encoder, index), recommender=recommender, refused=refused)

    def store_items(self, items: Sequence[IndexedItem]) -> None:
        """Write embedded catalogue items to the text index and the ranker's retrieval index.

        Raises `IndexUnavailableError` while the index server is away (nothing is lost: the
        same items can be written again, upserts replace by id); the recommender's
        `index_health` hears of it, and of the next write that succeeds.
        """
        health = self.recommender.index_health
        try:
            self.index.upsert(items)
            for scorer in self.scorers():
                if isinstance(scorer, RankerScorer):
                    scorer.index_items(items)
        except IndexUnavailableError as exc:
            health.failed(exc)
            raise
        health.recovered()

    def optimize_index(self) -> None:
        """Index what `store_items` wrote (the text index and every serving version's
        retrieval index) for fast search; slow after a large catalogue write, so a worker
        runs it off its event loop."""
        self.index.optimize()
        for scorer in self.scorers():
            if isinstance(scorer, RankerScorer) and scorer.retrieval is not None:
                scorer.retrieval.optimize()

    def scorers(self) -> list[Scorer]:
        """The scorers serving now: the main one, and the canary's while one runs."""
        canary = self.recommender.canary
        return [self.recommender.scorer] + ([canary.scorer] if canary is not None else [])

    def close(self) -> None:
        for scorer in self.scorers():
            if isinstance(scorer, RankerScorer) and scorer.retrieval is not None:
                scorer.retrieval.close()
        self.index.close()
