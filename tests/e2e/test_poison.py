"""End to end: a valid event the worker cannot handle is set aside, and the stream goes on.

A real worker process with a fault planted for one user (`tests/e2e/poisoned_worker.py`:
ranking raises whenever that user is in the batch), a real Tansu broker. The user's events
arrive mixed with everyone else's, then alone in a quiet stream. Both ways they must end in
`events.dlq` with reason `processing_failed`, the error and the bytes as read (on `events`:
keyed by user, they are served by the ingest agent in one hop), while every
other user is served and the group's offsets reach the end (no crash loop on the batch).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

from streamrec.consumers.worker.handlers import MAX_ATTEMPTS, PROCESSING_FAILED
from streamrec.stream.messages import DeadLetter, Event, Recommendation
from tests.support.events import assert_recent_items
from tests.support.group_run import SERVED_S, Run, Sender, lists_triggered_by_last_events
from tests.support.metrics import metric_sum, scrape
from tests.support.topics import read_topic
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

POISONED_WORKER = [sys.executable, str(Path(__file__).with_name("poisoned_worker.py")), "worker"]


def dead_letters(run: Run) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(v) for v in read_topic(run.settings, run.settings.topics.dlq)]


def test_a_poison_event_is_dead_lettered_and_the_stream_goes_on(run: Run) -> None:
    sender = Sender(run.settings, run.world, stream=3)
    mixed = sender.send_now(150)  # on the topic before the worker starts: batches of many users
    poison_user = Counter(e.user_id for e in mixed).most_common(1)[0][0]
    worker = run.start("poisoned", env={"STREAMREC_TEST_POISON_USER": poison_user}, command=POISONED_WORKER)
    run.wait_ready(worker)

    def others(history: dict[str, list[Event]]) -> dict[str, list[Event]]:
        return {user: events for user, events in history.items() if user != poison_user}

    wait_for(lambda: lists_triggered_by_last_events(worker, others(sender.history())), SERVED_S,
             "every other user served")
    poisoned = [e.event_id for e in mixed if e.user_id == poison_user]
    wait_for(lambda: len(dead_letters(run)) >= len(poisoned), SERVED_S, "the poison user's events set aside")

    # Then the poison user alone, in a quiet stream: tried MAX_ATTEMPTS times, then set aside.
    sender.send_now(1, user=poison_user)
    wait_for(lambda: len(dead_letters(run)) > len(poisoned), SERVED_S, "the lone poison event set aside")
    sender.send_now(30)  # and the stream goes on
    history = sender.history()
    run.wait_served_and_committed(worker, others(history), "the stream after it")

    letters = dead_letters(run)
    assert all(letter.reason == PROCESSING_FAILED for letter in letters), {letter.reason for letter in letters}
    assert all("planted fault" in letter.error and letter.topic == run.settings.topics.events
               for letter in letters), letters[0]
    set_aside = [Event.model_validate_json(letter.raw_bytes()) for letter in letters]
    assert {e.user_id for e in set_aside} == {poison_user}
    poison_events = [e.event_id for e in history[poison_user]]
    assert sorted(e.event_id for e in set_aside) == sorted(poison_events), "each poison event once, nothing else"

    for user, events in others(history).items():  # everyone else: every event learned, served
        state = worker.get(f"/users/{user}")
        assert_recent_items(state, events)
    lists = [Recommendation.model_validate_json(v) for v in read_topic(run.settings, run.settings.topics.recommendations)]
    assert poison_user not in {m.user_id for m in lists}

    metrics = scrape(worker.settings.metrics_port)
    assert metric_sum(metrics, "streamrec_dead_letters_total{", f'reason="{PROCESSING_FAILED}"') == len(letters)
    # The lone event's batch failed MAX_ATTEMPTS times (the last one sets it aside); the mixed
    # batches failed once each at most before being split.
    assert metric_sum(metrics, "streamrec_agent_errors_total") >= MAX_ATTEMPTS
    worker.alive()
    print(f"poison user {poison_user}: {len(letters)} events set aside ({len(poisoned)} in the first "
          f"batches, 1 alone, {len(letters) - len(poisoned) - 1} in the stream after); "
          f"{len(lists)} lists for the others")
