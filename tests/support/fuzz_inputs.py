"""Hypothesis strategies of `events` input, good and bad, for the fuzz tests (unit and e2e).

Each strategy draws a `Fuzzed`: the raw bytes a producer could send, what kind of input it
is, and the outcomes the contract allows for it (`"valid"` or the DLQ reasons of README
"Topics"). Timestamps are placed relative to `now`, with wide margins, so that the expected
outcome does not depend on when exactly the worker receives the message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from streamrec.stream.messages import EVENT_TYPES
from streamrec.stream.settings import Settings
from streamrec.stream.validation import MAX_JSON_DEPTH, REASONS

DEFAULTS = Settings()
MIN_TS = DEFAULTS.min_event_ts
MAX_SKEW_S = DEFAULTS.max_future_skew_s
DAY_S = 86_400.0
ANY = frozenset({"valid", *REASONS})  # random bytes: only the validator can tell

# Characters that break naive code: NUL, controls, zero-width, BOM, right-to-left override,
# combining marks, astral plane, the last code point, JSON's own metacharacters.
EDGE_CHARS = ["\x00", "\x1f", "\x7f", "\u200b", "\ufeff", "\u202e", "e\u0301", "🙂", "\U0010ffff",
              "\\", '"', "/", "\n", " ", "é", "ß", "İ", "中", "\u2028"]


@dataclass(frozen=True)
class Fuzzed:
    """One input: `raw` as produced, its `kind`, and the outcomes allowed for it."""

    raw: bytes
    kind: str
    expected: frozenset[str]


def ids(max_size: int = 40) -> st.SearchStrategy[str]:
    """Valid ids (1-256 characters): any unicode text or runs of edge-case characters."""
    return st.one_of(
        st.text(min_size=1, max_size=max_size),
        st.lists(st.sampled_from(EDGE_CHARS), min_size=1, max_size=8).map("".join),
        st.text(alphabet="abc-_.:0123456789", min_size=1, max_size=12),
    )


json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=20),
    st.floats(allow_nan=False, allow_infinity=False),
)
contexts = st.dictionaries(
    st.text(max_size=10),
    st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=6), inner, max_size=3), max_leaves=8),
    max_size=4,
)


def valid_dicts(now: float, item_ids: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[dict]:
    """Events the contract accepts; `ts` between the minimum and `now` (floats and ints)."""
    required = {
        "event_id": ids(),
        "user_id": ids(),
        "item_id": item_ids if item_ids is not None else ids(),
        "type": st.sampled_from(EVENT_TYPES),
        "ts": st.one_of(
            st.floats(min_value=MIN_TS, max_value=now),
            st.integers(min_value=int(MIN_TS) + 1, max_value=int(now)),
            st.floats(min_value=now - DAY_S, max_value=now),
        ),
    }
    return st.fixed_dictionaries(required, optional={"context": contexts})


def _dumps(obj: Any, ascii_only: bool = False) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only).encode()


def _fuzzed(kind: str, *expected: str):
    return lambda raw: Fuzzed(raw, kind, frozenset(expected))


def _with(base: dict, key: str, value: Any) -> dict:
    return {**base, key: value}


def inputs(now: float, max_bytes: int, item_ids: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[Fuzzed]:
    """Every kind of input the issue lists; `max_bytes` is the validator's message limit."""
    valid = valid_dicts(now, item_ids)
    finite = st.floats(allow_nan=False, allow_infinity=False)
    wrong_for_str = st.one_of(st.none(), st.booleans(), st.integers(), finite,
                              st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
    wrong_for_ts = st.one_of(st.none(), st.booleans(), st.text(max_size=12), st.lists(finite, max_size=2),
                             st.just({"$date": 1}), st.just(10**400))
    str_fields = st.sampled_from(["event_id", "user_id", "item_id"])
    unknown_types = st.text(max_size=12).filter(lambda t: t not in EVENT_TYPES)
    non_finite = st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1E400"])
    placeholder = "@@number@@"

    def with_raw_number(event: dict, number: bytes, in_context: bool) -> bytes:
        # NaN/Infinity/1e999 cannot come out of json.dumps: write them into the bytes.
        event = {**event, "context": {"x": placeholder}} if in_context else {**event, "ts": placeholder}
        return _dumps(event).replace(json.dumps(placeholder).encode(), number)

    def oversized(event: dict, extra: int) -> bytes:
        base = {k: v for k, v in event.items() if k != "context"}
        pad = max(0, max_bytes - len(_dumps(base)) + extra)
        return _dumps({**base, "context": {"pad": "x" * pad}})

    def near_limit(event: dict, short_by: int) -> bytes:
        # Compact JSON with an int `ts` just under the limit: serialised again, it grows.
        base = {k: v for k, v in event.items() if k != "context"} | {"ts": int(now) - 1, "context": {"p": ""}}
        body = json.dumps(base, separators=(",", ":"), ensure_ascii=False).encode()
        base["context"]["p"] = "x" * max(0, max_bytes - len(body) - short_by)
        return json.dumps(base, separators=(",", ":"), ensure_ascii=False).encode()

    def nested(event: dict, depth: int) -> bytes:
        return _dumps(event)[:-1] + b', "context": {"deep": ' + b"[" * depth + b"]" * depth + b"}}"

    kinds = [
        valid.map(_dumps).map(_fuzzed("valid", "valid")),
        valid.map(lambda e: _dumps(e, ascii_only=True)).map(_fuzzed("valid_ascii_escaped", "valid")),
        st.tuples(valid, st.dictionaries(st.text(max_size=8).map(lambda k: "x-" + k), json_leaves, min_size=1, max_size=3))
        .map(lambda t: _dumps({**t[1], **t[0]})).map(_fuzzed("valid_extra_fields", "valid")),
        valid.map(lambda e: b' \n\t' + _dumps(e) + b'\r\n').map(_fuzzed("valid_whitespace", "valid")),
        # Duplicate keys: the last one wins, as in every JSON parser Python ships.
        valid.map(lambda e: b'{"type": "like", ' + _dumps(e)[1:]).map(_fuzzed("valid_duplicate_key", "valid")),
        st.binary(max_size=300).map(_fuzzed("random_bytes", *ANY)),
        st.text(max_size=100).map(lambda t: t.encode()).map(_fuzzed("random_text", *ANY)),
        st.sampled_from([b"", b" ", b"\x00", b"\n\n", b"null", b"{}", b"{", b"}", b'"', b"\xef\xbb\xbf"])
        .map(_fuzzed("tiny", *ANY)),
        st.tuples(valid.map(_dumps), st.floats(min_value=0, max_value=1, exclude_max=True))
        .map(lambda t: t[0][: int(len(t[0]) * t[1])]).map(lambda raw: Fuzzed(
            raw, "truncated", frozenset({"empty"} if not raw else {"invalid_json"}))),
        st.tuples(valid, st.integers(min_value=1, max_value=4 * max_bytes))
        .map(lambda t: oversized(*t)).map(_fuzzed("oversized", "oversized")),
        st.one_of(st.lists(json_leaves, max_size=4), json_leaves, st.lists(valid, min_size=1, max_size=2))
        .map(_dumps).map(_fuzzed("not_an_object", "not_an_object")),
        st.tuples(valid, str_fields, wrong_for_str).map(lambda t: _dumps(_with(*t))).map(_fuzzed("wrong_type_id", "schema")),
        st.tuples(valid, st.sampled_from(EVENT_TYPES).map(lambda t: [t]) | st.integers() | st.none())
        .map(lambda t: _dumps(_with(t[0], "type", t[1]))).map(_fuzzed("wrong_type_type", "schema")),
        st.tuples(valid, wrong_for_ts).map(lambda t: _dumps(_with(t[0], "ts", t[1]))).map(_fuzzed("wrong_type_ts", "schema")),
        st.tuples(valid, st.sampled_from(["event_id", "user_id", "item_id", "type", "ts"]))
        .map(lambda t: _dumps({k: v for k, v in t[0].items() if k != t[1]})).map(_fuzzed("missing_field", "schema")),
        st.tuples(valid, str_fields).map(lambda t: _dumps(_with(t[0], t[1], ""))).map(_fuzzed("empty_id", "schema")),
        st.tuples(valid, str_fields, st.integers(min_value=257, max_value=400))
        .map(lambda t: _dumps(_with(t[0], t[1], "u" * t[2]))).map(_fuzzed("too_long_id", "schema")),
        st.tuples(valid, str_fields).map(lambda t: _dumps(_with(t[0], t[1], "a\ud800b"), ascii_only=True))
        .map(_fuzzed("lone_surrogate_id", "schema")),
        st.tuples(valid, st.sampled_from([b"\xc0\xaf", b"\xed\xa0\x80", b"\xff", b"\xf4\x90\x80\x80"]))
        .map(lambda t: _dumps(t[0]).replace(b'"type"', b'"ty' + t[1] + b'pe"', 1)).map(_fuzzed("invalid_utf8", "invalid_json", "schema")),
        st.tuples(valid, unknown_types).map(lambda t: _dumps(_with(t[0], "type", t[1]))).map(_fuzzed("unknown_type", "unknown_type")),
        st.tuples(valid, non_finite, st.booleans()).map(lambda t: with_raw_number(*t)).map(_fuzzed("non_finite", "invalid_json")),
        st.tuples(valid, st.one_of(st.floats(min_value=-1e300, max_value=MIN_TS, exclude_max=True),
                                   st.integers(min_value=-(10**20), max_value=int(MIN_TS) - 1)))
        .map(lambda t: _dumps(_with(t[0], "ts", t[1]))).map(_fuzzed("far_past", "absurd_timestamp")),
        st.tuples(valid, st.one_of(st.floats(min_value=now + MAX_SKEW_S + DAY_S, max_value=1e300),
                                   st.integers(min_value=int(now + MAX_SKEW_S + DAY_S), max_value=10**20)))
        .map(lambda t: _dumps(_with(t[0], "ts", t[1]))).map(_fuzzed("far_future", "absurd_timestamp")),
        st.tuples(valid, st.integers(min_value=0, max_value=12))
        .map(lambda t: near_limit(*t)).map(_fuzzed("near_limit", "valid", "oversized")),
        # Deep nesting: refused by the depth limit, or (past ~1,000 levels) by the parser.
        st.tuples(valid.map(lambda e: {k: v for k, v in e.items() if k != "context"}),
                  st.integers(min_value=MAX_JSON_DEPTH, max_value=min(5_000, max_bytes // 2 - 200)))
        .map(lambda t: nested(*t)).map(_fuzzed("deeply_nested", "schema", "invalid_json", "oversized")),
        st.integers(min_value=900, max_value=min(20_000, max_bytes // 2)).map(lambda d: b"[" * d + b"]" * d)
        .map(_fuzzed("deep_array", "not_an_object", "invalid_json", "oversized")),
    ]
    return st.one_of(kinds)
