"""The one error type of the data layer: every reader and the row schema raise it, naming the file or row; and
``printable``, which every message a user sees goes through."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

# C0 and C1 control characters other than newline and tab (ANSI escape sequences start with ESC, 0x1b), and lone
# UTF-16 surrogates, which a file name or a decoded JSON string may hold but no terminal or UTF-8 stream can print.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with control characters (ANSI escapes included) and lone surrogates written as ``\\xNN`` /
    ``\\uNNNN`` escapes: safe to print on any terminal and to encode as UTF-8, and nothing of it is dropped."""
    def escape(m: re.Match) -> str:
        code = ord(m.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _UNPRINTABLE.sub(escape, str(text))


class DataError(ValueError):
    """Bad input data: a missing or unreadable file, or a row that breaks the schema.

    ``problems`` lists every problem found (one line each) when several were collected at once. Messages are made
    printable (see :func:`printable`): they name files and quote their contents, which come from strangers.
    """

    def __init__(self, message: str, problems: Iterable[str] | None = None) -> None:
        message = printable(message)
        super().__init__(message)
        self.problems: list[str] = [printable(p) for p in problems] if problems is not None else [message]


@contextmanager
def reading_errors(source: object, what: str) -> Iterator[None]:
    """Whatever a decoding library raises inside this block on a malformed file (parsers of hostile bytes raise
    IndexError, KeyError, NotImplementedError, struct.error, MemoryError...) leaves as a DataError naming
    ``source``, ``what`` was being read and the library's reason; a DataError passes unchanged."""
    try:
        yield
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise DataError(f"{source}: cannot read {what}: {type(exc).__name__}: {exc}") from exc
