"""The worker's HTTP API and live page: Faust web views, thin adapters over `WorkerApi`.

Every answer is JSON; every refusal is a 4xx `{"error": <readable>, "reason": <machine>}`.
`docs/openapi.yaml` describes the routes (a test checks it names exactly those registered):

=====  ==================================  ===============================================
GET    /                                   the live page (`consumers/worker/live/index.html`)
GET    /users/{user_id}/recommendations    the user's latest list (trending for a new user)
GET    /users/{user_id}                    the user's state: recent items, counts
GET    /items/{item_id}/similar            an item's nearest neighbours in the text index
GET    /events/recent                      the latest events this worker learned from
POST   /events                             one event or a JSON array of them -> `events`
GET    /readyz                             broker, consumer group, index and model ready?
GET    /healthz                            the process answers: serving model and canary
GET    /metrics                            Prometheus exposition (no token needed)
=====  ==================================  ===============================================

A user's state lives in the partition that owns their id, so the `/users/...` routes are
answered by the worker that holds that partition: another worker forwards the request there
(Faust's router, one hop). What the answers hold is `api.py`'s business; here: auth, JSON
errors, forwarding, reading requests.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from importlib import resources
from typing import Any, ClassVar

import aiohttp
from faust.web import Request, Response, View

from streamrec.consumers.worker.api import FORWARD_TIMEOUT_S, ApiError, WorkerApi
from streamrec.consumers.worker.context import USER_STATE_TABLE, WorkerContext
from streamrec.consumers.worker.metrics import CONTENT_TYPE
from streamrec.models.index.protocol import IndexUnavailableError
from streamrec.stream.messages import Event
from streamrec.stream.validation import EventValidator, Rejection

log = logging.getLogger(__name__)

ROUTED_HEADER = "X-Streamrec-Routed"  # set on a forwarded request: answer it, never forward again
RECENT_EVENTS_DEFAULT, RECENT_EVENTS_MAX = 20, 200  # GET /events/recent?limit=
SIMILAR_DEFAULT, SIMILAR_MAX = 10, 100  # GET /items/{id}/similar?limit=
MAX_ID_CHARS = 256  # as in the contract (stream/messages.py)
JSON_TYPES = ("application/json", "")  # POST /events content types (none given: JSON assumed)
LIVE_PAGE = "live/index.html"  # package data of streamrec.consumers.worker
PRIVATE_DETAIL = "details with the token"  # /readyz without the token


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
        if not self.public and not self._token_given(request):
            raise ApiError(401, "unauthorized", "this API needs `Authorization: Bearer <STREAMREC_HTTP_TOKEN>`")

    def _token_given(self, request: Request) -> bool:
        """The request carries the API's token (or the API has none)."""
        token = self.api.settings.http_token
        if token is None:
            return True
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token.get_secret_value()}".encode())

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
        if not self._token_given(request):
            report = public_readiness(report)
        return self.json(report, status=200 if report["ready"] else 503)


def public_readiness(report: dict[str, Any]) -> dict[str, Any]:
    """`/readyz` as shown without the token: what is ready or not, never why (a failing
    check's detail names the broker's address and carries exception text).

    >>> public_readiness({"ready": False, "missing": ["broker"], "served_by": "http://w1:6066",
    ...                   "checks": {"broker": {"ok": False, "detail": "no metadata from kafka://10.0.0.7:9092: ..."}}})
    {'ready': False, 'missing': ['broker'], 'served_by': 'http://w1:6066', 'checks': {'broker': {'ok': False, 'detail': 'details with the token'}}}
    """
    checks = {}
    for name, check in report["checks"].items():
        failing = not check["ok"] or check.get("degraded")
        checks[name] = {**check, "detail": PRIVATE_DETAIL} if failing else check
    return {**report, "checks": checks}


#: path -> view: every route of the API (GET /healthz and /metrics: `register_probes`).
ROUTES: dict[str, type[ApiView]] = {
    "/": LivePage,
    "/users/{user_id}/recommendations": UserRecommendationsView,
    "/users/{user_id}": UserView,
    "/items/{item_id}/similar": SimilarItemsView,
    "/events": EventsView,
    "/events/recent": RecentEventsView,
    "/readyz": ReadyView,
}


def register_views(context: WorkerContext) -> None:
    """Serve the probes and `ROUTES` on the worker's web server, bound to this worker's parts."""
    app = context.app
    register_probes(context)
    api = WorkerApi(
        app=app,
        settings=context.settings,
        pipeline=context.pipeline,
        user_states=context.user_states,
        latest_lists=context.latest_lists,
        events_topic=context.topics.events,
        validator=context.ingest.validator,
        recent_events=context.recent_events,
        restore=context.restore,
        owner_table=USER_STATE_TABLE,
    )

    async def on_rebalance_complete(sender: Any, **kwargs: Any) -> None:
        api.joined = True

    app.on_rebalance_complete.connect(on_rebalance_complete)
    for path, view in ROUTES.items():
        bound = type(view.__name__, (view,), {"api": api})
        app.page(path, name=view.__name__)(bound)


def register_probes(context: WorkerContext) -> None:
    """GET /metrics and /healthz: plain Faust views, no token, no JSON error handling."""
    metrics, recommender = context.metrics, context.pipeline.recommender

    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(metrics.exposition(), content_type=CONTENT_TYPE)

    class HealthView(View):
        async def get(self, request: Request) -> Response:
            canary = recommender.canary
            return self.json(
                {
                    "status": "ok",
                    "model_version": recommender.model_version,
                    "canary_version": canary.scorer.version if canary is not None else None,
                }
            )

    context.app.page("/metrics")(MetricsView)
    context.app.page("/healthz")(HealthView)


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
