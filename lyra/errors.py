"""User-facing errors: one line naming the file and row, or the config key."""

from __future__ import annotations


class LyraError(Exception):
    """Base class of errors the CLI prints as one line (no traceback)."""


class ConfigError(LyraError, ValueError):
    """A config key is missing, unknown or has a bad value."""


class DataError(LyraError, ValueError):
    """An input file or one of its rows is malformed."""

    def __init__(self, message: str, path: str | None = None, row: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if row is not None:
                where += f", row {row}"
            where += ": "
        super().__init__(where + message)
        self.path, self.row = path, row
