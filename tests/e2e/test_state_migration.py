"""End to end: a worker on the packed user state reads a changelog written before it.

Issue 16 changed the user-state table's values from JSON dicts (`UserState.to_dict`, version
1) to packed states with a binary changelog record (version 2, `packed_state.py`). A worker
restarted on the new code, or taking over a partition from an old one, recovers its table from
a changelog that holds version 1 records: every user must come back as they were (events,
counts, recent items, the ids that make learning idempotent), and the next write is version 2.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from streamrec.models.core.interner import Interner
from streamrec.models.core.packed_state import STATE_VERSION, from_record, unpack
from streamrec.models.core.state import UserState
from streamrec.stream.messages import Event
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics
from tests.support.events import assert_recent_items
from tests.support.group_run import PARTITIONS, Run
from tests.support.topics import read_topic

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def write_version_1_changelog(settings: Settings, history: dict[str, list[Event]]) -> str:
    """Each user's state as the workers before issue 16 wrote it: `to_dict()` as JSON (Faust's
    json codec), keyed by user id, on the partition the key hashes to (as `use_partitioner`)."""
    changelog = f"{settings.app_id}-user-state-changelog"

    async def produce() -> None:
        await ensure_topics(settings, [changelog], partitions=PARTITIONS)
        async with EventProducer(settings) as producer:
            for user, events in history.items():
                state = UserState(user, max_history=settings.history_length)
                for event in events:
                    state.learn(event)
                await producer.send_raw(changelog, json.dumps(state.to_dict()).encode(), key=user.encode())

    asyncio.run(produce())
    return changelog


def test_a_worker_recovers_version_1_state_and_writes_version_2(run: Run) -> None:
    events = run.world.events(120, start_ts=time.time() - 3_600, stream=9)
    history: dict[str, list[Event]] = {}
    for event in events:
        history.setdefault(event.user_id, []).append(event)
    changelog = write_version_1_changelog(run.settings, history)

    a = run.start("a")
    run.wait_ready(a)
    for user, mine in history.items():  # recovered from version 1 records
        state = a.get(f"/users/{user}")
        assert state["known"] and state["n_events"] == len(mine), (user, state)
        reference = UserState(user)
        for event in mine:
            reference.learn(event)
        assert state["counts"] == reference.counts and state["last_ts"] == reference.last_ts, user
        assert_recent_items(state, mine[-run.settings.history_length:])

    # The old events sent again: already learned (their ids came over with the state), then
    # one new event per user, learned as usual.
    fresh = [Event(event_id=f"fresh-{user}", user_id=user, item_id=mine[0].item_id, type="click",
                   ts=mine[-1].ts + 1.0) for user, mine in history.items()]

    async def send() -> None:
        async with EventProducer(run.settings) as producer:
            await producer.send_events(events + fresh)

    asyncio.run(send())
    for event in fresh:
        history[event.user_id].append(event)
    run.wait_served_and_committed(a, history, "the old events again and a new one per user")
    for user, mine in history.items():
        state = a.get(f"/users/{user}")
        assert state["n_events"] == len(mine) and state["recent"][0]["event_id"] == f"fresh-{user}", (user, state)

    # What the worker wrote since is version 2, and it reads back into the same users.
    records = [value for value in read_topic(run.settings, changelog) if value]
    written = [value for value in records if value[:1] == bytes((STATE_VERSION,))]
    assert len(written) >= len(history) and len(records) == len(written) + len(history)
    codes = Interner()
    newest = {unpack(from_record(value, codes), "-", codes).last_event_id for value in written}
    assert {f"fresh-{user}" for user in history} <= newest
