"""The catalogue dictionary: strings (item ids, model versions) <-> int32 codes, append-only.

Packed user states (`packed_state.py`) hold int32 codes instead of item id strings. A code
stays valid for the life of the process: the dictionary only grows, it is never compacted or
renumbered (unlike the collaborative signals' `ItemVocabulary`, which is rebuilt when it
outgrows its bound), so a state packed an hour ago still reads back. Codes are process-local:
what leaves the process (the changelog) carries the strings (`packed_state.to_record`).

Memory: one dict entry, one list slot and the string itself per distinct string, about
100-130 bytes for a short item id (`streamrec.consumers.tools.bench_memory` measures it), so
~12 MiB for 100k distinct items, shared by every user of the worker.

>>> codes = Interner()
>>> codes.code("i1"), codes.code("i2"), codes.code("i1")
(0, 1, 0)
>>> codes.string(1), len(codes), codes.get("i3") is None
('i2', 2, True)
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_CODES = 2**31 - 1  # codes are stored as int32


class Interner:
    """An append-only string <-> int32 code dictionary (codes 0, 1, 2, ... in order of first use)."""

    __slots__ = ("_codes", "strings")

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}
        self.strings: list[str] = []  # code -> string (read-only for callers)

    def code(self, string: str) -> int:
        """The string's code, assigned now if the string is new."""
        code = self._codes.get(string)
        if code is None:
            code = len(self.strings)
            if code >= MAX_CODES:
                raise OverflowError("the interner is full (2**31 - 1 strings)")
            self._codes[string] = code
            self.strings.append(string)
        return code

    def codes(self, strings: Iterable[str]) -> list[int]:
        """`code` of each string, in order."""
        strings = list(strings)
        known = self._codes.get
        codes = [known(string) for string in strings]
        if None in codes:  # some are new
            codes = [self.code(string) if code is None else code for string, code in zip(strings, codes)]
        return codes  # type: ignore[return-value]

    def get(self, string: str) -> int | None:
        """The string's code if it has one (assigns nothing)."""
        return self._codes.get(string)

    def string(self, code: int) -> str:
        """The string of a code (IndexError for a code never given out)."""
        if code < 0:
            raise IndexError(f"no string has code {code}")
        return self.strings[code]

    def __len__(self) -> int:
        return len(self.strings)
