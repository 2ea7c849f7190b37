"""End to end: events sent twice, before and after a worker restart, are learned once.

DESIGN.md, "Delivery semantics": duplicates are removed by `event_id`, also across restarts.
The ingest agent's memory of event ids lives in the process and is gone after a restart; the
user state remembers the ids of the last events it learned (`models/core/state.EventIds`,
in the changelog with the rest of the state), so a duplicate that reaches it after a restart
is dropped: not learned, and no list (a list for it would be older than the user's newest).
The workers keep only 3 events of history here, so most duplicates are older than that.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from streamrec.models.core.state import UserState
from streamrec.stream.messages import Event, Recommendation
from streamrec.stream.producer import EventProducer
from streamrec.stream.readers import LatestLists
from streamrec.stream.settings import Settings
from tests.support.group_run import N_USERS, Run, Sender
from tests.support.metrics import metric_sum, scrape
from tests.support.topics import read_topic
from tests.support.waiting import OUTPUT_WAIT_S, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

HISTORY = 3  # events kept per user: duplicates of older events are caught by the id memory


def send_again(settings: Settings, events: list[Event]) -> None:
    """Produce `events` once more, unchanged (the same event ids)."""

    async def produce() -> None:
        async with EventProducer(settings) as producer:
            await producer.send_events(events)

    asyncio.run(produce())


def lists_by_id(run: Run) -> dict[str, Recommendation]:
    return {m.list_id: m for m in (Recommendation.model_validate_json(v)
                                   for v in read_topic(run.settings, run.settings.topics.recommendations))}


def test_duplicates_around_a_restart_are_learned_once(run: Run) -> None:
    run.settings = run.settings.model_copy(update={"history_length": HISTORY})
    a = run.start("a")
    run.wait_ready(a)
    sender = Sender(run.settings, run.world, stream=3)
    originals = sender.send_now(6 * N_USERS)
    run.wait_served_and_committed(a, sender.history(), "the originals")
    assert max(len(events) for events in sender.history().values()) > HISTORY, "duplicates past the history"
    half = len(originals) // 2

    # The first half sent again before the restart: ingest's memory drops it.
    send_again(run.settings, originals[:half])
    wait_for(lambda: metric_sum(scrape(a.settings.metrics_port), "streamrec_events_total",
                                'outcome="duplicate"') >= half, OUTPUT_WAIT_S, "ingest to drop the first duplicates")
    before_restart = lists_by_id(run)
    os.killpg(a.process.pid, signal.SIGKILL)
    assert a.process.wait(timeout=30) == -signal.SIGKILL

    # After the restart ingest remembers nothing: every event is sent again, then one new
    # event per user, which must be learned and answered as usual.
    a2 = run.start("a-restarted")
    run.wait_ready(a2)
    send_again(run.settings, originals)
    fresh = [sender.send_now(1, user=user)[0] for user in sorted(sender.history())]
    history = sender.history()
    run.wait_served_and_committed(a2, history, "the new events after the duplicates")

    for user, events in history.items():
        reference = UserState(user, max_history=HISTORY)
        for event in events:
            reference.learn(event)
        state = a2.get(f"/users/{user}")
        assert state["n_events"] == len(events) and state["counts"] == reference.counts, (user, state)
    after = lists_by_id(run)
    new_lists = [m for list_id, m in after.items() if list_id not in before_restart]
    fresh_ids = {e.event_id for e in fresh}
    assert {m.trigger_event_id for m in new_lists} <= fresh_ids, (
        f"lists for duplicates: {sorted({m.trigger_event_id for m in new_lists} - fresh_ids)}"
    )
    latest = LatestLists()
    for value in read_topic(run.settings, run.settings.topics.recommendations):
        latest.offer_bytes(value)
    for user, events in history.items():
        assert latest[user].trigger_event_id == events[-1].event_id and latest[user].sequence == len(events), user
    assert latest.stale == 0, "a list older than its user's newest was published"
