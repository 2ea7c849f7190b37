"""What the worker's HTTP API answers, as plain dicts: `WorkerApi`, and its refusals, `ApiError`.

No HTTP here: `views.py` turns requests into calls of `WorkerApi` and its answers (or an
`ApiError`) into responses. The core (`models/`) makes every list; the API only reads it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust

from streamrec.models.core.pipeline import Pipeline
from streamrec.models.core.state import UserState
from streamrec.models.index.protocol import IndexUnavailableError
from streamrec.stream.messages import Event, Recommendation
from streamrec.stream.settings import Settings
from streamrec.stream.validation import EventValidator

FORWARD_TIMEOUT_S = 5.0  # a forwarded request gives up after this long (s)
BROKER_PROBE_TIMEOUT_S = 2.0  # /readyz: a metadata request must answer within this (s)


class ApiError(Exception):
    """A refusal: HTTP status, machine-readable reason, readable detail (and extra fields).

    >>> refused = ApiError(503, "not_assigned", "no owner yet (rebalancing)", retry_after_s=1)
    >>> refused.status, refused.body()
    (503, {'error': 'no owner yet (rebalancing)', 'reason': 'not_assigned', 'retry_after_s': 1})
    """

    def __init__(self, status: int, reason: str, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.status, self.reason, self.error, self.extra = status, reason, error, extra

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "reason": self.reason, **self.extra}


@dataclass
class WorkerApi:
    """The worker's parts the HTTP API answers from: its tables, pipeline and `events` topic."""

    app: faust.App
    settings: Settings
    pipeline: Pipeline
    user_states: Mapping[bytes, Any]  # the user-state table: user id -> PackedUserState
    latest_lists: Mapping[bytes, Any]  # user id -> the last Recommendation published, as a dict
    events_topic: Any  # faust topic of `events` (raw bytes)
    validator: EventValidator
    recent_events: deque[Event]  # the latest events learned here, newest last
    restore: Callable[[str, Any], UserState | None]  # (user id, table value) -> UserState (None: none/unreadable)
    owner_table: str  # the table whose partitions decide which worker owns a user
    joined: bool = False  # the consumer group was joined and the tables recovered, once
    _metadata_known: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        """This worker's canonical URL (what the other workers route to)."""
        return str(self.app.conf.canonical_url)

    # --- users ---------------------------------------------------------------------------
    def recommendations(self, user_id: str) -> dict[str, Any]:
        """The user's latest list by the contract's order rule (`Recommendation.order_key`: the
        table keeps a list only if it is newer than the one held); for a user without one,
        computed now by the core (trending for a user never seen), with the order key of the
        state it reflects."""
        key = user_id.encode()
        stored = self.latest_lists.get(key)
        if stored is not None:
            latest = Recommendation.model_validate(stored)
            source = "latest"
        else:
            state = self.restore(user_id, self.user_states.get(key))
            source = "trending" if state is None or state.is_cold else "computed"
            state = state or UserState(user_id, max_history=self.settings.history_length)
            ranked = self.pipeline.recommender.recommend([state])[0]
            now = time.time()
            last = state.recent[-1] if state.recent else None
            latest = Recommendation(
                user_id=user_id,
                items=ranked.items,
                model_version=ranked.model_version,
                trigger_event_id=state.last_event_id or "",
                generated_at=now,
                latency_ms=0.0,
                # the order key of the state it reflects: a list published later for the same
                # events has the same key, one for a newer event a greater one
                list_id=Recommendation.make_list_id(user_id, last.event_id) if last else None,
                sequence=state.n_events,
                trigger_ts=last.ts if last else None,
            )
        titles = self._titles([item.item_id for item in latest.items])
        body = latest.model_dump(exclude_none=True)
        for item in body["items"]:
            item["title"] = titles.get(item["item_id"])
        return {**body, "source": source, "served_by": self.url}

    def user(self, user_id: str) -> dict[str, Any]:
        """The user's state as this worker holds it: recent items (newest first) and counts."""
        state = self.restore(user_id, self.user_states.get(user_id.encode()))
        if state is None:
            return {"user_id": user_id, "known": False, "n_events": 0, "recent": [], "served_by": self.url}
        recent = list(reversed(state.recent))
        titles = self._titles([interaction.item_id for interaction in recent])
        return {
            "user_id": user_id,
            "known": True,
            "n_events": state.n_events,
            "counts": state.counts,
            "last_ts": state.last_ts,
            "recent": [
                {
                    "item_id": interaction.item_id,
                    "title": titles.get(interaction.item_id),
                    "type": interaction.type,
                    "ts": interaction.ts,
                    "event_id": interaction.event_id,
                }
                for interaction in recent
            ],
            "served_by": self.url,
        }

    # --- items and events ---------------------------------------------------------------
    def similar(self, item_id: str, limit: int) -> dict[str, Any]:
        index = self.pipeline.index
        item = index.get([item_id]).get(item_id)
        if item is None:
            raise ApiError(404, "unknown_item", f"item {item_id!r} is not in the catalogue")
        hits = index.similar([item_id], limit=limit)[0]  # the neighbour list a worker keeps
        bare = [hit.item_id for hit in hits if hit.item is None]
        titles = {i: found.title for i, found in index.get(bare).items()} if bare else {}
        return {
            "item_id": item_id,
            "title": item.title,
            "similar": [
                {
                    "item_id": hit.item_id,
                    "title": hit.item.title if hit.item is not None else titles.get(hit.item_id),
                    "score": round(hit.score, 6),
                }
                for hit in hits
            ],
        }

    def latest_events(self, limit: int) -> dict[str, Any]:
        events = list(self.recent_events)[-limit:][::-1]  # newest first
        titles = self._titles([event.item_id for event in events])
        return {
            "events": [
                {**event.model_dump(exclude_none=True), "title": titles.get(event.item_id)}
                for event in events
            ],
            "served_by": self.url,
        }

    async def produce(self, events: Sequence[Event]) -> None:
        """Send events to `events` (keyed by user id, like the SDK) and wait for the acks."""
        pending = [
            await self.events_topic.send(key=event.user_id.encode(), value=event.to_bytes())
            for event in events
        ]
        await asyncio.gather(*pending)

    def _titles(self, item_ids: Sequence[str]) -> dict[str, str]:
        wanted = sorted(set(item_ids))
        return {i: item.title for i, item in self.pipeline.index.get(wanted).items()} if wanted else {}

    # --- readiness ----------------------------------------------------------------------
    async def readiness(self) -> dict[str, Any]:
        """Each check with a detail; `ready` only when all pass."""
        checks = {
            "broker": await self._check_broker(),
            "consumer_group": self._check_group(),
            "index": self._check_index(),
            "model": self._check_model(),
        }
        missing = [name for name, check in checks.items() if not check["ok"]]
        return {"ready": not missing, "missing": missing, "checks": checks, "served_by": self.url}

    async def _check_broker(self) -> dict[str, Any]:
        try:
            client = self._kafka_producer().client
            cluster = await asyncio.wait_for(client.fetch_all_metadata(), BROKER_PROBE_TIMEOUT_S)
            return {"ok": True, "detail": f"{len(cluster.brokers())} broker(s) answered"}
        except Exception as exc:  # not started, unreachable, timed out: all mean "not ready"
            return {"ok": False, "detail": f"no metadata from {self.settings.broker}: {exc!r}"}

    def _check_group(self) -> dict[str, Any]:
        if not self.joined:
            return {"ok": False, "detail": "consumer group not joined (or tables not recovered) yet"}
        # The partitions of events.by-user a worker owns are those of the tables (co-partitioned),
        # and, with one hop, of events too; with two hops events may be partitioned otherwise.
        assigned = sorted(
            tp.partition
            for tp in self.app.consumer.assignment()
            if tp.topic == self.settings.topics.events_by_user
        )
        rebalancing = bool(getattr(self.app, "rebalancing", False))
        detail = f"owns {len(assigned)} partition(s) of {self.settings.topics.events_by_user}"
        return {
            "ok": True,
            "detail": detail + ("; rebalancing" if rebalancing else ""),
            "partitions": assigned,
            "rebalancing": rebalancing,
        }

    def _check_index(self) -> dict[str, Any]:
        """Ready while the index answers, and while it is away (the worker serves trending
        lists then: degraded, not down); not ready when it answers with an error."""
        health = self.pipeline.recommender.index_health
        if health.available:
            try:
                return {"ok": True, "detail": f"{self.pipeline.index.count()} items"}
            except IndexUnavailableError as exc:
                health.failed(exc)
            except Exception as exc:
                return {"ok": False, "detail": f"item index unusable: {exc!r}"}
        return {
            "ok": True,
            "degraded": True,
            "detail": f"item index unavailable, serving trending lists: {health.last_error}",
        }

    def _check_model(self) -> dict[str, Any]:
        scorer = self.pipeline.recommender.scorer
        if scorer is None or not scorer.version:
            return {"ok": False, "detail": "no scorer loaded"}
        return {"ok": True, "detail": scorer.version}

    # --- routing -----------------------------------------------------------------------
    def _kafka_producer(self) -> Any:
        # Faust's aiokafka driver keeps the AIOKafkaProducer behind `_ensure_producer()`.
        return self.app.producer._ensure_producer()

    async def owner_of(self, table_name: str, key: bytes) -> str | None:
        """The URL of the worker that owns `key`'s partition; None when it is this one."""
        topic = self.app.tables[table_name].changelog_topic.get_topic_name()
        if topic not in self._metadata_known:  # Faust's router hashes with the producer's metadata
            await asyncio.wait_for(self._kafka_producer().partitions_for(topic), FORWARD_TIMEOUT_S)
            self._metadata_known.add(topic)
        try:
            owner = self.app.router.key_store(table_name, key)
        except KeyError:
            raise ApiError(503, "not_assigned", "the user's partition has no owner yet (rebalancing)",
                           retry_after_s=1) from None
        here = self.app.conf.canonical_url
        if (owner.host, owner.port) == (here.host, here.port):
            return None
        return str(owner)
