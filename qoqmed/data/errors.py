"""The one error type of the data layer: every reader and the row schema raise it, naming the file or row."""

from __future__ import annotations

from collections.abc import Iterable


class DataError(ValueError):
    """Bad input data: a missing or unreadable file, or a row that breaks the schema.

    ``problems`` lists every problem found (one line each) when several were collected at once.
    """

    def __init__(self, message: str, problems: Iterable[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems) if problems is not None else [message]
