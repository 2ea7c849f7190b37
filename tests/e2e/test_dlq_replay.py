"""End to end: `streamrec dlq replay` sends dead letters back, once, and the worker serves them.

A real Tansu broker, a real worker that allows events at most 2 s ahead of its clock, and
the real CLI. A producer whose clock runs 8 s fast sends three events (one of them twice):
all four are dead-lettered as `absurd_timestamp`, beside an `unknown_type` letter. Once the
worker's clock has caught up, the replay sends each event id back once, the worker serves
each user with the replayed event as the trigger, and a second run sends nothing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from streamrec.consumers.cli.dlq_replay import MARK_HEADER
from streamrec.stream.messages import DeadLetter, Recommendation
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from tests.support.events import event_fields
from tests.support.topics import read_topic
from tests.support.waiting import OUTPUT_WAIT_S, wait_for
from tests.support.workers import WORKER_READY_S, Worker, worker_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

SKEW_S = 2.0  # the worker's STREAMREC_MAX_FUTURE_SKEW_S
AHEAD_S = 8.0  # how far ahead the producer's clock runs


def replay(settings: Settings, *args: str) -> str:
    """Run `streamrec dlq replay ARGS` for `settings`; its output (it must exit 0)."""
    done = subprocess.run([sys.executable, "-m", "streamrec.consumers.cli", "dlq", "replay", *args],
                          env=worker_env(settings), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def records_with_marks(settings: Settings) -> list[bytes]:
    """Values on `events` that a replay sent (they carry the mark header)."""

    async def read() -> list[bytes]:
        from streamrec.consumers.cli.dlq import read_whole

        records = await read_whole(settings, [settings.topics.events])
        return [r.value for r in records if any(name == MARK_HEADER for name, _ in r.headers or ())]

    return asyncio.run(read())


@pytest.fixture
def e2e_settings(e2e_settings: Settings) -> Settings:
    """The worker refuses events more than `SKEW_S` ahead of its clock."""
    return e2e_settings.model_copy(update={"max_future_skew_s": SKEW_S})


def test_dead_letters_are_replayed_once_and_served(e2e_settings: Settings, worker: Worker) -> None:
    settings = e2e_settings
    wait_for(lambda: worker.alive() and worker.readiness().get("ready"), WORKER_READY_S, "the worker ready")
    ahead = time.time() + AHEAD_S
    users = ["u-a", "u-b", "u-c"]
    early = [event_fields(user, n=1, ts=ahead, event_id=f"{user}-early") for user in users]
    sent = [*early, early[0], event_fields("u-d", n=1, kind="like", event_id="u-d-like")]

    async def produce() -> None:
        async with EventProducer(settings) as producer:
            for fields in sent:
                await producer.send_raw(settings.topics.events, json.dumps(fields).encode(),
                                        key=fields["user_id"].encode())

    asyncio.run(produce())

    def letters() -> list[DeadLetter]:
        return [DeadLetter.model_validate_json(v) for v in read_topic(settings, settings.topics.dlq)]

    wait_for(lambda: worker.alive() and len(letters()) >= len(sent), OUTPUT_WAIT_S,
             "every event dead-lettered")
    assert sorted(letter.reason for letter in letters()) == ["absurd_timestamp"] * 4 + ["unknown_type"]

    dry = replay(settings, "--reason", "absurd_timestamp", "--dry-run")
    assert "selected: 4" in dry and "would replay: 3" in dry and "1 duplicate_event_id" in dry, dry
    assert "dry run: nothing was sent" in dry
    assert records_with_marks(settings) == [], "a dry run sends nothing"

    wait_for(lambda: time.time() > ahead - SKEW_S + 1, ahead - time.time() + 5, "the worker's clock to catch up")
    done = replay(settings, "--reason", "absurd_timestamp", "--since", "1h")
    assert "replayed: 3" in done, done
    assert sorted(json.loads(v)["event_id"] for v in records_with_marks(settings)) == [f"{u}-early" for u in users]

    def triggers() -> set[str]:
        lists = [Recommendation.model_validate_json(v) for v in read_topic(settings, settings.topics.recommendations)]
        return {rec.trigger_event_id for rec in lists}

    wait_for(lambda: {f"{u}-early" for u in users} <= triggers(), OUTPUT_WAIT_S, "the replayed events served")
    assert len(letters()) == len(sent), "the replayed events were accepted, not dead-lettered again"

    again = replay(settings, "--reason", "absurd_timestamp")
    assert "replayed: 0" in again and "4 already_replayed" in again, again
    assert len(records_with_marks(settings)) == 3, "a second run sends nothing"
    nothing = replay(settings, "--reason", "unknown_type", "--until", "1h")  # all letters are newer
    assert "selected: 0" in nothing, nothing
    worker.alive()
