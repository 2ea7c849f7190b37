"""Everything the event -> recommendation path needs, built once from the settings.

The Faust worker, the evaluator and the benchmarks all build their pipeline here, so they run
the very same code.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamrec.models.catalog import CatalogIndexer
from streamrec.models.device import select_device
from streamrec.models.encoder import TextEncoder
from streamrec.models.index import ItemIndex, open_index
from streamrec.models.popularity import TrendingItems
from streamrec.models.recommender import Recommender, RecommenderConfig
from streamrec.models.scoring import ContentScorer
from streamrec.stream.settings import Settings


@dataclass
class Pipeline:
    """The catalogue indexer and the recommender, sharing one item index."""

    index: ItemIndex
    catalog: CatalogIndexer
    recommender: Recommender

    @classmethod
    def from_settings(cls, settings: Settings) -> Pipeline:
        device = select_device(settings.device)
        encoder = TextEncoder(
            settings.encoder_path, device=str(device), batch_size=settings.encoder_batch_size
        )
        index = open_index(settings, encoder.dim)
        recommender = Recommender(
            index=index,
            scorer=ContentScorer(device),
            trending=TrendingItems(half_life_s=settings.trending_half_life_s),
            config=RecommenderConfig.from_settings(settings),
        )
        return cls(index=index, catalog=CatalogIndexer(encoder, index), recommender=recommender)

    def close(self) -> None:
        self.index.close()
