"""The error a data format raises for a bad row, and how JSON types are named in its messages."""

from __future__ import annotations


class FieldError(ValueError):
    """A bad row: `field` is the path of the offending value (`messages[2].tool_calls[0]`); the pipeline adds
    the file and line."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


def json_name(py: str) -> str:
    """A Python type name as the JSON type a user wrote: 'dict' -> 'an object'."""
    return {"str": "a string", "list": "a list", "dict": "an object", "int": "a number", "bool": "true/false",
            "NoneType": "null", "float": "a number"}.get(py, py)  # fmt: skip


def got(value: object) -> str:
    return f"got {json_name(type(value).__name__)}"
