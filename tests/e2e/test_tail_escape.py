"""End to end: `streamrec tail` never writes a producer's control bytes to the terminal.

Probe finding (issue 17): ids with ESC sequences reached the operator's terminal raw
(terminal escape injection). A list with hostile ids, reason and version on a real broker's
`recommendations` topic, read by the real CLI: every control character comes out escaped.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from streamrec.stream.messages import Recommendation, RecommendedItem
from streamrec.stream.producer import EventProducer
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics
from tests.support.workers import worker_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CLEAR_SCREEN = "\x1b[2J\x1b[H"


def test_tail_escapes_control_characters(settings: Settings) -> None:
    hostile = Recommendation(
        user_id=f"u1{CLEAR_SCREEN}", items=[RecommendedItem(item_id="i\x07bell", score=1.0, reason="r\nFORGED")],
        model_version="v\x9b31m", trigger_event_id="e1", generated_at=1.0, latency_ms=1.0,
    )

    async def publish() -> None:
        await ensure_topics(settings)
        async with EventProducer(settings) as producer:
            await producer.send_raw(settings.topics.recommendations, hostile.to_bytes(), key=b"u1")

    asyncio.run(publish())
    done = subprocess.run(
        [sys.executable, "-m", "streamrec.consumers.cli", "tail", "--from-beginning", "--max", "1", "--timeout", "60"],
        env=worker_env(settings), capture_output=True, text=True, timeout=100,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert not [c for c in out if (ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) <= 0x9f], repr(out)
    assert out.count("\n") == 1, repr(out)  # one list, one line: nothing forged
    assert "u1\\x1b[2J\\x1b[H" in out and "i\\x07bell" in out and "v\\x9b31m" in out
