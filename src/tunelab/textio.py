"""Reading the text files users give us: UTF-8 checked, binary refused, records bounded in size.

A file that is not UTF-8 text (a binary file, or another encoding such as Latin-1) is one clear
`DataError` naming the file, the line and the byte offset of the first bad byte, never a
`UnicodeDecodeError` traceback. A NUL byte means binary data: no JSON, CSV or YAML text holds one raw.
`lines` reads a file line by line without ever holding more than `limit` bytes of one line, so a
single huge record is measured and refused before anything parses it. It is the lowest floor: the
config loader and the data readers both use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from tunelab.errors import DataError

BOM = b"\xef\xbb\xbf"
MAX_RECORD_BYTES = 4 * 2**20  # default of data.max_record_bytes: tokenizing a record this big takes ~1.5 GB
_SKIP_CHUNK = 1 << 20  # reading past an over-long line, a chunk at a time


@dataclass(frozen=True)
class NotText:
    """Why bytes are not UTF-8 text: `index` of the first bad byte in them, `binary` for a NUL byte."""

    message: str
    index: int
    binary: bool


def text(raw: bytes, offset: int = 0) -> str | NotText:
    """`raw` decoded, or why it is not UTF-8 text; `offset` (where `raw` starts in its file) makes the message's
    byte offset absolute."""
    nul = raw.find(b"\0")
    if nul >= 0:
        return NotText(f"binary data (a NUL byte at byte offset {offset + nul:,}), not UTF-8 text", nul, True)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return NotText(
            f"not UTF-8 text: byte 0x{raw[e.start]:02x} at byte offset {offset + e.start:,} cannot be decoded "
            "(binary data, or another encoding such as Latin-1 or UTF-16: re-save the file as UTF-8)",
            e.start,
            False,
        )


def decode(raw: bytes, where: str, offset: int = 0, line: int | None = None) -> str:
    """`raw` as UTF-8 text, or a DataError naming the file, the line (given, or counted in `raw`) and the byte
    offset of the first bad byte (`offset` is where `raw` starts in the file)."""
    got = text(raw, offset)
    if isinstance(got, NotText):
        raise DataError(got.message, where=where, line=line or raw.count(b"\n", 0, got.index) + 1)
    return got


def read_text(path: str | Path, what: str = "file") -> str:
    """The whole file as UTF-8 text (a leading BOM dropped); unreadable or undecodable is a DataError."""
    try:
        raw = Path(path).expanduser().read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {what}: {e.strerror}", where=str(path)) from None
    start = len(BOM) if raw.startswith(BOM) else 0
    return decode(raw[start:], str(path), offset=start)


class Line(NamedTuple):  # a tuple: one per line of a big file
    number: int  # 1-based
    offset: int  # byte offset of its first byte in the file
    size: int  # bytes, without the line break
    raw: bytes | None  # None when size is over the limit: never read into memory whole
    end: bytes = b"\n"  # the line break it had: \n, \r\n, or nothing at the end of the file


def lines(f: BinaryIO, limit: int) -> Iterator[Line]:
    """Every line of a binary file with its number, byte offset and size (a leading BOM skipped); a line over
    `limit` bytes is skipped through in chunks and yielded with raw=None."""
    offset = number = 0
    if f.read(len(BOM)) == BOM:
        offset = len(BOM)
    else:
        f.seek(0)
    while chunk := f.readline(limit + 2):  # content + "\r\n": one byte more than that is over the limit
        number += 1
        total = len(chunk)
        if chunk.endswith(b"\n") or len(chunk) < limit + 2:
            body = chunk.rstrip(b"\r\n")
            yield Line(number, offset, len(body), body if len(body) <= limit else None, chunk[len(body) :])
        else:
            while chunk and not chunk.endswith(b"\n"):
                chunk = f.readline(_SKIP_CHUNK)
                total += len(chunk)
            end = chunk[len(chunk.rstrip(b"\r\n")) :]
            yield Line(number, offset, total - len(end), None, end)
        offset += total


def size_text(n: int) -> str:
    """1,234 bytes / 3.2 MiB: sizes in messages."""
    return f"{n:,} bytes" if n < 2**20 else f"{n / 2**20:.1f} MiB ({n:,} bytes)"
