"""Read rows from a user's data: JSONL, JSON (array), CSV/TSV, Parquet, CoNLL column files, local `datasets`
folders, hub ids.

Every row comes with where it came from (file, 1-based line for line-oriented files, 0-based record index
otherwise) so that any later error can point at it. Reading is lazy where the format allows. `ReadOptions` (a
dataset's `reader`, `encoding` and `delimiter`) say how a file is read when its suffix and UTF-8 do not; a CSV
whose header holds another separator (a TSV named .csv) is one error that names the `delimiter:` to set.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tunelab import textio
from tunelab.config import DatasetConfig
from tunelab.errors import DataError
from tunelab.textio import MAX_RECORD_BYTES, size_text

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv", ".tab": "csv",
            ".parquet": "parquet", ".conll": "conll"}  # fmt: skip
_TABBED = (".tsv", ".tab")
_SEPARATORS = {"\t": "a tab", ",": "a comma", ";": "a semicolon", "|": "a bar"}


@dataclass(frozen=True)
class ReadOptions:
    """How to read a file: `reader` (auto: by suffix), its text `encoding` (auto: detected) and CSV `delimiter`
    (None: a tab for .tsv/.tab, else a comma)."""

    reader: str = "auto"
    encoding: str = "utf-8"
    delimiter: str | None = None

    @classmethod
    def of(cls, ds: DatasetConfig) -> ReadOptions:
        return cls(ds.reader, ds.encoding, ds.delimiter)

    def kind(self, p: Path) -> str | None:
        return self.reader if self.reader != "auto" else SUFFIXES.get(p.suffix.lower())

    def separator(self, p: Path) -> str:
        return self.delimiter or ("\t" if p.suffix.lower() in _TABBED else ",")


PLAIN = ReadOptions()


@dataclass(frozen=True)
class Row:
    data: dict[str, Any]
    source: str
    index: int  # 0-based record index within the source
    line: int | None = None  # 1-based line in the file, where the format has lines
    span: tuple[int, int] | None = None  # (byte offset, size) of a JSONL line read from the file itself, not transcoded

    def error(self, message: str, field: str | None = None) -> DataError:
        return DataError(
            message, where=self.source, line=self.line, record=None if self.line else self.index, field=field
        )


class RowFile:
    """A JSONL file's rows read again by their `Row.span`: a big check keeps where each record is, not the record.
    The file is opened once, before it is read; changing it afterwards is an error, never a wrong row."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        fd = os.open(Path(path).expanduser(), os.O_RDONLY)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a folder (or a pipe) opens too, but has no lines to reread
            os.close(fd)
            raise IsADirectoryError(self.path)
        self.fd = fd
        self.stamp = self._stamp()

    @classmethod
    def open(cls, path: str | Path) -> RowFile | None:
        """None where the file cannot be opened (it is not a file, or not readable): reading it says why."""
        try:
            return cls(path)
        except OSError:
            return None

    def _stamp(self) -> tuple[int, int]:
        st = os.fstat(self.fd)
        return st.st_size, st.st_mtime_ns

    def row(self, offset: int, size: int) -> dict[str, Any]:
        if self._stamp() != self.stamp:
            raise DataError("the file changed while it was being checked; run the check again", where=self.path)
        data: dict[str, Any] = json.loads(os.pread(self.fd, size, offset))
        return data

    def __del__(self) -> None:
        if (fd := getattr(self, "fd", None)) is not None:
            os.close(fd)


def read_rows(path: str, split: str = "train", max_record_bytes: int = MAX_RECORD_BYTES,
              options: ReadOptions = PLAIN) -> Iterator[Row]:  # fmt: skip
    """Yield rows of a file, a saved `datasets` folder, or a hub dataset id; a record over `max_record_bytes`
    (data.max_record_bytes) is an error, found before it is parsed where the format has lines."""
    p = Path(path).expanduser()
    if p.is_dir():
        yield from _bounded(_read_datasets_folder(p, split), max_record_bytes)
        return
    if not p.exists():
        if _looks_like_hub_id(path):
            yield from _bounded(_read_hub(path, split), max_record_bytes)
            return
        raise DataError(
            "file not found (expected a .jsonl/.json/.csv/.tsv/.parquet/.conll file, a datasets folder or a hub id)",
            where=path,
        )
    kind = options.kind(p)
    if kind is None:
        raise DataError(f"unsupported file type {p.suffix!r}; expected one of {', '.join(SUFFIXES)}, or name the "
                        "reader (reader: jsonl, json, csv, parquet or conll)", where=path)  # fmt: skip
    if p.stat().st_size == 0:
        raise DataError("file is empty", where=path)
    yield from READERS[kind](p, max_record_bytes, options)


@dataclass(frozen=True)
class BadRow:
    """A line of a line-oriented file (JSONL, CSV) that is not a record; `problem` says why."""

    source: str
    index: int
    line: int
    problem: str


def too_big(size: int, limit: int) -> str:
    return (f"record is {size_text(size)}, over the limit of {size_text(limit)} (data.max_record_bytes; raise it "
            "if records this big are intended)")  # fmt: skip


def iter_jsonl(
    p: Path, max_record_bytes: int = MAX_RECORD_BYTES, options: ReadOptions = PLAIN
) -> Iterator[Row | BadRow]:
    """Every non-blank line as a Row or a BadRow: the data toolkit reports all bad lines, training stops at one.
    A line's size is checked before it is read whole or parsed; binary data stops the file at once."""
    index = 0
    with textio.open_utf8(p, options.encoding) as f:
        direct = isinstance(f, io.BufferedReader)  # not transcoded: a line's bytes can be read again at its offset
        for ln in textio.lines(f, max_record_bytes):
            if ln.raw is not None and not ln.raw.strip():
                continue
            data, problem = _json_line(ln, p, max_record_bytes)
            if problem:
                yield BadRow(str(p), index, ln.number, problem)
            else:
                yield Row(data, str(p), index, ln.number, (ln.offset, ln.size) if direct else None)
            index += 1


def _json_line(ln: textio.Line, p: Path, limit: int) -> tuple[Any, str | None]:
    """(the parsed object, None) or (None, why the line is not a record); binary data raises at once."""
    if ln.raw is None:
        return None, too_big(ln.size, limit)
    got = textio.text(ln.raw, ln.offset)
    if isinstance(got, textio.NotText):
        if got.binary:  # a binary file would be thousands of "bad lines"
            raise DataError(got.message, where=str(p), line=ln.number)
        return None, got.message
    try:
        data = json.loads(got)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e.msg} at column {e.colno})"
    return (data, None) if isinstance(data, dict) else (None, f"expected a JSON object, got {type(data).__name__}")


def decode_line(ln: textio.Line, where: str) -> str:
    assert ln.raw is not None
    return textio.decode(ln.raw, where, offset=ln.offset, line=ln.number)


class _CsvLines:
    """Decoded lines for the csv module, refusing binary data and lines over the limit, and counting the bytes
    each record took (a quoted field may span lines)."""

    def __init__(self, f: BinaryIO, where: str, limit: int) -> None:
        self.lines, self.where, self.limit, self.used = textio.lines(f, limit), where, limit, 0

    def __iter__(self) -> Iterator[str]:
        for ln in self.lines:
            if ln.raw is None:
                raise DataError(too_big(ln.size, self.limit), where=self.where, line=ln.number)
            self.used += ln.size + len(ln.end)
            yield decode_line(ln, self.where) + ln.end.decode()  # quoted cells keep their own line breaks


def iter_csv(p: Path, max_record_bytes: int = MAX_RECORD_BYTES, options: ReadOptions = PLAIN) -> Iterator[Row | BadRow]:
    """Every CSV row (after the header) as a Row or, with too many or too few fields or over the size limit, a
    BadRow. Binary data, a line over the limit or broken quoting stop the file (the rows after it cannot be
    told apart)."""
    csv.field_size_limit(max(csv.field_size_limit(), max_record_bytes))  # ours is the limit that counts
    sep = options.separator(p)
    with textio.open_utf8(p, options.encoding) as f:
        lines = _CsvLines(f, str(p), max_record_bytes)
        reader = csv.DictReader(lines, restkey="\0extra", delimiter=sep)
        try:
            if not reader.fieldnames:
                raise DataError("CSV has no header row", where=str(p))
            _check_separator(reader.fieldnames, sep, p)
            width = len(reader.fieldnames)
            index, start, lines.used = 0, reader.line_num + 1, 0
            for data in reader:
                yield _csv_row(data, str(p), index, start, width, lines.used, max_record_bytes)
                index, start, lines.used = index + 1, reader.line_num + 1, 0
        except csv.Error as e:
            raise DataError(f"not valid CSV ({e})", where=str(p), line=reader.line_num) from None


def _check_separator(header: Sequence[str], sep: str, p: Path) -> None:
    """A one-field header that holds another separator is a file with that separator (a TSV named .csv)."""
    if len(header) != 1:
        return
    other = next((c for c in _SEPARATORS if c != sep and c in header[0]), None)
    if other is not None:
        raise DataError(f"the header row has {_SEPARATORS[other]}, not {_SEPARATORS.get(sep, repr(sep))}, between "
                        f"its field names: the fields look separated by {_SEPARATORS[other]}; set delimiter: "
                        f"{repr(other).replace(chr(39), chr(34))} on the dataset"
                        + (" (or name the file .tsv)" if other == "\t" else ""), where=str(p), line=1)  # fmt: skip


def _csv_row(
    data: dict[str, Any], where: str, index: int, line: int, width: int, size: int, limit: int
) -> Row | BadRow:
    if size > limit:
        return BadRow(where, index, line, too_big(size, limit))
    if "\0extra" in data:
        return BadRow(where, index, line, f"row has more fields than the header ({width})")
    if any(v is None for v in data.values()):
        return BadRow(where, index, line, f"row has fewer fields than the header ({width})")
    return Row(dict(data), where, index, line)


def _strict(rows: Iterator[Row | BadRow], p: Path, empty: str) -> Iterator[Row]:
    """The first bad line is an error; a file with no record at all too."""
    n = 0
    for row in rows:
        if isinstance(row, BadRow):
            raise DataError(row.problem, where=row.source, line=row.line)
        n += 1
        yield row
    if n == 0:
        raise DataError(empty, where=str(p))


def _read_jsonl(p: Path, limit: int, options: ReadOptions = PLAIN) -> Iterator[Row]:
    return _strict(iter_jsonl(p, limit, options), p, "file has no records (only blank lines)")


def _read_csv(p: Path, limit: int, options: ReadOptions = PLAIN) -> Iterator[Row]:
    return _strict(iter_csv(p, limit, options), p, "CSV has a header but no rows")


def _read_conll(p: Path, limit: int, options: ReadOptions = PLAIN) -> Iterator[Row]:
    return _strict(iter_conll(p, limit, options), p, "column file has no sentences (only blank lines)")


def _read_json(p: Path, limit: int, options: ReadOptions = PLAIN) -> Iterator[Row]:
    text = textio.read_text(p, "JSON file", options.encoding)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON ({e.msg} at column {e.colno})", where=str(p), line=e.lineno) from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} wrappers are common
    if not isinstance(data, list):
        raise DataError("expected a JSON array of records (or JSONL with one object per line)", where=str(p))
    if not data:
        raise DataError("JSON array is empty", where=str(p))
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise DataError(f"expected a JSON object, got {type(item).__name__}", where=str(p), record=i)
    yield from _bounded((Row(item, str(p), i) for i, item in enumerate(data)), limit)


def _read_parquet(p: Path, limit: int, options: ReadOptions = PLAIN) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"cannot read Parquet: {e}", where=str(p)) from None
    if table.num_rows == 0:
        raise DataError("Parquet file has no rows", where=str(p))
    yield from _bounded((Row(data, str(p), i) for i, data in enumerate(table.to_pylist())), limit)


def _bounded(rows: Iterator[Row], limit: int) -> Iterator[Row]:
    """Rows of formats without lines (JSON arrays, Parquet, datasets): each record's size is measured from its
    values, before anything downstream (formats, tokenizer, data checks) touches it."""
    for row in rows:
        size = value_bytes(row.data)
        if size > limit:
            raise row.error(too_big(size, limit))
        yield row


def value_bytes(value: Any) -> int:
    """About the size of a value as UTF-8 JSON: the bytes of its strings, 8 per number."""
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, dict):
        return sum(value_bytes(k) + value_bytes(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(value_bytes(v) for v in value)
    return 8


def _read_datasets_folder(p: Path, split: str) -> Iterator[Row]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except FileNotFoundError:
        raise DataError(
            "folder is not a saved datasets folder (save_to_disk) and holds no data file", where=str(p)
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"split {split!r} not found; available: {', '.join(ds)}", where=str(p), field="split")
        ds = ds[split]
    for i, data in enumerate(ds):
        yield Row(dict(data), str(p), i)


def _looks_like_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not path.startswith((".", "/", "~")) and "." not in Path(path).suffix


def _read_hub(repo_id: str, split: str) -> Iterator[Row]:
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, split=split)
    except Exception as e:
        raise DataError(
            f"could not load hub dataset (no network or not found: {type(e).__name__}). "
            "Download it elsewhere and point data.*.path at a local file or a save_to_disk folder.",
            where=repo_id,
        ) from None
    for i, data in enumerate(ds):
        yield Row(dict(data), repo_id, i)


def iter_conll(
    p: Path, max_record_bytes: int = MAX_RECORD_BYTES, options: ReadOptions = PLAIN
) -> Iterator[Row | BadRow]:
    """CoNLL-style column files: one `word ... TAG` line per token (whitespace-separated, or `delimiter`), a blank
    line between sentences, `-DOCSTART-` lines skipped. Each sentence is a row {tokens, tags}: the first column
    and the last; the line of its first token locates it. A line with another number of columns than the file's
    first token line makes its sentence a BadRow (left out and reported)."""
    sent = _Sentence()
    index, width = 0, None
    with textio.open_utf8(p, options.encoding) as f:
        for ln in textio.lines(f, max_record_bytes):
            cols = None if ln.raw is None else _columns(decode_line(ln, str(p)), options.delimiter)
            if cols is not None and (not cols or cols[0] == "-DOCSTART-"):
                if sent.started:
                    yield sent.row(p, index)
                    index += 1
                sent = _Sentence()
                continue
            width = width or (len(cols) if cols else None)
            sent.add(ln, cols, width, max_record_bytes)
    if sent.started:
        yield sent.row(p, index)


def _columns(text: str, delimiter: str | None) -> list[str]:
    if not text.strip():
        return []
    return [c.strip() for c in text.split(delimiter)] if delimiter else text.split()


class _Sentence:
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.tags: list[str] = []
        self.start, self.size = 0, 0
        self.problem: str | None = None

    @property
    def started(self) -> bool:
        return bool(self.start)

    def add(self, ln: textio.Line, cols: list[str] | None, width: int | None, limit: int) -> None:
        self.start, self.size = self.start or ln.number, self.size + ln.size
        if self.problem:
            return
        if cols is None or self.size > limit:
            self.problem = too_big(max(self.size, ln.size), limit)
        elif len(cols) < 2:
            self.problem = f"line {ln.number}: expected at least two columns (a word and its tag), got {len(cols)}"
        elif len(cols) != width:
            self.problem = f"line {ln.number}: {len(cols)} columns, but the file's first token line has {width}"
        else:
            self.tokens.append(cols[0])
            self.tags.append(cols[-1])

    def row(self, p: Path, index: int) -> Row | BadRow:
        if self.problem:
            return BadRow(str(p), index, self.start, self.problem)
        return Row({"tokens": self.tokens, "tags": self.tags}, str(p), index, self.start)


READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet, "conll": _read_conll}
