"""What a worker's agents, tasks and views share, built once per app: `WorkerContext`.

The topics (raw bytes: the contract's JSON is decoded at the edge, by the handlers), the two
tables, the handlers that make every decision, the model swapper and the latest events. The
agents in `agents.py` and `catalogue.py` are short functions over one of these.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import faust

from streamrec.consumers.worker.handlers import (
    CatalogHandler,
    IngestHandler,
    Origin,
    RecommendHandler,
)
from streamrec.consumers.worker.metrics import WorkerMetrics
from streamrec.consumers.worker.model_updates import ModelSwapper
from streamrec.consumers.worker.retry import Backoff
from streamrec.consumers.worker.routing import HopMode
from streamrec.consumers.worker.state_codec import UserStateCodec
from streamrec.models.core.interner import Interner
from streamrec.models.core.packed_state import PackedUserState, from_record, pack, unpack
from streamrec.models.core.pipeline import Pipeline
from streamrec.models.core.state import UserState
from streamrec.stream.messages import Event, ModelUpdate
from streamrec.stream.settings import Settings, Topics

log = logging.getLogger(__name__)

USER_STATE_TABLE = "user-state"
LATEST_LISTS_TABLE = "latest-recommendations"
RECENT_EVENTS = 200  # the latest events kept for the HTTP API and the live page


@dataclass(frozen=True)
class WorkerTopics:
    """The worker's Faust topics, keys and values as raw bytes."""

    events: Any
    events_by_user: Any
    items: Any
    recommendations: Any
    dlq: Any
    model_updates: Any

    @classmethod
    def declare(cls, app: faust.App, names: Topics) -> WorkerTopics:
        def raw(name: str) -> Any:
            return app.topic(name, key_serializer="raw", value_serializer="raw")

        return cls(
            events=raw(names.events),
            events_by_user=raw(names.events_by_user),
            items=raw(names.items),
            recommendations=raw(names.recommendations),
            dlq=raw(names.dlq),
            model_updates=raw(names.model_updates),
        )


@dataclass
class WorkerContext:
    """One worker's parts; `build` makes them, the agents only use them."""

    app: faust.App
    settings: Settings
    pipeline: Pipeline
    metrics: WorkerMetrics
    topics: WorkerTopics
    user_states: Any  # user id (bytes) -> PackedUserState (`pack`); a DeliveredTable
    latest_lists: Any  # user id (bytes) -> the last Recommendation published, as a dict
    ingest: IngestHandler
    recommend: RecommendHandler
    catalog: CatalogHandler
    swapper: ModelSwapper
    recent_events: deque[Event] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    recommend_backoff: Backoff = field(default_factory=Backoff)  # failures in a row, across restarts
    hops: HopMode | None = None  # one hop or two, decided when ingest first starts (agents.hops_of)
    item_codes: Interner = field(default_factory=Interner)  # the packed states' item ids (append-only)

    @classmethod
    def build(cls, app: faust.App, settings: Settings, pipeline: Pipeline, metrics: WorkerMetrics) -> WorkerContext:
        """Declare the topics and tables on `app` and wire the handlers, swapper and metrics."""
        topics = WorkerTopics.declare(app, settings.topics)

        async def publish_model_update(update: ModelUpdate) -> None:  # the canary judge's decisions
            await topics.model_updates.send(value=update.to_bytes())

        item_codes = Interner()
        context = cls(
            app=app,
            settings=settings,
            pipeline=pipeline,
            metrics=metrics,
            topics=topics,
            # use_partitioner=True: writes inside stream.take() go to the key's partition
            # (faust-streaming issue 497); keys are user ids, as on events.by-user and on
            # the events served in one hop (routing.py); values are packed states in memory,
            # self-contained binary records in the changelog (`UserStateCodec`).
            user_states=_user_table(app, USER_STATE_TABLE, settings, UserStateCodec(item_codes)),
            # For GET /users/{id}/recommendations; co-partitioned with user-state, so one
            # worker owns both.
            latest_lists=_user_table(app, LATEST_LISTS_TABLE, settings),
            ingest=IngestHandler(settings, metrics),
            recommend=RecommendHandler(settings, pipeline, metrics),
            catalog=CatalogHandler(settings, metrics),
            swapper=ModelSwapper(settings, pipeline, metrics, publish=publish_model_update),
            item_codes=item_codes,
        )
        context.recommend.on_outcomes = context.swapper.observe  # the canary judge listens
        metrics.watch_index(pipeline.recommender)  # streamrec_index_available, fallback lists
        metrics.watch_candidate_recall(pipeline.recommender)  # streamrec_candidate_next_items_total
        return context

    def restore(self, user_id: str, stored: Any) -> UserState | None:
        """The table's packed state back into a `UserState`; unreadable state starts afresh.

        `stored` is what the table holds: a `PackedUserState`, or the raw bytes of a changelog
        record the codec could not read (read again here to say why), or None.
        """
        if stored is None:
            return None
        try:
            if not isinstance(stored, PackedUserState):
                stored = from_record(stored, self.item_codes)  # ValueError: why it is unreadable
            return unpack(stored, user_id, self.item_codes, max_history=self.settings.history_length)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("dropping unreadable state of user %r, starting afresh: %s", user_id, exc)
            return None

    def pack(self, state: UserState) -> PackedUserState:
        """What the user-state table holds for `state`."""
        return pack(state, self.item_codes)


def _user_table(app: faust.App, name: str, settings: Settings, codec: Any = None) -> Any:
    return app.Table(
        name,
        default=None,
        partitions=settings.partitions,
        key_type=bytes,  # raw user-id keys; values JSON (the changelog uses the same) unless `codec`
        use_partitioner=True,
        value_serializer=codec,
    )


def origin_of(event: Any) -> Origin:
    """Where a Faust event's message was read (for its dead letter)."""
    message = event.message
    return Origin(topic=message.topic, partition=message.partition, offset=message.offset)
