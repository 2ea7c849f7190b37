"""A user state packed into one bytes object (version 2): the worker's table value.

`pack` turns a `UserState` into a `PackedUserState` (~0.8 kB for 50 recent items, against
~7 kB as `to_dict()` plain data and ~15 kB as live objects); `unpack` makes the `UserState`
again for a micro-batch. Item ids and model versions are int32 codes of a process-wide,
append-only `Interner`, so a packed state is only readable in the process that packed it:
`to_record` writes the self-contained changelog record (the same layout, codes replaced by
indices into a pool of the record's strings), `from_record` reads one back with this
process's codes, and also reads version 1 (today's JSON dicts, `UserState.to_dict`): a
restarted worker reads a changelog written before the packed state. No pickle anywhere.

Layout, little-endian (docs/state.md has the sizes):

=============  ==================================================================================
header         `_HEADER`: version (2), lengths, counts per type, gap statistics, decayed rates,
               last_ts, out_of_order, served version's code
items          int32 x n_recent: the recent items' codes, oldest first
gaps           float16 x n_recent, hours: gaps[i] = ts[i+1] - ts[i], the last last_ts - ts[-1]
types          2 bits x n_recent (index into EVENT_TYPES), four to a byte
event ids      uint32 x n_ids: `event_id_digest32` of the last ids learned, oldest first
served         int32 x n_served: the codes of the last list served
consumed       int32 x n_extra: consumed items not among the recent ones, least recent first
newest id      utf-8: the newest interaction's full event id (for list ids and triggers)
pool           (changelog records only) uint32 count, then uint16 length + utf-8 per string
=============  ==================================================================================

Precision: everything is exact but the recent items' times, kept as float16 gaps in hours
(relative error <= 2**-12 for gaps over 0.22 s, under 0.2 ms below; clamped at 7.5 years)
and the event ids of all but the newest interaction (None after a round trip).

>>> from streamrec.stream.messages import Event
>>> codes = Interner()
>>> state = UserState("u1")
>>> for n, kind in enumerate(["view", "click", "purchase"]):
...     _ = state.learn(Event(event_id=f"e{n}", user_id="u1", item_id=f"i{n}", type=kind, ts=100.0 + 10 * n))
>>> packed = pack(state, codes)
>>> again = unpack(packed, "u1", codes)
>>> [(i.item_id, i.type, round(i.ts, 2), i.event_id) for i in again.recent]  # times: float16 gaps
[('i0', 'view', 100.0, None), ('i1', 'click', 110.0, None), ('i2', 'purchase', 120.0, 'e2')]
>>> again.snapshot() == state.snapshot(), again.learn(Event(event_id="e0", user_id="u1", item_id="i0", type="view", ts=100.0))
(True, False)
>>> other = Interner(); _ = other.code("x")  # another process, other codes
>>> unpack(from_record(to_record(packed, codes), other), "u1", other).recent == again.recent
True
"""

from __future__ import annotations

import json
import math
import struct
import sys
from array import array
from collections.abc import Sequence
from itertools import accumulate, repeat

from streamrec.models.core.interner import Interner
from streamrec.models.core.state import (
    EVENT_IDS_KEPT,
    Interaction,
    StateParts,
    UserState,
)
from streamrec.stream.messages import EVENT_TYPES

STATE_VERSION = 2  # the packed format; version 1 is `UserState.to_dict`'s JSON
NO_CODE = -1  # served version code when nothing was served yet
NO_ID = 0xFFFF  # newest id length when there is no recent interaction
HOUR_S = 3_600.0
MAX_GAP_H = 65_504.0  # the largest float16 (~7.5 years)

#: version, n_recent, n_ids, n_served, n_extra, newest id length, counts per type (3),
#: gap n, gap mean, gap S, (rate mass, rate ts) per type, last_ts, out_of_order, served version
_HEADER = struct.Struct("<BHHHHH3IIdd6ddIi")
_POOL_COUNT = struct.Struct("<I")
_STRING_LENGTH = struct.Struct("<H")
_new_tuple = tuple.__new__  # makes an `Interaction` from a tuple without a Python-level call
_LITTLE_ENDIAN = sys.byteorder == "little"
#: four types -> their byte (two bits each, the first in the lowest bits)
_BYTE_OF_TYPES = {
    (a, b, c, d): i | j << 2 | k << 4 | m << 6
    for i, a in enumerate(EVENT_TYPES) for j, b in enumerate(EVENT_TYPES)
    for k, c in enumerate(EVENT_TYPES) for m, d in enumerate(EVENT_TYPES)
}
#: a byte of packed types -> its four types (None: a code with no type)
_TYPES_OF_BYTE = [
    tuple(EVENT_TYPES[(byte >> shift) & 3] if (byte >> shift) & 3 < len(EVENT_TYPES) else None
          for shift in (0, 2, 4, 6))
    for byte in range(256)
]
assert len(EVENT_TYPES) <= 4, "types are packed in 2 bits"
assert tuple(EVENT_TYPES) == ("view", "click", "purchase"), "the header's per-type fields follow this order"


class PackedUserState:
    """One user's state as one bytes object (`data`), item ids as codes of an `Interner`.

    A tiny wrapper, not a `bytes`: Faust writes `bytes` table values to the changelog as they
    are, and these must go through the codec (`to_record`) to carry strings, not codes.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PackedUserState) and other.data == self.data

    __hash__ = None  # type: ignore[assignment]  # (mutable-looking; never a key)

    def __repr__(self) -> str:
        return f"PackedUserState({len(self.data)} bytes)"


# --- memory ------------------------------------------------------------------------------
def pack(state: UserState, codes: Interner) -> PackedUserState:
    """The state packed, its item ids and served version coded by `codes`."""
    parts = state.parts()
    recent = parts.recent
    n = len(recent)
    items, kinds, times, _ = zip(*recent) if recent else ((), (), (), ())
    item_codes = codes.codes(items)
    in_recent = set(items)
    consumed = parts.consumed
    extra = [] if in_recent.issuperset(consumed) else codes.codes([i for i in consumed if i not in in_recent])
    served = codes.codes(parts.served)
    version_code = NO_CODE if parts.served_version is None else codes.code(parts.served_version)
    newest = recent[-1].event_id if recent else None
    newest_bytes = b"" if newest is None else newest.encode()
    header = _header(parts, n, len(parts.event_digests), len(served), len(extra),
                     NO_ID if newest is None else len(newest_bytes), version_code)
    return PackedUserState(b"".join((
        header,
        struct.pack(f"<{n}i", *item_codes),
        struct.pack(f"<{n}e", *_gaps_h(times, parts.last_ts)),
        _pack_types(kinds),
        parts.event_digests.tobytes() if _LITTLE_ENDIAN else struct.pack(f"<{len(parts.event_digests)}I", *parts.event_digests),
        struct.pack(f"<{len(served)}i", *served),
        struct.pack(f"<{len(extra)}i", *extra),
        newest_bytes,
    )))


def unpack(
    packed: PackedUserState,
    user_id: str,
    codes: Interner,
    max_history: int = 50,
    max_consumed: int = 1_000,
    max_ids: int = EVENT_IDS_KEPT,
) -> UserState:
    """The `UserState` of a packed one (cut to the limits given); ValueError if malformed."""
    data = packed.data
    fields, layout = _read_layout(data)
    n, n_ids, n_served, n_extra, id_length = fields[1:6]
    strings = codes.strings
    try:
        items = [strings[code] for code in _codes_at(data, layout.items, n)]
        served = tuple(strings[code] for code in _codes_at(data, layout.served, n_served))
        extra = [strings[code] for code in _codes_at(data, layout.extra, n_extra)]
        version_code = fields[20]
        if version_code < NO_CODE:
            raise IndexError(version_code)
        served_version = None if version_code == NO_CODE else strings[version_code]
    except IndexError:
        raise ValueError("packed user state refers to an item code this process never gave out") from None
    gaps = struct.unpack_from(f"<{n}e", data, layout.gaps)
    kinds = _unpack_types(data, layout.types, n)
    newest = None
    if id_length != NO_ID:
        try:
            newest = data[layout.newest_id:layout.end].decode()
        except UnicodeDecodeError as exc:
            raise ValueError(f"packed user state: newest event id is not utf-8 ({exc})") from None
    last_ts = _optional(fields[18])
    if n and last_ts is None:
        raise ValueError("packed user state has recent items but no last_ts")
    recent: list[Interaction] = []
    if n:  # times back from last_ts: the gaps summed from the newest (exact in float64)
        back_h = list(accumulate(reversed(gaps)))
        back_h.reverse()
        times = [last_ts - h * HOUR_S for h in back_h]  # type: ignore[operator]
        recent = list(map(_new_tuple, repeat(Interaction), zip(items, kinds, times, repeat(None))))
        recent[-1] = _new_tuple(Interaction, (items[-1], kinds[-1], times[-1], newest))
    by_last_use = list(dict.fromkeys(reversed(items)))
    by_last_use.reverse()
    rate_fields = fields[12:18]
    parts = StateParts(
        recent=recent,
        consumed=extra + by_last_use,
        event_digests=array("I", struct.unpack_from(f"<{n_ids}I", data, layout.event_ids)),
        counts=dict(zip(EVENT_TYPES, fields[6:9])),
        gap_n=float(fields[9]),
        gap_mean=fields[10],
        gap_s=fields[11],
        rates={kind: (rate_fields[2 * k], _optional(rate_fields[2 * k + 1])) for k, kind in enumerate(EVENT_TYPES)},
        last_ts=last_ts,
        out_of_order=fields[19],
        served_version=served_version,
        served=served,
    )
    return UserState.from_parts(user_id, parts, max_history, max_consumed, max_ids)


# --- the changelog -----------------------------------------------------------------------
def to_record(packed: PackedUserState, codes: Interner) -> bytes:
    """The changelog record of a packed state: readable by any process (strings, not codes)."""
    data = packed.data
    fields, layout = _read_layout(data)
    n, n_ids, n_served, n_extra, id_length = fields[1:6]
    pool: dict[int, int] = {}  # code -> index in the record's pool
    index = pool.setdefault
    items = [index(code, len(pool)) for code in _codes_at(data, layout.items, n)]
    served = [index(code, len(pool)) for code in _codes_at(data, layout.served, n_served)]
    extra = [index(code, len(pool)) for code in _codes_at(data, layout.extra, n_extra)]
    version_code = fields[20]
    version_index = NO_CODE if version_code == NO_CODE else index(version_code, len(pool))
    header = _HEADER.pack(*fields[:20], version_index)
    strings = [codes.string(code).encode() for code in pool]
    return b"".join((
        header,
        struct.pack(f"<{n}i", *items),
        data[layout.gaps:layout.served],  # gaps, types, event ids: no codes in them
        struct.pack(f"<{n_served}i", *served),
        struct.pack(f"<{n_extra}i", *extra),
        data[layout.newest_id:layout.end],
        _POOL_COUNT.pack(len(strings)),
        *(_STRING_LENGTH.pack(len(string)) + string for string in strings),
    ))


def from_record(record: bytes, codes: Interner) -> PackedUserState:
    """A changelog record (version 2, or version 1's JSON) packed with this process's `codes`;
    ValueError if it is neither or malformed."""
    if record[:1] == b"{" or record.lstrip()[:1] == b"{":
        return _from_version_1(record, codes)
    fields = _read_header(record)
    n, n_ids, n_served, n_extra, id_length = fields[1:6]
    layout = _Layout(n, n_ids, n_served, n_extra, id_length)
    pool, offset = [], layout.end
    try:
        (count,) = _POOL_COUNT.unpack_from(record, offset)
        offset += _POOL_COUNT.size
        for _ in range(count):
            (length,) = _STRING_LENGTH.unpack_from(record, offset)
            offset += _STRING_LENGTH.size
            if offset + length > len(record):
                raise ValueError("a pool string runs past the record's end")
            pool.append(record[offset:offset + length].decode())
            offset += length
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"user state record: malformed string pool ({exc})") from None
    if offset != len(record):
        raise ValueError(f"user state record of {len(record)} bytes, expected {offset}")
    pool_codes = codes.codes(pool)

    def coded(offset: int, count: int) -> bytes:
        try:
            return struct.pack(f"<{count}i", *(pool_codes[i] for i in _codes_at(record, offset, count)))
        except IndexError:
            raise ValueError("user state record refers past its string pool") from None

    version_index = fields[20]
    if version_index != NO_CODE and not 0 <= version_index < len(pool_codes):
        raise ValueError("user state record's served version refers past its string pool")
    version_code = NO_CODE if version_index == NO_CODE else pool_codes[version_index]
    return PackedUserState(b"".join((
        _HEADER.pack(*fields[:20], version_code),
        coded(layout.items, n),
        record[layout.gaps:layout.served],
        coded(layout.served, n_served),
        coded(layout.extra, n_extra),
        record[layout.newest_id:layout.end],
    )))


def _from_version_1(record: bytes, codes: Interner) -> PackedUserState:
    """Version 1 (`UserState.to_dict` as JSON) packed: nothing cut (the limits apply when it is
    unpacked); its ids' 8-byte digests kept as their top 4 bytes, the newest `EVENT_IDS_KEPT`."""
    try:
        data = json.loads(record)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"user state record: not version 2 and not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"unknown user state version {type(data).__name__!r} (expected 1 or {STATE_VERSION})")
    recent, consumed = data.get("recent"), data.get("consumed")
    state = UserState.from_dict(
        data,
        max_history=max(len(recent) if isinstance(recent, list) else 0, 1),
        max_consumed=max(len(consumed) if isinstance(consumed, list) else 0, 1),
    )
    return pack(state, codes)


# --- the layout --------------------------------------------------------------------------
class _Layout:
    """Where each section starts, from the lengths in the header."""

    __slots__ = ("end", "event_ids", "extra", "gaps", "items", "newest_id", "served", "types")

    def __init__(self, n: int, n_ids: int, n_served: int, n_extra: int, id_length: int) -> None:
        self.items = _HEADER.size
        self.gaps = self.items + 4 * n
        self.types = self.gaps + 2 * n
        self.event_ids = self.types + (n + 3) // 4
        self.served = self.event_ids + 4 * n_ids
        self.extra = self.served + 4 * n_served
        self.newest_id = self.extra + 4 * n_extra
        self.end = self.newest_id + (0 if id_length == NO_ID else id_length)


def _read_layout(data: bytes) -> tuple[tuple, _Layout]:
    """The header's fields and the layout they give; ValueError unless `data` is exactly that long."""
    fields = _read_header(data)
    layout = _Layout(*fields[1:6])
    if len(data) != layout.end:
        raise ValueError(f"packed user state of {len(data)} bytes, expected {layout.end}")
    return fields, layout


def _read_header(data: bytes) -> tuple:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"a packed user state is bytes, not {type(data).__name__}")
    if data[:1] != bytes((STATE_VERSION,)):
        version = data[0] if len(data) else None
        raise ValueError(f"unknown packed user state version {version!r} (expected {STATE_VERSION})")
    if len(data) < _HEADER.size:
        raise ValueError(f"packed user state of {len(data)} bytes is shorter than its header")
    return _HEADER.unpack_from(data)


def _header(parts: StateParts, n: int, n_ids: int, n_served: int, n_extra: int, id_length: int,
            version_code: int) -> bytes:
    rates = []
    for kind in EVENT_TYPES:
        mass, ts = parts.rates.get(kind, (0.0, None))
        rates += [mass, math.nan if ts is None else ts]
    return _HEADER.pack(
        STATE_VERSION, n, n_ids, n_served, n_extra, id_length,
        *(parts.counts.get(kind, 0) for kind in EVENT_TYPES),
        int(parts.gap_n), parts.gap_mean, parts.gap_s, *rates,
        math.nan if parts.last_ts is None else parts.last_ts,
        parts.out_of_order, version_code,
    )


def _gaps_h(ts: Sequence[float], last_ts: float | None) -> list[float]:
    """Hours between consecutive recent items, then from the newest to last_ts (float16-safe)."""
    if not ts:
        return []
    gaps = [(later - earlier) / HOUR_S for earlier, later in zip(ts, ts[1:])]
    gaps.append(0.0 if last_ts is None else (last_ts - ts[-1]) / HOUR_S)
    if max(gaps) > MAX_GAP_H or min(gaps) < -MAX_GAP_H:
        gaps = [min(max(gap, -MAX_GAP_H), MAX_GAP_H) for gap in gaps]
    return gaps


def _pack_types(kinds: Sequence[str]) -> bytes:
    padded = (*kinds, *(EVENT_TYPES[0],) * (-len(kinds) % 4))
    try:
        return bytes(map(_BYTE_OF_TYPES.__getitem__, zip(padded[0::4], padded[1::4], padded[2::4], padded[3::4])))
    except KeyError as exc:
        raise ValueError(f"unknown event type in {exc.args[0]!r}") from None


def _unpack_types(data: bytes, offset: int, n: int) -> list[str]:
    table = _TYPES_OF_BYTE
    kinds = [kind for byte in data[offset:offset + (n + 3) // 4] for kind in table[byte]][:n]
    if None in kinds:
        raise ValueError("packed user state holds an unknown event type code")
    return kinds  # type: ignore[return-value]


def _codes_at(data: bytes, offset: int, count: int) -> tuple[int, ...]:
    codes = struct.unpack_from(f"<{count}i", data, offset)
    if codes and min(codes) < 0:
        raise ValueError("packed user state holds a negative item code")
    return codes


def _optional(value: float) -> float | None:
    return None if math.isnan(value) else value
