"""A Faust table whose changelog writes can be awaited before a batch's offsets are acked.

Faust sends a table's changelog records "soon" and commits source offsets after a producer
flush that gives up after 0.1 s without progress; a worker killed in that window resumes from
committed offsets with state that never reached its changelog: those events are lost. The
agents await `changelog_delivered()` before a batch is acked, so state is on the broker
before the offsets that produced it can be committed.

`value_serializer` names the codec of the table's values (in the changelog and in a
`rocksdb://` store); Faust itself derives it from `value_type` only (json by default).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import faust
from faust.types.codecs import CodecArg


class DeliveredTable(faust.Table):
    """`faust.Table` that remembers its unconfirmed changelog sends, with a value codec of choice."""

    def __init__(self, *args: Any, value_serializer: CodecArg | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if value_serializer is not None:  # before the store and the changelog topic are made (lazily)
            self.value_serializer = value_serializer

    def info(self) -> Mapping[str, Any]:
        """What `clone` makes the table again from: the codec too."""
        return {**super().info(), "value_serializer": self.value_serializer}

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        future = super().send_changelog(*args, **kwargs)
        self.__dict__.setdefault("_unconfirmed", []).append(future)
        return future

    async def changelog_delivered(self) -> None:
        """Wait until every changelog record written so far is acknowledged by the broker."""
        pending, self.__dict__["_unconfirmed"] = self.__dict__.get("_unconfirmed", []), []
        if pending:
            await asyncio.gather(*pending)
