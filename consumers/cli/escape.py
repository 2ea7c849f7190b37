"""Untrusted strings made safe for a terminal or a log line: `printable`.

Ids, reasons and versions come from producers, not from us: an id holding ESC can rewrite the
operator's terminal (escape injection), a newline can forge a line of output. `printable`
writes every control or invisible format character as a visible escape, and leaves all other
text, any script, as it is.
"""

from __future__ import annotations

import unicodedata

#: Unicode categories escaped: controls (C0, DEL, C1), format characters (bidi overrides,
#: zero-width joiners), line and paragraph separators, lone surrogates.
ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def printable(text: str) -> str:
    """`text` with each control or invisible format character escaped (`\\x1b`, `\\u202e`).

    >>> printable("u1\\x1b[2J\\nforged line")
    'u1\\\\x1b[2J\\\\nforged line'
    >>> printable("Zoë – 東京 ok")
    'Zoë – 東京 ok'
    >>> printable("evil\\u202etxt.exe")
    'evil\\\\u202etxt.exe'
    """
    if text.isprintable():
        return text
    return "".join(_escape(char) if unicodedata.category(char) in ESCAPED_CATEGORIES else char for char in text)


def _escape(char: str) -> str:
    special = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if char in special:
        return special[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
