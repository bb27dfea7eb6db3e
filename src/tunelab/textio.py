"""Reading the text files users give us: UTF-8 checked, binary refused, records bounded in size.

A file that is not UTF-8 text (a binary file, or another encoding such as Latin-1) is one clear
`DataError` naming the file, the line and the byte offset of the first bad byte, never a
`UnicodeDecodeError` traceback. A NUL byte means binary data: no JSON, CSV or YAML text holds one raw.
`lines` reads a file line by line without ever holding more than `limit` bytes of one line, so a
single huge record is measured and refused before anything parses it. It is the lowest floor: the
config loader and the data readers both use it.

A data file in another encoding is read by naming it (`encoding: latin-1`, or `auto` to detect it with
charset-normalizer): `open_utf8` hands the readers the file's bytes transcoded to UTF-8 (spooled to a
temporary file past 64 MiB), so line splitting, byte offsets and size limits work as for UTF-8; a byte the
named encoding cannot decode is the same kind of error, with the byte offset in the original file.
"""

from __future__ import annotations

import codecs
import io
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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
            "(binary data, or another encoding such as Latin-1 or UTF-16: name it with the dataset's `encoding:`, "
            "or `encoding: auto` to detect it, or re-save the file as UTF-8)",
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


def read_text(path: str | Path, what: str = "file", encoding: str = "utf-8") -> str:
    """The whole file as text (a leading BOM dropped); unreadable or undecodable is a DataError. `encoding`:
    a codec name, or auto (see `detect_encoding`)."""
    try:
        with open_utf8(path, encoding) as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read {what}: {e.strerror}", where=str(path)) from None
    start = len(BOM) if raw.startswith(BOM) else 0
    return decode(raw[start:], str(path), offset=start)


# --------------------------------------------------------------------------- other encodings

UTF8 = "utf-8"
_SPOOL = 64 * 2**20  # transcoded data stays in memory up to this size
_SAMPLE = 2**20  # bytes charset-normalizer looks at
_NEAR_TIE = 0.05  # charset-normalizer "chaos" (mess ratio) within which candidates count as equally clean
_WESTERN = {"cp1252", "latin_1", "iso8859_15"}
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"), (BOM, UTF8))  # fmt: skip


def codec_name(encoding: str) -> str:
    """The canonical codec name (`latin1` -> iso8859-1), `auto` kept; unknown is a ValueError naming it."""
    if encoding == "auto":
        return encoding
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise ValueError(f"unknown encoding {encoding!r}; expected a Python codec name (utf-8, latin-1, cp1252, "
                         "utf-16, ...) or auto") from None  # fmt: skip


def detect_encoding(path: str | Path) -> str:
    """The encoding of a file: a BOM's, else UTF-8 when its first MiB decodes as UTF-8, else charset-normalizer's
    best guess from that sample (a DataError when it has none, e.g. for binary data)."""
    with Path(path).expanduser().open("rb") as f:
        sample = f.read(_SAMPLE)
    for bom, name in _BOMS:
        if sample.startswith(bom):
            return name
    if isinstance(text(_whole_chars(sample)), str):
        return UTF8
    from charset_normalizer import from_bytes

    found = list(from_bytes(sample))
    if not found or b"\0" in sample and not found[0].encoding.startswith("utf_"):
        raise DataError("encoding: auto could not tell the file's encoding (binary data?); name it, e.g. "
                        "encoding: latin-1", where=str(path))  # fmt: skip
    # Short Western text decodes about as cleanly in several single-byte code pages; Windows-1252 (which
    # reads every printable Latin-1 byte the same) is by far the most common of them, so it wins near-ties.
    close = [m for m in found if m.chaos <= found[0].chaos + _NEAR_TIE]
    western = next((m for m in close if _WESTERN & set(m.could_be_from_charset)), None)
    return codec_name("cp1252" if western else found[0].encoding)


def _whole_chars(sample: bytes) -> bytes:
    """`sample` without a UTF-8 sequence cut at its end (the sample stops at a byte count, not a character)."""
    for back in range(1, min(4, len(sample)) + 1):
        byte = sample[-back]
        if byte < 0x80:
            return sample
        if byte >= 0xC0:  # a lead byte: drop it and what follows it when the sequence is incomplete
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return sample if back >= need else sample[:-back]
    return sample


@contextmanager
def open_utf8(path: str | Path, encoding: str = UTF8) -> Iterator[BinaryIO]:
    """The file's bytes as UTF-8, readable like the file: the file itself for UTF-8, else transcoded from
    `encoding` (auto: detected). A byte that cannot be decoded is a DataError with its line and byte offset."""
    p = Path(path).expanduser()
    name = codec_name(detect_encoding(p) if encoding == "auto" else encoding)
    if name == UTF8:
        with p.open("rb") as f:
            yield f
        return
    with p.open("rb") as src, tempfile.SpooledTemporaryFile(_SPOOL) as out:
        _transcode(src, out, name, str(p))
        out.seek(0)
        yield out  # type: ignore[misc]  # a SpooledTemporaryFile reads like a binary file


def _transcode(src: BinaryIO, out: BinaryIO | io.BytesIO | tempfile.SpooledTemporaryFile[bytes], name: str,
               where: str) -> None:  # fmt: skip
    decoder = codecs.getincrementaldecoder(name)("strict")
    offset, lines = 0, 1
    while True:
        chunk = src.read(_SKIP_CHUNK)
        try:
            piece = decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as e:  # e.object: the decoder's held-back bytes, then this chunk
            at = offset - (len(e.object) - len(chunk)) + e.start
            raise DataError(f"not {name} text: byte 0x{e.object[e.start]:02x} at byte offset {at:,} cannot be "
                            f"decoded as {name} (check the dataset's `encoding:`, or try auto)",
                            where=where, line=lines + e.object[: e.start].count(b"\n")) from None  # fmt: skip
        data = piece.encode(UTF8)
        lines += data.count(b"\n")
        out.write(data)
        offset += len(chunk)
        if not chunk:
            return


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
