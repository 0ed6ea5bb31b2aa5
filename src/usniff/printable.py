"""Terminal-safe text: the one escaping step for every human-facing output.

Captured bytes (command names, replies, SQL, process names, socket paths) are
chosen by whoever can connect to a socket, and usniff prints them on a root
operator's terminal.  A control character there is an instruction to the
terminal (ESC starts a sequence that can set the title, clear the screen or
recolour it; BEL rings), so no character that is not printable may reach it.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def printable(text: str) -> str:
    """``text`` with every non-printable character (C0 and C1 controls, DEL, format
    characters such as bidi overrides, line separators) written as a visible escape
    (``\\x1b``, ``\\n``, ``\\u202e``); printable text, including non-ASCII letters,
    is left as it is."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)
