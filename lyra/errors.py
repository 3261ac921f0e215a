"""User-facing errors: one line naming the file and row, or the config key."""

from __future__ import annotations

import re


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



# A message that already starts with a file ("m.csv, row 4: ...", "/data/wt.fasta: ...") names its file.
_NAMES_A_FILE = re.compile(r"^[^\s:,]*(/|\.(csv|tsv|txt|parquet|pq|fasta|fa|faa|fna|a2m|a3m|sto|yaml|yml|json|gz|xlsx|xlsm)\b)")


def one_line(error: Exception, source: str | None = None) -> str:
    """The error as the one line a user sees, naming the file it is about: the config file `source`
    unless the message starts with a file of its own."""
    message = " ".join(str(error).split())
    if source and not message.startswith(str(source)) and not _NAMES_A_FILE.match(message):
        message = f"{source}: {message}"
    return message
