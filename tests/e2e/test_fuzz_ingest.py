"""Fuzzed input through a real Tansu broker and a real worker process.

A few hundred inputs drawn with the hypothesis strategies of `tests/support/fuzz_inputs.py` (random
bytes, truncated and huge JSON, wrong types, NaN/inf, absurd timestamps, unicode edge cases,
empty ids, unknown types, deep nesting, valid events for unknown items), plus re-sent
duplicates, go to `events` through a plain aiokafka producer. The books must close:
inputs = accepted + dead_letter + duplicate on the worker's /metrics, every dead letter
carries a documented reason and the bytes that were sent, every accepted event's user gets
a list, and the worker is still up and healthy afterwards.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict

import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from streamrec.stream.messages import DeadLetter, Event, Item
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics
from streamrec.stream.validation import REASONS, EventValidator, Rejection
from tests.support.events import MAX_MESSAGE_BYTES
from tests.support.fuzz_inputs import Fuzzed, ids, inputs
from tests.support.metrics import metric_sum, scrape
from tests.support.topics import TopicCollector
from tests.support.waiting import wait_until
from tests.support.workers import Worker

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

FUZZED_INPUTS = 300  # hypothesis examples drawn (deterministically: derandomize=True)
CATALOGUE = [f"fuzz-item-{n}" for n in range(8)]
WORKER_READY_S = 120.0  # model load and group join on a loaded 2-core machine
SETTLE_S = 30.0  # then a few hundred inputs through ingest and recommend


def draw_corpus(now: float) -> list[Fuzzed]:
    """The examples hypothesis generates for `inputs`, in order; the same ones every run."""
    drawn: list[Fuzzed] = []

    @settings(max_examples=FUZZED_INPUTS, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(inputs(now, MAX_MESSAGE_BYTES, item_ids=st.sampled_from(CATALOGUE) | ids()))
    def collect(fuzzed: Fuzzed) -> None:
        drawn.append(fuzzed)

    collect()
    return drawn


def with_extras(corpus: list[Fuzzed], validator: EventValidator, now: float) -> list[bytes]:
    """The corpus; valid events with unique ids, for known and unknown items, by users with
    edge-case ids (hypothesis' own valid events share ids like "0" a lot); then every 5th
    valid input again (same bytes) and every 7th with its event id but another item (a
    retried event whose producer changed its mind)."""
    users = ["u-1", "ü-2", "用户-3", "u\u200b4", "u\x00 5", "🙂", "u" * 256]
    unique = [
        Event(event_id=f"fuzz-unique-{n}", user_id=users[n % len(users)],
              item_id=CATALOGUE[n % len(CATALOGUE)] if n % 2 else f"unknown-item-{n}",
              type=("view", "click", "purchase")[n % 3], ts=now - n).to_bytes()
        for n in range(60)
    ]
    raws = [f.raw for f in corpus] + unique
    valid = [raw for raw in raws if isinstance(validator.parse(raw, now), Event)]
    again = valid[::5]
    changed = [validator.parse(raw, now).model_copy(update={"item_id": CATALOGUE[0]}).to_bytes()  # type: ignore[union-attr]
               for raw in valid[::7]]
    return raws + again + changed


async def test_fuzzed_input_is_accounted_for_and_the_worker_survives(e2e_settings: Settings, worker: Worker) -> None:
    settings = e2e_settings  # the `worker` fixture's (tests/e2e/conftest.py): max_message_bytes MAX_MESSAGE_BYTES
    now = time.time()
    validator = EventValidator(settings.max_message_bytes, settings.min_event_ts, settings.max_future_skew_s)
    corpus = draw_corpus(now)
    sent = with_extras(corpus, validator, now)
    kinds = Counter(f.kind for f in corpus)
    assert len(corpus) >= FUZZED_INPUTS * 0.9 and len(kinds) >= 20, kinds

    # What the contract says must happen to each input (valid ts <= now; absurd ones by days).
    verdicts = [validator.parse(raw, time.time()) for raw in sent]
    rejected = Counter(raw for raw, v in zip(sent, verdicts) if isinstance(v, Rejection))
    reason_of = {raw: v.reason for raw, v in zip(sent, verdicts) if isinstance(v, Rejection)}
    valid = [v for v in verdicts if isinstance(v, Event)]
    users_by_id: dict[str, set[str]] = defaultdict(set)
    for event in valid:
        users_by_id[event.event_id].add(event.user_id)
    accepted, duplicates = len(users_by_id), len(valid) - len(users_by_id)
    assert accepted >= 50 and duplicates >= 20 and sum(rejected.values()) >= 100, (accepted, duplicates, rejected.total())
    assert {r for r in reason_of.values()} >= set(REASONS), "the corpus exercises every DLQ reason"

    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        async with TopicCollector(settings, settings.topics.recommendations) as recs, \
                TopicCollector(settings, settings.topics.dlq) as dlq:
            for n, item_id in enumerate(CATALOGUE):
                item = Item(item_id=item_id, text=f"fuzz catalogue item {n}", attributes={"title": f"Item {n}"}, ts=now)
                await producer.send(settings.topics.items, item.to_bytes(), key=item_id.encode())
            deliveries = []
            for raw, verdict in zip(sent, verdicts):
                key = verdict.user_id.encode() if isinstance(verdict, Event) else None
                deliveries.append(await producer.send(settings.topics.events, raw, key=key))
            for delivery in deliveries:
                await delivery  # every input is on the broker
            started = time.monotonic()

            def books_closed() -> bool:
                worker.alive()
                metrics = scrape(settings.metrics_port)
                counted = metric_sum(metrics, "streamrec_events_total{")
                served = {json.loads(v)["user_id"] for v in recs.values}
                return (counted >= len(sent) and len(dlq.values) >= rejected.total()
                        and all(users & served for users in users_by_id.values()))

            try:
                await wait_until(books_closed, WORKER_READY_S + SETTLE_S, "every fuzzed input to be accounted for")
            except AssertionError:
                metrics = scrape(settings.metrics_port)
                raise AssertionError(
                    f"events_total {({k: v for k, v in metrics.items() if k.startswith('streamrec_events_total{')})}, "
                    f"{len(dlq.values)} of {rejected.total()} dead letters, {len(recs.values)} lists"
                ) from None
            settle_s = time.monotonic() - started
    finally:
        await producer.stop()

    metrics = scrape(settings.metrics_port)
    outcome = {name: metric_sum(metrics, "streamrec_events_total{", f'outcome="{name}"')
               for name in ("accepted", "dead_letter", "duplicate")}
    assert outcome == {"accepted": accepted, "dead_letter": rejected.total(), "duplicate": duplicates}, outcome
    assert sum(outcome.values()) == len(sent)

    letters = [DeadLetter.model_validate_json(v) for v in dlq.values]
    assert Counter(letter.raw_bytes() for letter in letters) == rejected, "each refused input once, bytes intact"
    for letter in letters:
        assert letter.reason in REASONS and letter.error and letter.topic == settings.topics.events
        assert letter.reason == reason_of[letter.raw_bytes()], (letter.raw[:80], letter.reason, letter.error)
    by_reason = Counter(letter.reason for letter in letters)
    assert metric_sum(metrics, "streamrec_dead_letters_total{") == len(letters)

    served = {json.loads(v)["user_id"] for v in recs.values}
    assert served <= {event.user_id for event in valid}, "lists only for users of valid events"
    for event_id, users in users_by_id.items():
        assert users & served, f"no list for the user of accepted event {event_id!r}"

    assert worker.process.poll() is None, "the worker is still running"
    assert worker.get("/healthz")["status"] == "ok"
    assert metric_sum(metrics, "streamrec_agent_errors_total") == 0
    assert "Traceback" not in worker.log_path.read_text(errors="replace")
    print(f"\nfuzzed {len(sent)} inputs ({len(corpus)} drawn, {len(kinds)} kinds): accepted {accepted}, "
          f"dead-lettered {rejected.total()} {dict(by_reason)}, duplicates {duplicates}; "
          f"settled {settle_s:.1f} s after the last send")
