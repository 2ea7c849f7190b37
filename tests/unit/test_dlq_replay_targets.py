"""Where `streamrec dlq replay` sends each dead letter: back to `events`, except a valid event
the worker failed on (`processing_failed`), which goes to `events.by-user` whichever topic it
was read on (in one hop, `events`: sent back there, ingest would drop it as a duplicate)."""

from __future__ import annotations

import json

import pytest

from streamrec.consumers.cli.dlq_replay import PROCESSING_FAILED, Mark, ReplayFilter, plan_replay
from streamrec.consumers.worker import handlers
from streamrec.stream.messages import DeadLetter
from streamrec.stream.settings import Topics

TOPICS = Topics.with_prefix("p.")


def _letter(reason: str, topic: str, n: int) -> DeadLetter:
    raw = json.dumps({"event_id": f"e{n}", "user_id": f"u{n}", "item_id": "i1", "type": "view", "ts": 1.0})
    return DeadLetter(reason=reason, error="x", raw=raw, topic=topic, partition=0, offset=n, received_at=1.0)


def test_the_reason_is_the_workers() -> None:
    assert PROCESSING_FAILED == handlers.PROCESSING_FAILED


@pytest.mark.parametrize(("reason", "read_on", "sent_to"), [
    (PROCESSING_FAILED, TOPICS.events, TOPICS.events_by_user),  # one hop
    (PROCESSING_FAILED, TOPICS.events_by_user, TOPICS.events_by_user),  # two hops
    ("absurd_timestamp", TOPICS.events, TOPICS.events),
    ("schema", TOPICS.events_by_user, TOPICS.events_by_user),
])
def test_each_letter_goes_where_it_will_be_served(reason: str, read_on: str, sent_to: str) -> None:
    plan = plan_replay([(Mark(TOPICS.dlq, 0, 1), _letter(reason, read_on, 1))], ReplayFilter(), TOPICS, set())
    [replay] = plan.replays
    assert (replay.topic, replay.key) == (sent_to, b"u1")


def test_letters_of_other_topics_are_left_alone() -> None:
    plan = plan_replay([(Mark(TOPICS.dlq, 0, 1), _letter(PROCESSING_FAILED, TOPICS.items, 1))],
                       ReplayFilter(), TOPICS, set())
    assert plan.replays == [] and plan.skipped["not_an_event_topic"] == 1
