"""End to end: the HTTP API, the live page and scale-out on two real workers of one app.

One real Tansu broker, two real worker processes sharing the partitions of one consumer
group (same app id, own ports and data dirs) with a Bearer token set. The tests run in file
order against the same pair; the last one stops a worker and checks the handover.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from streamrec.models.data.synthetic import SyntheticWorld
from streamrec.stream.broker import DevBroker, free_port
from streamrec.stream.messages import Event, Item
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics
from tests.support.events import assert_recent_items
from tests.support.metrics import metric_sum, scrape
from tests.support.waiting import wait_for
from tests.support.workers import Worker, start_worker

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TOKEN = "s3cret-token"
READY_S = 240.0  # two workers starting at once on two cores: model load, group join, catalogue
SERVE_S = 90.0
HANDOVER_S = 120.0
SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml").read_text())
REGISTRY = Registry().with_resource("urn:openapi", Resource.from_contents(SPEC, default_specification=DRAFT202012))


def conforms(body: Any, schema: str) -> None:
    """`body` matches the OpenAPI description's component schema."""
    Draft202012Validator({"$ref": f"urn:openapi#/components/schemas/{schema}"}, registry=REGISTRY).validate(body)


@dataclass
class Cluster:
    a: Worker
    b: Worker
    world: SyntheticWorld
    items: list[Item]
    history: dict[str, list[Event]] = field(default_factory=lambda: defaultdict(list))

    def send(self, events: list[Event]) -> None:
        async def produce() -> None:
            async with EventProducer(self.a.settings) as producer:
                await producer.send_events(events)

        asyncio.run(produce())
        for event in events:
            self.history[event.user_id].append(event)

    def lists_triggered_by(self, worker: Worker, wanted: dict[str, str]) -> dict[str, dict] | None:
        """Every user's list from `worker`'s API, once each is the one `wanted[user]` caused."""
        lists = {user: worker.call(f"/users/{user}/recommendations")[1] for user in wanted}
        done = all(lists[user].get("trigger_event_id") == event_id for user, event_id in wanted.items())
        return lists if done else None


@pytest.fixture(scope="module")
def cluster(broker: DevBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("http-api")
    tag = uuid.uuid4().hex[:8]
    base = Settings(broker=broker.url, app_id=f"http-{tag}", topic_prefix=f"h{tag}.", partitions=4,
                    fetch_max_wait_ms=10, k=5)
    asyncio.run(ensure_topics(base))
    a = start_worker(base.model_copy(update={"data_dir": tmp / "a", "metrics_port": free_port()}), tmp / "a.log", token=TOKEN)
    b = start_worker(base.model_copy(update={"data_dir": tmp / "b", "metrics_port": free_port()}), tmp / "b.log", token=TOKEN)
    world = SyntheticWorld(seed=23, n_items=60, n_users=24, n_categories=4)
    items = world.items(ts=time.time())
    cluster = Cluster(a=a, b=b, world=world, items=items)
    try:
        async def catalogue() -> None:
            async with EventProducer(base) as producer:
                for item in items:
                    await producer.send_item(item)

        asyncio.run(catalogue())

        def both_ready() -> bool:
            ready = all(w.alive() and w.readiness().get("ready") for w in (a, b))
            indexed = all(w.items_indexed() >= len(items) for w in (a, b))
            shared = ready and sorted(a.owned() + b.owned()) == [0, 1, 2, 3] and a.owned() and b.owned()
            return bool(indexed and shared)

        started = time.monotonic()
        wait_for(both_ready, READY_S, "both workers ready, sharing the 4 partitions, catalogue indexed")
        print(f"two workers ready and sharing partitions after {time.monotonic() - started:.1f}s")

        now = time.time()
        events = [e.model_copy(update={"ts": now + n * 0.001}) for n, e in enumerate(world.events(120, start_ts=now))]
        cluster.send(events)
        last = {user: history[-1].event_id for user, history in cluster.history.items()}
        wait_for(lambda: a.alive() and b.alive() and cluster.lists_triggered_by(a, last), SERVE_S,
                 "a list per user, through worker a's API")
        yield cluster
    finally:
        for worker in (a, b):
            if worker.process.poll() is None:
                os.killpg(worker.process.pid, signal.SIGKILL)
                worker.process.wait()


def test_lists_are_served_by_the_owner_of_the_users_partition(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    served_by: dict[str, set[str]] = defaultdict(set)
    for user, history in cluster.history.items():
        from_a, from_b = a.get(f"/users/{user}/recommendations"), b.get(f"/users/{user}/recommendations")
        assert from_a == from_b, "either worker answers with the owner's list"
        conforms(from_a, "UserRecommendations")
        served_by[from_a["served_by"]].add(user)
        assert from_a["source"] == "latest" and from_a["trigger_event_id"] == history[-1].event_id
        assert from_a["items"] and all(item["title"] and item["reason"] for item in from_a["items"])
        consumed = {e.item_id for e in history}
        assert not consumed & {item["item_id"] for item in from_a["items"]}, f"{user} got an item they consumed"

        state = a.get(f"/users/{user}")
        conforms(state, "User")
        assert state["known"] and state["served_by"] == from_a["served_by"]
        assert_recent_items(state, history)
        assert all(r["title"] for r in state["recent"])
    assert set(served_by) == {a.url, b.url}, "both workers own users"
    for worker in (a, b):  # each produced the lists of its own users
        assert metric_sum(scrape(worker.settings.metrics_port), "streamrec_recommendations_total") >= len(served_by[worker.url])

    new_user = a.get(f"/users/never-seen-{uuid.uuid4().hex[:6]}/recommendations")
    conforms(new_user, "UserRecommendations")
    assert new_user["source"] == "trending" and new_user["items"]
    assert {item["reason"] for item in new_user["items"]} == {"trending"}
    assert a.get("/users/nobody")["known"] is False


def test_items_readiness_auth_and_bad_requests(cluster: Cluster) -> None:
    a = cluster.a
    item = cluster.items[0]
    similar = a.get(f"/items/{item.item_id}/similar?limit=3")
    conforms(similar, "SimilarItems")
    assert similar["title"] == item.attributes["title"]
    assert len(similar["similar"]) == 3 and item.item_id not in {s["item_id"] for s in similar["similar"]}
    scores = [s["score"] for s in similar["similar"]]
    assert scores == sorted(scores, reverse=True) and all(s["title"] for s in similar["similar"])

    for path, status, reason in [
        ("/items/no-such-item/similar", 404, "unknown_item"),
        (f"/items/{item.item_id}/similar?limit=0", 400, "bad_parameter"),
        (f"/items/{item.item_id}/similar?limit=ten", 400, "bad_parameter"),
        ("/events/recent?limit=100000", 400, "bad_parameter"),
        ("/users/" + "u" * 257, 400, "bad_parameter"),
    ]:
        got, body = a.call(path)
        assert (got, body["reason"]) == (status, reason), path
        conforms(body, "Error")

    status, body = a.call("/users/u0001/recommendations", token=None)
    assert (status, body["reason"]) == (401, "unauthorized")
    assert a.call("/items/x/similar", token="wrong")[0] == 401
    status, ready = a.call("/readyz", token=None)  # probes need no token
    assert status == 200 and ready["ready"] and ready["missing"] == []
    conforms(ready, "Readiness")
    assert set(ready["checks"]) == {"broker", "consumer_group", "index", "model"}
    assert a.call("/healthz", token=None)[0] == 200

    recent = a.get("/events/recent?limit=5")
    assert 0 < len(recent["events"]) <= 5
    stamps = [e["ts"] for e in recent["events"]]
    assert stamps == sorted(stamps, reverse=True) and all(e["title"] for e in recent["events"])


def test_post_events_validates_like_the_topic_and_takes_the_normal_path(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    users = sorted(cluster.history)[:3]
    now = time.time()
    single = Event(event_id=f"http-{uuid.uuid4().hex}", user_id=users[0], item_id=cluster.items[1].item_id,
                   type="purchase", ts=now)
    batch = [Event(event_id=f"http-{uuid.uuid4().hex}", user_id=user, item_id=cluster.items[2].item_id,
                   type="click", ts=now) for user in users[1:]]
    status, body = b.call("/events", single.to_bytes())
    assert (status, body) == (202, {"accepted": 1, "event_ids": [single.event_id]})
    payload = json.dumps([json.loads(e.to_bytes()) for e in batch]).encode()
    status, body = a.call("/events", payload)
    assert (status, body["accepted"]) == (202, 2)
    for event in [single, *batch]:
        cluster.history[event.user_id].append(event)
    wanted = {e.user_id: e.event_id for e in [single, *batch]}
    lists = wait_for(lambda: cluster.lists_triggered_by(a, wanted), SERVE_S, "lists caused by the POSTed events")
    for user, rec in lists.items():
        consumed = {e.item_id for e in cluster.history[user]}
        assert not consumed & {item["item_id"] for item in rec["items"]}

    # All or nothing: a batch with one bad event produces none of them.
    kept_out = Event(event_id=f"http-{uuid.uuid4().hex}", user_id=users[0], item_id=cluster.items[3].item_id,
                     type="view", ts=time.time())
    mixed = json.dumps([json.loads(kept_out.to_bytes()), {"event_id": "x", "user_id": users[0]}]).encode()
    status, body = a.call("/events", mixed)
    assert (status, body["reason"]) == (422, "invalid_events")
    assert [(p["index"], p["reason"]) for p in body["problems"]] == [(1, "schema")]
    for request, content_type, expected in [
        (b"{not json", "application/json", (400, "invalid_json")),
        (b"   ", "application/json", (400, "empty")),
        (single.to_bytes(), "text/plain", (415, "unsupported_media_type")),
        (b"[" + b" " * (1024 * 1024) + b"]", "application/json", (413, "oversized")),
        (json.dumps({**json.loads(single.to_bytes()), "type": "like"}).encode(), "application/json",
         (422, "invalid_events")),
    ]:
        status, body = a.call("/events", request, content_type=content_type)
        assert (status, body["reason"]) == expected, request[:40]
        conforms(body, "Error")
    sentinel = Event(event_id=f"http-{uuid.uuid4().hex}", user_id=users[0], item_id=cluster.items[4].item_id,
                     type="view", ts=time.time())
    assert a.call("/events", sentinel.to_bytes())[0] == 202
    cluster.history[users[0]].append(sentinel)
    wait_for(lambda: cluster.lists_triggered_by(a, {users[0]: sentinel.event_id}), SERVE_S, "the sentinel's list")
    state = a.get(f"/users/{users[0]}")  # the sentinel learned, kept_out not
    assert_recent_items(state, cluster.history[users[0]])
    assert state["n_events"] == len(cluster.history[users[0]])


def test_live_page_shows_a_users_recommendations(cluster: Cluster, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium not installed (Debian package chromium: `make chromium` installs it where apt and root are)")
    a = cluster.a
    user = sorted(cluster.history)[-1]
    expected = a.get(f"/users/{user}/recommendations")
    page = f"{a.url}/?user={user}#token={TOKEN}"
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--window-size=1280,900",
    ]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    rows = re.findall(r'<tr class="rec" data-item-id="([^"]+)"><td>\d+</td><td>([^<]*)</td>', dom)
    assert [item_id for item_id, _ in rows] == [item["item_id"] for item in expected["items"]], dom[-3000:]
    assert [title for _, title in rows] == [item["title"] for item in expected["items"]]
    assert all(item["reason"] in dom.replace("&amp;", "&") for item in expected["items"])
    assert f"model {expected['model_version']}" in dom
    assert dom.count('class="event"') >= 5 and dom.count('class="recent-item"') >= 1
    screenshot = tmp_path / "live.png"
    subprocess.run([chromium, *flags, f"--screenshot={screenshot}", page], capture_output=True, timeout=120)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000


def test_stopping_a_worker_hands_its_partitions_and_state_to_the_other(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    moved = [user for user in sorted(cluster.history) if a.get(f"/users/{user}")["served_by"] == b.url]
    assert moved, "worker b owns some users"
    before = {user: a.get(f"/users/{user}/recommendations") for user in moved}
    # Tansu reports a partition's end offset short (its last batch's base + 1); the handover
    # reads changelogs to their real end (streamrec.stream.offsets), so every user moved here,
    # the last record of each partition included, is checked exactly.
    os.killpg(b.process.pid, signal.SIGTERM)
    assert b.process.wait(timeout=60) == 0
    started = time.monotonic()
    wait_for(lambda: a.alive() and a.owned() == [0, 1, 2, 3], HANDOVER_S, "worker a to own every partition")
    print(f"worker a took over b's partitions {time.monotonic() - started:.1f}s after b stopped")

    for user in moved:  # b's table state was handed over: the same state and lists, now from a
        state = wait_for(lambda u=user: a.get(f"/users/{u}"), SERVE_S, f"{user}'s state")
        assert state["served_by"] == a.url
        assert_recent_items(state, cluster.history[user])
        latest = a.get(f"/users/{user}/recommendations")
        assert latest["served_by"] == a.url
        assert {k: v for k, v in latest.items() if k != "served_by"} == {
            k: v for k, v in before[user].items() if k != "served_by"}

    later = [Event(event_id=f"after-{uuid.uuid4().hex}", user_id=user, item_id=cluster.items[5].item_id,
                   type="click", ts=time.time()) for user in moved]
    status, _ = a.call("/events", json.dumps([json.loads(e.to_bytes()) for e in later]).encode())
    assert status == 202
    for event in later:
        cluster.history[event.user_id].append(event)
    lists = wait_for(lambda: cluster.lists_triggered_by(a, {e.user_id: e.event_id for e in later}), SERVE_S,
                     "worker a's lists for b's users")
    for user, rec in lists.items():  # built on the handed-over state: nothing consumed before
        consumed = {e.item_id for e in cluster.history[user]}
        assert rec["served_by"] == a.url and rec["items"]
        assert not consumed & {item["item_id"] for item in rec["items"]}, f"{user}'s state was lost"
    assert "Traceback" not in b.log_path.read_text(errors="replace")
