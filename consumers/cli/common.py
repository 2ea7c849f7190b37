"""What every `streamrec` command group needs: the settings, read and checked once, and logging.

Kept apart from `main.py` (the parser and the dispatch) so that the command modules
(`offline_commands.py`, `model_commands.py`, ...) need not import the module that imports them.
"""

from __future__ import annotations

import logging

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
