"""A Faust table whose changelog writes can be awaited before a batch's offsets are acked.

Faust sends a table's changelog records "soon" and commits source offsets after a producer
flush that gives up after 0.1 s without progress; a worker killed in that window resumes from
committed offsets with state that never reached its changelog: those events are lost. The
agents await `changelog_delivered()` before a batch is acked, so state is on the broker
before the offsets that produced it can be committed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust


class DeliveredTable(faust.Table):
    """`faust.Table` that remembers its unconfirmed changelog sends."""

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        future = super().send_changelog(*args, **kwargs)
        self.__dict__.setdefault("_unconfirmed", []).append(future)
        return future

    async def changelog_delivered(self) -> None:
        """Wait until every changelog record written so far is acknowledged by the broker."""
        pending, self.__dict__["_unconfirmed"] = self.__dict__.get("_unconfirmed", []), []
        if pending:
            await asyncio.gather(*pending)
