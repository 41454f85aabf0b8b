"""Streaming reader and cleaner for AmazonTitles-1.3MM ``trn.json`` and files like it.

Reads JSON Lines or one JSON array, plain or gzip-compressed (detected from the bytes, not the
name), UTF-8 with or without a BOM, or UTF-16 with a BOM. Memory does not depend on the file's
size: lines are parsed one at a time, an array element by element.

Each record comes out as a :class:`Record`: either a parsed row or the reason it could not be
read (``malformed_json``, ``not_utf8``, ``not_an_object``), so a few bad lines are counted, not
fatal. A file that cannot be read at all (missing, a folder, truncated gzip, a broken array)
raises :class:`DataError` with one line that names the file and the fix.
"""

from __future__ import annotations

import codecs
import gzip
import html
import io
import itertools
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from prodesc.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Record:
    line: int
    """1-based line number (JSON Lines) or element number (JSON array)."""
    row: Any = None
    """The parsed JSON value, when it parsed."""
    error: str = ""
    """Why it could not be read: '', 'malformed_json', 'not_utf8' or 'not_an_object'."""
    detail: str = ""
    """The parser's message, for the first-error report."""


@dataclass
class SourceInfo:
    path: Path
    bytes: int
    compression: str = "none"
    encoding: str = "utf-8"
    layout: str = "jsonl"


class RawReader:
    """Iterate over the records of one raw file; ``position()`` gives raw bytes consumed so far."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"data file {self.path} not found: check data.source or put the file in data/raw/")
        if self.path.is_dir():
            raise DataError(f"data file {self.path} is a folder: give the path of trn.json or trn.json.gz itself")
        try:
            self._raw: BinaryIO = open(self.path, "rb")
        except PermissionError:
            raise DataError(f"cannot read {self.path}: permission denied (fix the file's permissions)") from None
        size = self.path.stat().st_size
        if size == 0:
            self._raw.close()
            raise DataError(f"data file {self.path} is empty: check the download")
        self.info = SourceInfo(path=self.path, bytes=size)
        magic = self._raw.read(2)
        self._raw.seek(0)
        stream: BinaryIO = self._raw
        if magic == GZIP_MAGIC:
            self.info.compression = "gzip"
            stream = gzip.GzipFile(fileobj=self._raw, mode="rb")  # type: ignore[assignment]
        self._stream = io.BufferedReader(stream, buffer_size=READ_CHUNK)  # type: ignore[arg-type]

    def position(self) -> int:
        """Bytes of the file on disk read so far (compressed bytes for .gz), for progress bars."""
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        self._stream.close()
        self._raw.close()

    def __enter__(self) -> "RawReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Record]:
        try:
            yield from self._records()
        except (EOFError, gzip.BadGzipFile, zlib.error) as err:
            raise DataError(
                f"{self.path} is a truncated or corrupt gzip file ({err}): download it again"
            ) from None

    def _records(self) -> Iterator[Record]:
        head = self._stream.peek(4)[:4]
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            self.info.encoding = "utf-16"
            text = io.TextIOWrapper(self._stream, encoding="utf-16", newline="")  # type: ignore[arg-type]
            chunk = text.read(READ_CHUNK)
            if chunk.lstrip().startswith("["):
                self.info.layout = "json-array"
                pending = [chunk]
                yield from _array_records(lambda n: pending.pop() if pending else text.read(n), self.path)
            else:
                first_lines = io.StringIO(chunk + text.readline(), newline="")
                yield from _jsonl_lines(itertools.chain(first_lines, text))
            return
        if head.startswith(codecs.BOM_UTF8):
            self.info.encoding = "utf-8-sig"
            self._stream.read(3)
        if self._stream.peek(READ_CHUNK).lstrip().startswith(b"["):
            self.info.layout = "json-array"
            text = io.TextIOWrapper(self._stream, encoding="utf-8", newline="")  # type: ignore[arg-type]
            yield from _array_records(text.read, self.path)
        else:
            yield from _jsonl_lines(self._stream)


def _parse(line: bytes | str, number: int) -> Record:
    try:
        row = json.loads(line)
    except UnicodeDecodeError as err:
        return Record(number, error="not_utf8", detail=str(err))
    except json.JSONDecodeError as err:
        return Record(number, error="malformed_json", detail=err.msg)
    except RecursionError:
        return Record(number, error="malformed_json", detail="nested too deeply")
    if not isinstance(row, dict):
        return Record(number, row=row, error="not_an_object", detail=f"a JSON {type(row).__name__}")
    return Record(number, row=row)


def _jsonl_lines(lines: Iterable[bytes] | Iterable[str]) -> Iterator[Record]:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield _parse(line, number)


def _array_records(read: Callable[[int], str], path: Path) -> Iterator[Record]:
    """Yield the elements of one top-level JSON array without holding the file in memory."""
    decoder = json.JSONDecoder()
    buf, pos, eof, number = "", 0, False, 0
    started = False

    def fill() -> None:
        nonlocal buf, pos, eof
        try:
            chunk = read(READ_CHUNK)
        except UnicodeDecodeError as err:
            raise DataError(f"{path} is not valid UTF-8 ({err}): re-save it as UTF-8") from None
        if not chunk:
            eof = True
        buf, pos = buf[pos:] + chunk, 0

    while True:
        while pos < len(buf) and buf[pos] in " \t\r\n,":
            if buf[pos] == "," and not started:
                break
            pos += 1
        if pos >= len(buf):
            if eof:
                raise DataError(f"{path}: the JSON array is not closed with ']' (truncated file?): download it again")
            fill()
            continue
        char = buf[pos]
        if not started:
            if char != "[":
                raise DataError(f"{path}: expected a JSON array starting with '['")
            started, pos = True, pos + 1
            continue
        if char == "]":
            return
        try:
            value, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as err:
            if not eof:
                fill()
                continue
            raise DataError(
                f"{path}: JSON array element {number + 1} is malformed ({err.msg}); one bad element "
                "makes a whole array unreadable: convert the file to JSON Lines (one object per line)"
            ) from None
        if end == len(buf) and not eof:  # a value cut at the chunk edge: read on and parse again
            fill()
            continue
        number += 1
        pos = end
        yield Record(number, row=value) if isinstance(value, dict) else Record(
            number, row=value, error="not_an_object", detail=f"a JSON {type(value).__name__}"
        )


# --------------------------------------------------------------------------- cleaning

_TAG = re.compile(r"<!--.*?-->|</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>", re.S)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")


def clean_text(text: str) -> str:
    """Unescape HTML entities (repeatedly, for double-escaped ``&amp;#8217;``), strip HTML tags
    and control characters, collapse whitespace. Bare ``<`` / ``>`` that are not tags stay."""
    if "&" in text:
        for _ in range(3):
            unescaped = html.unescape(text)
            if unescaped == text:
                break
            text = unescaped
    if "<" in text:
        text = _TAG.sub(" ", text)
    if not text.isprintable():  # fast C check; most rows skip the regex
        text = _CONTROL.sub("", text)
    return " ".join(text.split())  # str.split() splits on all Unicode whitespace, \xa0 included


def row_fields(row: dict[str, Any]) -> tuple[str, str, str] | str:
    """(uid, title, content) from one raw row, or the drop reason when a field is unusable."""
    if "title" not in row:
        return "missing_title"
    if "content" not in row:
        return "missing_content"
    title, content = row["title"], row["content"]
    if not isinstance(title, str) or not isinstance(content, str):
        return "wrong_type"
    uid = row.get("uid")
    return ("" if uid is None else str(uid)), title, content
