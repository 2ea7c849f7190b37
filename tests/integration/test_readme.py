"""The README's SDK snippet runs as pasted: against a real broker, its event lands on `events`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streamrec.stream.messages import Event
from streamrec.stream.settings import Settings
from streamrec.stream.topics import ensure_topics
from tests.support.topics import read_topic

pytestmark = [pytest.mark.integration]

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_sdk_snippet_runs_as_pasted(settings: Settings, tmp_path: Path) -> None:
    [snippet] = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    import asyncio

    asyncio.run(ensure_topics(settings))
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    env = {**os.environ, "STREAMREC_BROKER": settings.broker, "STREAMREC_TOPIC_PREFIX": settings.topic_prefix}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    events = [Event.model_validate_json(v) for v in read_topic(settings, settings.topics.events)]
    assert [(e.event_id, e.user_id, e.type) for e in events] == [("e-123", "u-7", "click")]
