"""Load a data file for quality work: every row with its location, parsed record, text fields and label.

Unlike training, which stops at the first bad row, quality tools collect every problem: a row whose format
fails becomes an `Item` with `error` set, and a JSONL line that is not valid JSON becomes one too (JSONL and
CSV are read here row by row so that one bad row does not hide the rest; other file types go through
`tunelab.data.sources.read_rows`, where a broken file is one file-level error).

Text is taken two ways. `fields` are the string leaves of the raw row with their paths
(`messages[1].content`) in the fields the format reads as text (through the `columns:` mapping and its
templates; never ids or other columns), which is what PII scans, trimming and redaction act on, so a cleaned
row keeps its shape and its other columns untouched. `input_text`/`full_text` come from the parsed record (prompt side, and everything), which is what
duplicates, leakage and label conflicts compare. A label is a classification column (`label`, `category`,
`intent`, `class`, or one named by the user) that the format does not consume, or a KTO label.
"""

from __future__ import annotations

import hashlib
import marshal
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tunelab.data.formats import FORMATS, FieldError, detect_format, is_template, rename_columns, text_sources
from tunelab.data.hints import mapping_hint
from tunelab.data.records import (
    Conversation,
    Labelled,
    Message,
    Preference,
    Prompt,
    PromptCompletion,
    Record,
    Text,
    TokenTags,
    UnpairedPreference,
    message_text,
)
from tunelab.data.sources import (
    MAX_RECORD_BYTES,
    PLAIN,
    BadRow,
    ReadOptions,
    Row,
    RowFile,
    iter_conll,
    iter_csv,
    iter_jsonl,
    read_rows,
)
from tunelab.errors import DataError, format_location

LABEL_COLUMNS = ("label", "category", "intent", "class", "labels")
_SPAN = 2**40  # a LeanItem's (offset, size) as offset * _SPAN + size: sizes are far below a TiB
# Keys whose string values are structure, not content: never scanned, trimmed or redacted. `provenance` is what a
# feedback export (tunelab.feedback) records about each row: request ids, reviewer, times; never training text.
STRUCTURAL_KEYS = {"role", "from", "type", "_synthetic", "id", "tool_call_id", "name", "provenance"}


@dataclass(slots=True)
class Item:
    source: str
    index: int
    line: int | None
    row: dict[str, Any]
    record: Record | None = None
    error: str | None = None
    label: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    input_text: str = ""
    full_text: str = ""

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else f"{self.source}#{self.index}"

    def location(self) -> dict[str, Any]:
        return {"file": self.source, "line": self.line, "record": self.index}


class Parse(NamedTuple):
    """How a dataset's rows were parsed: what a LeanItem needs to parse its row again."""

    fmt: str | None
    columns: Mapping[str, str] | None
    label_column: str | None


class LeanItem(Item):
    """An Item for checking big files (`load_dataset(lean=True)`, `data check`): a JSONL record keeps only where
    its line is (read again from the file, `RowFile`), any other row is kept packed; its fields, record and texts
    are derived again on each access, so memory does not grow with the records' size. Setting them is accepted and
    dropped (they follow from the row); setting the row keeps the new row, packed."""

    __slots__ = ("_packed", "_parse", "_file")
    _packed: int | bytes | dict[str, Any]  # a line's offset and size (see _SPAN), a marshalled row, or the row

    def __init__(self, source: str, index: int, line: int | None, row: dict[str, Any], file: RowFile | None = None,
                 span: tuple[int, int] | None = None) -> None:  # fmt: skip
        self._parse: Parse | None = None
        self._file = file if span is not None else None
        Item.__init__(self, source, index, line, row if self._file is None else {})
        if self._file is not None and span is not None:
            self._packed = span[0] * _SPAN + span[1]  # one int, not a tuple of two: a million of them add up

    @property  # type: ignore[override]
    def row(self) -> dict[str, Any]:
        packed = self._packed
        if isinstance(packed, int):
            assert self._file is not None
            return self._file.row(*divmod(packed, _SPAN))
        return marshal.loads(packed) if isinstance(packed, bytes) else packed

    @row.setter
    def row(self, value: dict[str, Any]) -> None:
        try:
            self._packed = marshal.dumps(value)
        except ValueError:  # a value marshal cannot write (a Parquet timestamp): kept as it is
            self._packed = value

    @property  # type: ignore[override]
    def record(self) -> Record | None:
        p = self._parse
        if self.error is not None or p is None or p.fmt is None:
            return None
        return FORMATS[p.fmt](rename_columns(self.row, p.columns))

    @record.setter
    def record(self, value: Record | None) -> None:
        pass

    @property  # type: ignore[override]
    def fields(self) -> dict[str, str]:
        p = self._parse
        return text_fields(self.row, p.fmt, p.columns, p.label_column) if p else {}

    @fields.setter
    def fields(self, value: dict[str, str]) -> None:
        pass

    @property  # type: ignore[override]
    def input_text(self) -> str:
        rec = self.record
        return "" if rec is None else record_texts(rec)[0]

    @input_text.setter
    def input_text(self, value: str) -> None:
        pass

    @property  # type: ignore[override]
    def full_text(self) -> str:
        rec = self.record
        if rec is None:
            return ""
        text, output = record_texts(rec)
        return f"{text}\n{output}" if output else text

    @full_text.setter
    def full_text(self, value: str) -> None:
        pass


class TextView(Sequence[str]):
    """The input_text or full_text of items, computed when read (LeanItems hold no text)."""

    def __init__(self, items: Sequence[Item], attr: str) -> None:
        self.items, self.attr = items, attr

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [getattr(it, self.attr) for it in self.items[i]]
        return getattr(self.items[i], self.attr)


@dataclass
class Dataset:
    """One file's items plus what was decided about it (format, label column)."""

    path: str
    role: str  # train, eval or test
    format: str | None
    label_column: str | None
    items: list[Item]
    file_error: str | None = None

    @property
    def valid(self) -> list[Item]:
        return [it for it in self.items if it.error is None]


def normalize(text: str) -> str:
    """What 'the same text' means: Unicode NFKC, case-folded, whitespace collapsed, trimmed."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


def text_hash(text: str) -> str:
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()[:16]


def load_dataset(
    path: str,
    role: str = "train",
    fmt: str = "auto",
    columns: Mapping[str, str] | None = None,
    label_column: str | None = None,
    split: str = "train",
    max_samples: int | None = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
    options: ReadOptions = PLAIN,
    lean: bool = False,
) -> Dataset:
    """Read and parse every row of `path`, keeping bad rows (and records over `max_record_bytes`) as items
    with an error; a file with no record at all is a file error. `lean`: LeanItems (for checks of big files;
    slower to read, a fraction of the memory)."""
    items: list[Item] = []
    file_error = None
    p = Path(path).expanduser()
    rows_file = RowFile.open(p) if lean and options.kind(p) == "jsonl" else None
    try:
        for entry in _rows(path, split, max_record_bytes, options):
            if max_samples is not None and len(items) >= max_samples:
                break
            if isinstance(entry, Item):
                items.append(entry)
            elif lean:
                items.append(LeanItem(entry.source, entry.index, entry.line, entry.data, rows_file, entry.span))
            else:
                items.append(Item(entry.source, entry.index, entry.line, entry.data))
    except DataError as e:
        file_error = str(e)
    if not items and file_error is None:
        file_error = f"{path}: no records (the file is empty or holds only blank lines or a header)"
    first = next((it.row for it in items if it.error is None), None)
    try:
        name = fmt if fmt != "auto" else (detect_format(set(rename_columns(first, columns))) if first else None)
    except FieldError as e:
        name, file_error = None, file_error or f"{path}: {e}"
    if first is not None and name is None:
        file_error = file_error or (
            f"{path}: cannot detect the format from the fields {', '.join(map(str, first))}; "
            f"name one of {', '.join(FORMATS)} (and map columns if the names differ)" + mapping_hint(None, first)
        )
    mapped = (columns or {}).get("label")
    label = label_column or (mapped if mapped and not is_template(mapped) else None) or _detect_label(first, name)
    parse = Parse(name, columns, label)
    for it in items:
        if isinstance(it, LeanItem):
            it._parse = parse
        if it.error is None:
            _parse(it, name, columns, label)
    return Dataset(path, role, name, label, items, file_error)


def _rows(path: str, split: str, limit: int, options: ReadOptions) -> Iterator[Row | Item]:
    """Line-oriented files keep every bad line as an item with its error; other sources stop at the first."""
    p = Path(path)
    tolerant = {"jsonl": iter_jsonl, "csv": iter_csv, "conll": iter_conll}.get(options.kind(p) or "")
    if tolerant is None or not p.is_file() or p.stat().st_size == 0:
        yield from read_rows(path, split, limit, options)
        return
    for row in tolerant(p, limit, options):
        if isinstance(row, BadRow):
            yield Item(row.source, row.index, row.line, {}, error=format_location(row.source, row.line) + row.problem)
        else:
            yield row


def _detect_label(row: dict[str, Any] | None, fmt: str | None) -> str | None:
    if row is None:
        return None
    if fmt == "kto":
        return "label"
    return next((c for c in LABEL_COLUMNS if c in row and isinstance(row[c], (str, int, bool))), None)


def text_fields(
    row: dict[str, Any], fmt: str | None, columns: Mapping[str, str] | None, label_column: str | None
) -> dict[str, str]:
    """The string leaves (by path) of the fields the format reads as text; never ids, labels or other columns."""
    used = text_sources(fmt, columns) if fmt else set()
    out = {path: text for key, value in row.items() if key in used and key not in STRUCTURAL_KEYS
           for path, text in string_leaves(value, str(key))}  # fmt: skip
    if label_column:
        out.pop(label_column, None)
    return out


def _parse(it: Item, fmt: str | None, columns: Mapping[str, str] | None, label_column: str | None) -> None:
    row = it.row  # once: a LeanItem's row is read again from its file (or unpacked) on every access
    it.fields = text_fields(row, fmt, columns, label_column)
    if label_column:
        value = row.get(label_column)
        it.label = None if value is None or value == "" else str(value)
    if fmt is None:
        it.error = format_location(it.source, it.line, it.index) + "no format (see the file error)"
        return
    try:
        record = FORMATS[fmt](rename_columns(row, columns))
    except FieldError as e:
        it.error = format_location(it.source, it.line, None if it.line else it.index, e.field) + str(e)
        return
    it.record = record
    text, output = record_texts(record)
    it.input_text, it.full_text = text, f"{text}\n{output}" if output else text


def reparse(it: Item, fmt: str | None, columns: Mapping[str, str] | None, label_column: str | None) -> None:
    """Parse an item again after its row changed (trimmed, redacted)."""
    it.error, it.record, it.label, it.input_text, it.full_text = None, None, None, "", ""
    _parse(it, fmt, columns, label_column)


def string_leaves(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, text) for every string in a row, skipping structural keys such as `role`."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            if k not in STRUCTURAL_KEYS:
                yield from string_leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from string_leaves(v, f"{path}[{i}]")


def get_leaf(row: dict[str, Any], path: str) -> Any:
    """The value at a `string_leaves` path inside `row`."""
    node: Any = row
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    return node


def set_leaf(row: dict[str, Any], path: str, new: str) -> None:
    """Set the string at a `string_leaves` path inside `row` (in place)."""
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    node: Any = row
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    last = parts[-1]
    if last.startswith("["):
        node[int(last[1:-1])] = new
    else:
        node[last] = new


def _join(messages: tuple[Message, ...]) -> str:
    return "\n".join(f"{m.role}: {message_text(m)}" for m in messages)


def record_texts(record: Record) -> tuple[str, str]:
    """(input, output): the side a model sees and the side it learns to write."""
    if isinstance(record, Conversation):
        last = max(i for i, m in enumerate(record.messages) if m.role == "assistant")
        return _join(record.messages[:last]), message_text(record.messages[last])
    if isinstance(record, PromptCompletion):
        return record.prompt, record.completion
    if isinstance(record, Text):
        return record.text, ""
    if isinstance(record, Preference):
        return _join(record.prompt), _join(record.chosen) + "\n" + _join(record.rejected)
    if isinstance(record, UnpairedPreference):
        return _join(record.prompt), _join(record.completion)
    if isinstance(record, Prompt):
        return _join(record.messages), ""
    if isinstance(record, Labelled):
        return record.text, record.label
    if isinstance(record, TokenTags):
        return " ".join(record.tokens), " ".join(record.tags)
    raise TypeError(f"unknown record type {type(record).__name__}")
