"""Text from outside (a server's status line and headers, an exception's message, a file's bytes) made fit to
store and to log.

PostgreSQL refuses a NUL in a VARCHAR, so one in an image's error failed the status write of a whole batch; an
ANSI escape sequence in a log line recolours or rewrites the terminal that shows it; a line break forges log
lines. So every character Python would not print as itself becomes a visible escape, and the text is bounded.
Shown in Markdown, such text is also escaped there.
"""
from __future__ import annotations

ELLIPSIS = "…"
# Past 18 digits a count is far over any bound imgpipe sets, and past 4300 int() refuses to read it.
COUNT_DIGITS = 18


def ascii_int(text: str, max_digits: int = COUNT_DIGITS) -> int | None:
    """`text` as a whole number when it is 1 to `max_digits` ASCII digits, else None. str.isdigit() is also true of
    '²' (which int() refuses) and of Arabic-Indic or fullwidth digits (which int() reads), and int() takes signs,
    spaces and underscores too: none of these is a number in a header, a query or a setting."""
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def declares_over(length: str, limit: int) -> bool:
    """Whether a Content-Length header says more than `limit` bytes (a longer number than we read says so)."""
    return (length.isascii() and length.isdigit() and len(length) > COUNT_DIGITS) or (ascii_int(length) or 0) > limit


def printable(text: str, limit: int = 500) -> str:
    """`text` with every character that is not printable as itself shown as a Python-style escape (`\\x00`,
    `\\x1b`, `\\x9b`, `\\u2028`, `\\udc80`), at most `limit` characters long, ending in an ellipsis when cut.

    Not printable: the C0 and C1 controls (NUL, tab, line breaks, ESC and so every ANSI escape sequence's
    introducer), DEL, lone surrogates, line and paragraph separators, format characters such as bidirectional
    overrides, and every space but the plain one.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    pieces: list[str] = []
    length = 0
    # An escape only lengthens the text, so no more than limit + 1 characters can decide the result.
    for char in text[:limit + 1]:
        piece = char if char.isprintable() else _escape(char)
        if length + len(piece) > limit:
            # Whole pieces only: half an escape would read as something else.
            while pieces and length + len(ELLIPSIS) > limit:
                length -= len(pieces.pop())
            return "".join(pieces) + ELLIPSIS
        pieces.append(piece)
        length += len(piece)
    return "".join(pieces)


# What gives Markdown structure: links and images need brackets, HTML angle brackets, a table cell a pipe; code
# and emphasis marks are escaped too. Nothing else is, so that URLs (which GFM links as raw text, backslashes
# and all) stay readable.
_MARKDOWN_SPECIAL = str.maketrans({char: "\\" + char for char in "\\`*[]<>|"})


def markdown_text(text: str) -> str:
    """`text` shown as itself in Markdown (the Dagster UI's metadata): on one line, every character that
    Markdown gives a meaning escaped, so that no link, image, HTML or table cell can be smuggled in."""
    text = str(text)
    shown = printable(text, limit=10 * len(text) + 1)  # no escape is longer than 10 characters: nothing cut
    return " ".join(shown.split()).translate(_MARKDOWN_SPECIAL)


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
