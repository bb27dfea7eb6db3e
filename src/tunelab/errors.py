"""User-facing errors.

A `TunelabError` is a mistake in what the user gave us (a file, a record, a config key). The CLI prints
its message without a traceback and exits with status 2; anything else is our bug and keeps its traceback.
Messages name the file, the line or record, the field, and what was expected.
"""

from __future__ import annotations


class TunelabError(Exception):
    """A user error: printed as one clear message, never as a traceback."""


class ConfigError(TunelabError):
    """The run configuration is invalid."""


class DataError(TunelabError):
    """A data file or record is invalid.

    `where` is the file; `line` is a 1-based line (JSONL, CSV) or `record` a 0-based index (JSON array,
    Parquet, datasets folders); `field` is the offending key.
    """

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        line: int | None = None,
        record: int | None = None,
        field: str | None = None,
    ) -> None:
        self.where, self.line, self.record, self.field = where, line, record, field
        super().__init__(format_location(where, line, record, field) + message)


def format_location(
    where: str | None, line: int | None = None, record: int | None = None, field: str | None = None
) -> str:
    """'file.jsonl, line 3, field "messages": ' — the prefix every data error starts with."""
    parts = []
    if where:
        parts.append(str(where))
    if line is not None:
        parts.append(f"line {line}")
    elif record is not None:
        parts.append(f"record {record}")
    if field:
        parts.append(f'field "{field}"')
    return (", ".join(parts) + ": ") if parts else ""
