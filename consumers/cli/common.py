"""What every `streamrec` command group needs: the settings, read and checked once, and logging.

Kept apart from `main.py` (the parser and the dispatch) so that the command modules
(`offline_commands.py`, `model_commands.py`, ...) need not import the module that imports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from pydantic import ValidationError

from streamrec.stream.settings import Settings


def load_settings() -> Settings:
    """`Settings()` from the STREAMREC_* environment; a clear exit listing each bad variable.

    >>> import os
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"STREAMREC_PARTITIONS": "0"}):
    ...     load_settings()
    Traceback (most recent call last):
    SystemExit: invalid settings:
      STREAMREC_PARTITIONS: Input should be greater than or equal to 1
    """
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  STREAMREC_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()]
        raise SystemExit("invalid settings:\n" + "\n".join(lines)) from None


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")



@contextlib.contextmanager
def quiet_kafka_logs() -> Iterator[None]:
    """Keep aiokafka's own connection errors (one per retry, dozens a second while a broker is
    away) off the terminal meanwhile: the command says what went wrong once, with the hint."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def broker_problem(settings: Settings) -> str | None:
    """None when the broker answers within `broker_wait_s`; else one line saying what to do
    (aiokafka's own error per connection attempt is kept off the terminal meanwhile)."""
    from streamrec.stream.topics import wait_for_broker

    with quiet_kafka_logs():
        try:
            asyncio.run(wait_for_broker(settings, settings.broker_wait_s))
        except ConnectionError:
            return (f"no Kafka broker answers at {settings.broker} (waited {settings.broker_wait_s:.0f} s); "
                    "start one with `streamrec broker`, or set STREAMREC_BROKER to yours")
    return None
