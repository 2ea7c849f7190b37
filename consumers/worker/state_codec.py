"""The user-state table's Faust codec: packed states in memory, self-contained records on the wire.

The table holds `PackedUserState`s (item ids as this process's int32 codes). Faust calls the
codec's `dumps` for each changelog write (and for each write to a `rocksdb://` store) and its
`loads` for each changelog record read back on recovery (and each `rocksdb://` read), so
codes never leave the process: `packed_state.to_record` writes the item ids as strings,
`from_record` reads them back with this process's codes, whichever process wrote them, and
reads version 1 (JSON) records of changelogs written before the packed state.

A record that cannot be read is handed on as its raw bytes rather than failing the recovery
of the whole partition: `WorkerContext.restore` then drops that one user's state with a warning.
"""

from __future__ import annotations

from typing import Any

from faust.serializers.codecs import Codec

from streamrec.models.core.interner import Interner
from streamrec.models.core.packed_state import PackedUserState, from_record, to_record


class UserStateCodec(Codec):
    """`PackedUserState` <-> changelog record bytes, through one `Interner`."""

    def __init__(self, codes: Interner | None = None, **kwargs: Any) -> None:
        # (Faust clones codecs with their kwargs: the codes travel with them)
        super().__init__(codes=codes if codes is not None else Interner(), **kwargs)
        self.codes: Interner = self.kwargs["codes"]

    def _dumps(self, value: Any) -> bytes:
        if not isinstance(value, PackedUserState):
            raise TypeError(f"the user-state table holds PackedUserState values, not {type(value).__name__}")
        return to_record(value, self.codes)

    def _loads(self, data: bytes) -> PackedUserState | bytes:
        try:
            return from_record(data, self.codes)
        except ValueError:
            return bytes(data)  # unreadable: restore() says why and starts the user afresh
