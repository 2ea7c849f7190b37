"""The worker's HTTP API and live page: Faust web views, thin adapters over the core.

Every answer is JSON; every refusal is a 4xx `{"error": <readable>, "reason": <machine>}`.
`docs/openapi.yaml` describes the routes (a test checks it names exactly those registered):

=====  ==================================  ===============================================
GET    /                                   the live page (`consumers/live/index.html`)
GET    /users/{user_id}/recommendations    the user's latest list (trending for a new user)
GET    /users/{user_id}                    the user's state: recent items, counts
GET    /items/{item_id}/similar            an item's nearest neighbours in the text index
GET    /events/recent                      the latest events this worker learned from
POST   /events                             one event or a JSON array of them -> `events`
GET    /readyz                             broker, consumer group, index and model ready?
=====  ==================================  ===============================================

(`/healthz` and `/metrics` are registered with the agents.) A user's state lives in the
partition that owns their id, so the `/users/...` routes are answered by the worker that
holds that partition: another worker forwards the request there (Faust's router, one hop).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, ClassVar

import aiohttp
import faust
from faust.web import Request, Response, View

from streamrec.models.core.pipeline import Pipeline
from streamrec.models.core.state import UserState
from streamrec.models.index.protocol import IndexUnavailableError
from streamrec.stream.messages import Event, Recommendation
from streamrec.stream.settings import Settings
from streamrec.stream.validation import EventValidator, Rejection

log = logging.getLogger(__name__)

ROUTED_HEADER = "X-Streamrec-Routed"  # set on a forwarded request: answer it, never forward again
FORWARD_TIMEOUT_S = 5.0  # a forwarded request gives up after this long
BROKER_PROBE_TIMEOUT_S = 2.0  # /readyz: a metadata request must answer within this
RECENT_EVENTS_DEFAULT, RECENT_EVENTS_MAX = 20, 200  # GET /events/recent?limit=
SIMILAR_DEFAULT, SIMILAR_MAX = 10, 100  # GET /items/{id}/similar?limit=
MAX_ID_CHARS = 256  # as in the contract (stream/messages.py)
JSON_TYPES = ("application/json", "")  # POST /events content types (none given: JSON assumed)
LIVE_PAGE = "live/index.html"  # package data of streamrec.consumers.worker


class ApiError(Exception):
    """A refusal: HTTP status, machine-readable reason, readable detail (and extra fields)."""

    def __init__(self, status: int, reason: str, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.status, self.reason, self.error, self.extra = status, reason, error, extra

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "reason": self.reason, **self.extra}


# --- POST /events: the body -> events, validated exactly like the topic's messages ------
def parse_event_body(
    body: bytes, validator: EventValidator, now: float, max_events: int
) -> list[Event]:
    """One JSON event object, or a JSON array of them, into `Event`s; ApiError otherwise.

    All or nothing: one invalid event refuses the whole body (422, each problem listed with
    its index and the reason the ingest agent would dead-letter it with).

    >>> v = EventValidator(max_bytes=1024, min_ts=0.0, max_future_skew_s=60.0)
    >>> one = b'{"event_id": "e1", "user_id": "u", "item_id": "i", "type": "view", "ts": 100}'
    >>> [e.event_id for e in parse_event_body(b"[" + one + b"]", v, now=120.0, max_events=10)]
    ['e1']
    >>> try:
    ...     parse_event_body(one.replace(b"view", b"like"), v, now=120.0, max_events=10)
    ... except ApiError as refused:
    ...     refused.status, refused.reason, refused.extra["problems"][0]["reason"]
    (422, 'invalid_events', 'unknown_type')
    """
    stripped = body.lstrip()
    if not stripped.startswith(b"["):
        raws = [body]  # one event: the very bytes a Kafka producer would have sent
    else:
        try:
            elements = json.loads(stripped, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise ApiError(400, "invalid_json", "body is nested too deeply to parse") from None
        if not elements:
            raise ApiError(400, "empty", "the array holds no events")
        if len(elements) > max_events:
            raise ApiError(
                413, "too_many_events", f"{len(elements)} events > limit of {max_events} per request"
            )
        raws = [json.dumps(element, separators=(",", ":")).encode() for element in elements]
    events: list[Event] = []
    problems: list[dict[str, Any]] = []
    for index, raw in enumerate(raws):
        parsed = validator.parse(raw, now)
        if isinstance(parsed, Rejection):
            problems.append({"index": index, "reason": parsed.reason, "error": parsed.error})
        else:
            events.append(parsed)
    if problems:
        if len(raws) == 1 and problems[0]["reason"] in ("invalid_json", "empty", "oversized"):
            status = 413 if problems[0]["reason"] == "oversized" else 400
            raise ApiError(status, problems[0]["reason"], problems[0]["error"])
        raise ApiError(
            422, "invalid_events", f"{len(problems)} of {len(raws)} events are invalid", problems=problems
        )
    return events


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


# --- what the views read and write ----------------------------------------------------
@dataclass
class WorkerApi:
    """The worker's parts the HTTP API answers from: its tables, pipeline and `events` topic.

    Answers are plain dicts; the core (`models/`) makes every list, the API only reads it.
    """

    app: faust.App
    settings: Settings
    pipeline: Pipeline
    user_states: Mapping[bytes, Any]  # the user-state table: user id -> UserState.to_dict()
    latest_lists: Mapping[bytes, Any]  # user id -> the last Recommendation published, as a dict
    events_topic: Any  # faust topic of `events` (raw bytes)
    validator: EventValidator
    recent_events: deque[Event]  # the latest events learned here, newest last
    restore: Callable[[Any], UserState | None]  # table value -> UserState (None: none/unreadable)
    owner_table: str  # the table whose partitions decide which worker owns a user
    joined: bool = False  # the consumer group was joined and the tables recovered, once
    _metadata_known: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        """This worker's canonical URL (what the other workers route to)."""
        return str(self.app.conf.canonical_url)

    # --- users ---------------------------------------------------------------------------
    def recommendations(self, user_id: str) -> dict[str, Any]:
        """The list last published for the user; for a user without one, computed now by the
        core (trending for a user never seen)."""
        key = user_id.encode()
        stored = self.latest_lists.get(key)
        if stored is not None:
            latest = Recommendation.model_validate(stored)
            source = "latest"
        else:
            state = self.restore(self.user_states.get(key))
            source = "trending" if state is None or state.is_cold else "computed"
            state = state or UserState(user_id, max_history=self.settings.history_length)
            ranked = self.pipeline.recommender.recommend([state])[0]
            now = time.time()
            latest = Recommendation(
                user_id=user_id,
                items=ranked.items,
                model_version=ranked.model_version,
                trigger_event_id=state.last_event_id or "",
                generated_at=now,
                latency_ms=0.0,
            )
        titles = self._titles([item.item_id for item in latest.items])
        body = latest.model_dump(exclude_none=True)
        for item in body["items"]:
            item["title"] = titles.get(item["item_id"])
        return {**body, "source": source, "served_by": self.url}

    def user(self, user_id: str) -> dict[str, Any]:
        """The user's state as this worker holds it: recent items (newest first) and counts."""
        state = self.restore(self.user_states.get(user_id.encode()))
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


# --- the views ------------------------------------------------------------------------
class ApiView(View):
    """A view of the API: auth, JSON errors, forwarding a user's request to its owner."""

    api: ClassVar[WorkerApi]  # set on the subclass `register_views` makes per app
    public: ClassVar[bool] = False  # True: no token needed (probes, the page itself)

    async def dispatch(self, request: Any) -> Any:
        try:
            self._authorize(request)
            return await super().dispatch(request)
        except ApiError as refused:
            return self.json(refused.body(), status=refused.status)
        except IndexUnavailableError as exc:  # a Qdrant server away: try again later
            refused = ApiError(503, "index_unavailable", str(exc), retry_after_s=5)
            return self.json(refused.body(), status=refused.status)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return self.json({"error": "internal error (see the worker's log)", "reason": "internal"}, status=500)

    def _authorize(self, request: Request) -> None:
        token = self.api.settings.http_token
        if token is None or self.public:
            return
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(401, "unauthorized", "this API needs `Authorization: Bearer <STREAMREC_HTTP_TOKEN>`")

    async def forwarded(self, request: Request, user_id: str) -> Response | None:
        """The owner's answer when another worker owns the user's partition, else None."""
        _check_id(user_id, "user_id")
        if request.headers.get(ROUTED_HEADER):
            return None  # the sender thinks this worker owns it: answer, never bounce
        owner = await self.api.owner_of(self.api.owner_table, user_id.encode())
        if owner is None:
            return None
        headers = {ROUTED_HEADER: self.api.url}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        target = owner.rstrip("/") + str(request.rel_url)
        try:
            async with self.app.http_client.get(
                target, headers=headers, timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)
            ) as response:
                body = await response.read()
                return self.bytes(body, content_type=response.content_type, status=response.status)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ApiError(503, "owner_unreachable", f"the owner {owner} did not answer: {exc!r}",
                           retry_after_s=1) from None


class LivePage(ApiView):
    public = True

    async def get(self, request: Request) -> Response:
        page = resources.files("streamrec.consumers.worker").joinpath(LIVE_PAGE).read_text()
        return self.html(page)


class UserRecommendationsView(ApiView):
    async def get(self, request: Request, user_id: str) -> Response:
        return await self.forwarded(request, user_id) or self.json(self.api.recommendations(user_id))


class UserView(ApiView):
    async def get(self, request: Request, user_id: str) -> Response:
        return await self.forwarded(request, user_id) or self.json(self.api.user(user_id))


class SimilarItemsView(ApiView):
    async def get(self, request: Request, item_id: str) -> Response:
        _check_id(item_id, "item_id")
        limit = _limit(request, "limit", SIMILAR_DEFAULT, SIMILAR_MAX)
        return self.json(self.api.similar(item_id, limit))


class EventsView(ApiView):
    async def post(self, request: Request) -> Response:
        api = self.api
        content_type = request.content_type if request.headers.get("Content-Type") else ""
        if content_type not in JSON_TYPES:
            raise ApiError(415, "unsupported_media_type", f"send application/json, not {content_type}")
        body = await _read_body(request, api.settings.http_max_body_bytes)
        events = parse_event_body(body, api.validator, time.time(), api.settings.http_max_batch_events)
        await api.produce(events)
        return self.json({"accepted": len(events), "event_ids": [e.event_id for e in events]}, status=202)


class RecentEventsView(ApiView):
    async def get(self, request: Request) -> Response:
        limit = _limit(request, "limit", RECENT_EVENTS_DEFAULT, RECENT_EVENTS_MAX)
        return self.json(self.api.latest_events(limit))


class ReadyView(ApiView):
    public = True

    async def get(self, request: Request) -> Response:
        report = await self.api.readiness()
        return self.json(report, status=200 if report["ready"] else 503)


#: path -> view: every route of the API (GET /healthz and /metrics: consumers/agents.py).
ROUTES: dict[str, type[ApiView]] = {
    "/": LivePage,
    "/users/{user_id}/recommendations": UserRecommendationsView,
    "/users/{user_id}": UserView,
    "/items/{item_id}/similar": SimilarItemsView,
    "/events": EventsView,
    "/events/recent": RecentEventsView,
    "/readyz": ReadyView,
}


def register_views(app: faust.App, api: WorkerApi) -> None:
    """Serve `ROUTES` on the worker's web server, bound to this worker's parts."""

    async def on_rebalance_complete(sender: Any, **kwargs: Any) -> None:
        api.joined = True

    app.on_rebalance_complete.connect(on_rebalance_complete)
    for path, view in ROUTES.items():
        bound = type(view.__name__, (view,), {"api": api})
        app.page(path, name=view.__name__)(bound)


# --- request helpers ------------------------------------------------------------------
async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (declared or streamed)."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "oversized", f"{request.content_length} bytes > limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "oversized", f"body > limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise ApiError(400, "empty", "the body is empty: send one JSON event or an array of them")
    return body


def _limit(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"{name} must be an integer, got {raw!r}") from None
    if not 1 <= value <= maximum:
        raise ApiError(400, "bad_parameter", f"{name} must be between 1 and {maximum}, got {value}")
    return value


def _check_id(value: str, name: str) -> None:
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise ApiError(400, "bad_parameter", f"{name} must be 1 to {MAX_ID_CHARS} characters")
