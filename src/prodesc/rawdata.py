"""Streaming reader and cleaner for AmazonTitles-1.3MM ``trn.json`` and files like it.

Reads JSON Lines or one JSON array, plain or gzip-compressed, or a member of a zip archive
(``trn.json`` or ``trn.json.gz`` in any of its folders, or the one named; gzip and zip are detected
from the bytes, not the name), UTF-8 with or without a BOM, or UTF-16 with a BOM. A zip member is
streamed out of the archive, never extracted. Memory does not depend on the file's size: lines
are parsed one at a time, an array element by element.

Each record comes out as a :class:`Record`: either a parsed row or the reason it could not be
read (``malformed_json``, ``not_utf8``, ``not_an_object``), so a few bad lines are counted, not
fatal. A file that cannot be read at all (missing, a folder, truncated gzip, a broken array)
raises :class:`DataError` with one line that names the file and the fix.

Two ways to read give the same rows. Iterating a reader (``for record in reader``) parses one
line at a time in Python and reads anything described above. The fast way, used by 01, cuts a
UTF-8 JSON Lines file into blocks of whole lines (:meth:`RawReader.line_blocks`) that pyarrow's
JSON reader parses (:func:`read_block`, which can run in another process); it checks that each
block holds valid UTF-8, one JSON object a line, and string titles and descriptions. Where it
cannot give exactly what iteration gives (a malformed line, a JSON array, UTF-16, a null or
missing field, a number for a uid) it raises :class:`FastPathUnavailable` and the caller
iterates instead. :func:`clean_arrow` is :func:`clean_text` for a whole pyarrow array.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import html
import io
import itertools
import json
import re
import zipfile
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Iterator

from prodesc.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
"""How a zip archive starts: a member's local header, or (an empty archive) the end record."""
DEFAULT_MEMBER = "trn.json"
"""The zip member read when none is named: this name or with .gz, in any folder of the archive."""
LISTED_MEMBERS = 6
"""Member names an error about a zip lists."""
DAMAGED = (EOFError, gzip.BadGzipFile, zlib.error, zipfile.BadZipFile)
"""What reading a truncated or corrupt gzip file or zip member raises."""
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
    """The file's size."""
    compression: str = "none"
    """'none', 'gzip', 'zip' (a plain member of a zip) or 'zip+gzip' (a .gz member)."""
    encoding: str = "utf-8"
    layout: str = "jsonl"
    member: str = ""
    """The zip member read ('' for a file that is not a zip)."""
    data_bytes: int = 0
    """Bytes the rows are stored in, what ``position()`` counts up to: the file's size, or the
    zip member's compressed size."""


def is_zip(path: Path) -> bool:
    """Whether ``path`` is a zip archive (by its first bytes; False for what cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4).startswith(ZIP_MAGIC)
    except OSError:
        return False


class RawReader:
    """Iterate over the records of one raw file; ``position()`` gives raw bytes consumed so far.

    For a zip archive, ``member`` names the member to read (a name matches in any folder, with or
    without .gz; empty: :data:`DEFAULT_MEMBER`); ``setting`` is the config key that chose it, for
    the error that lists the members when none or several match."""

    def __init__(self, path: Path, member: str = "", setting: str = "data.member"):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"data file {self.path} not found: check data.source or put the file in data/raw/")
        if self.path.is_dir():
            raise DataError(f"data file {self.path} is a folder: give the path of trn.json or trn.json.gz itself")
        try:
            self._raw: BinaryIO = open(self.path, "rb", buffering=READ_CHUNK)
        except PermissionError:
            raise DataError(f"cannot read {self.path}: permission denied (fix the file's permissions)") from None
        size = self.path.stat().st_size
        if size == 0:
            self._raw.close()
            raise DataError(f"data file {self.path} is empty: check the download")
        self.info = SourceInfo(path=self.path, bytes=size, data_bytes=size)
        self._entry: zipfile.ZipInfo | None = None
        self._start = 0
        """Where the rows' bytes start in the file (a zip member's header)."""
        try:
            stream: BinaryIO = self._raw
            if self._raw.peek(4)[:4].startswith(ZIP_MAGIC):  # type: ignore[attr-defined]
                self._entry = self._pick_member(member, setting)
                self.info.member = self._entry.filename
                self.info.data_bytes = self._entry.compress_size
                self._start = self._entry.header_offset
                stream = self._open_member(self._raw)
            elif member:
                raise DataError(
                    f"{setting}={member} names a member of a zip archive, but {self.path} is not one: "
                    f"leave {setting} empty"
                )
            self._gzipped = stream.peek(2)[:2] == GZIP_MAGIC  # type: ignore[attr-defined]
        except BaseException:
            self._raw.close()
            raise
        zipped = self._entry is not None
        self.info.compression = {(False, False): "none", (False, True): "gzip", (True, False): "zip",
                                 (True, True): "zip+gzip"}[zipped, self._gzipped]
        if self._gzipped:
            stream = gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[assignment]
        self._stream = io.BufferedReader(stream, buffer_size=READ_CHUNK)  # type: ignore[arg-type]
        self._fast_raw: BinaryIO | None = None

    @property
    def where(self) -> str:
        """The file, or the member and its zip, as error messages name it."""
        return f"{self.info.member} in {self.path}" if self.info.member else str(self.path)

    def _pick_member(self, member: str, setting: str) -> zipfile.ZipInfo:
        try:
            files = [entry for entry in zipfile.ZipFile(self._raw).infolist() if not entry.is_dir()]
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise DataError(
                f"{self.path} starts like a zip archive but cannot be opened ({_first_line(err)}): "
                "the download is incomplete or damaged, download it again"
            ) from None
        want = member or DEFAULT_MEMBER
        names = (want, want + ".gz")
        in_folder = tuple("/" + n for n in names)
        found = [e for e in files if e.filename in names or e.filename.endswith(in_folder)]
        if len(found) == 1:
            return found[0]
        if found:
            listed = ", ".join(e.filename for e in found)
            raise DataError(
                f"{self.path} holds {len(found)} members named {want}: {listed}: "
                f"pick one with {setting}=<its full name>"
            )
        listed = ", ".join(e.filename for e in files[:LISTED_MEMBERS]) or "nothing"
        if len(files) > LISTED_MEMBERS:
            listed += f", ... ({len(files)} files)"
        raise DataError(
            f"{self.path} holds no {want} or {want}.gz (it holds {listed}): "
            f"name the member to read with {setting}=<name>"
        )

    def _open_member(self, raw: BinaryIO) -> BinaryIO:
        """The bytes of the chosen member, read from ``raw`` (a handle on the zip)."""
        assert self._entry is not None
        name = self._entry.filename
        try:
            return zipfile.ZipFile(raw).open(self._entry)  # type: ignore[return-value]
        except NotImplementedError as err:  # e.g. Deflate64 (a RuntimeError too: caught first)
            raise DataError(
                f"{self.where} is compressed in a way Python's zipfile cannot read ({err}): unzip "
                f"{name} yourself and give its path instead of the zip's"
            ) from None
        except RuntimeError as err:  # zipfile's word for "encrypted, password required"
            raise DataError(
                f"{self.where} cannot be read ({err}): unzip {name} yourself and give its path "
                "instead of the zip's"
            ) from None
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise DataError(f"{self.where} is damaged ({_first_line(err)}): download the zip again") from None

    def _open_rows(self, raw: BinaryIO) -> BinaryIO:
        """The rows' bytes read from ``raw``, a new handle on the file: from the zip member, gunzipped."""
        stream = raw if self._entry is None else self._open_member(raw)
        if self._gzipped:
            return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
        return stream

    def position(self) -> int:
        """Bytes of ``info.data_bytes`` read so far (compressed bytes for .gz and zip members),
        for progress bars."""
        try:
            done = (self._fast_raw or self._raw).tell() - self._start
        except (OSError, ValueError):
            return 0
        return min(max(done, 0), self.info.data_bytes)

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
        except DAMAGED as err:
            what = "gzip file" if self.info.compression == "gzip" else "member of a zip archive"
            raise DataError(
                f"{self.where} is a truncated or corrupt {what} ({err}): download it again"
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
                yield from _array_records(lambda n: pending.pop() if pending else text.read(n), self.where)
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
            yield from _array_records(text.read, self.where)
        else:
            yield from _jsonl_lines(self._stream)

    def line_blocks(self) -> Iterator[Block]:
        """The file in blocks of whole lines, about ``FAST_BLOCK`` bytes each, for
        :func:`read_block`, without a UTF-8 BOM: for a plain file, (path, start, end) byte ranges
        found by seeking (whoever reads a block reads it from the file); for gzip and zip
        members, the decompressed bytes. Raises :class:`FastPathUnavailable` at once for a file
        that is not UTF-8 JSON Lines of objects (a JSON array, UTF-16, ...), and where it cannot
        be read to the end (the line reader then says what is wrong). Independent of iteration:
        the reader can still be iterated from the start afterwards."""
        raw: BinaryIO = open(self.path, "rb", buffering=READ_CHUNK)
        self._fast_raw = raw  # position() follows this handle until the blocks are done
        try:
            if self.info.compression != "none":
                yield from self._decompressed_blocks(self._open_rows(raw))
                return
            start = self._fast_start(raw.read(FAST_HEAD))
            size = self.info.bytes
            while start < size:
                end = start + FAST_BLOCK
                if end < size:
                    raw.seek(end)
                    while True:  # on to the end of the line
                        window = raw.read(FAST_HEAD)
                        newline = window.find(b"\n")
                        if newline >= 0 or not window:
                            end = raw.tell() - len(window) + newline + 1 if newline >= 0 else size
                            break
                end = min(end, size)
                yield (str(self.path), start, end)
                start = end
        finally:
            self._fast_raw = None
            raw.close()

    def _fast_start(self, head: bytes) -> int:
        """Where the rows start (after a UTF-8 BOM); FastPathUnavailable unless they are objects."""
        start = 0
        if head.startswith(codecs.BOM_UTF8):
            start = 3
            self.info.encoding = "utf-8-sig"
        if not head[start:].lstrip(b" \t\r\n").startswith(b"{"):
            raise FastPathUnavailable("not JSON Lines of objects in UTF-8 (a JSON array, UTF-16, or no rows)")
        return start

    def _decompressed_blocks(self, stream: BinaryIO) -> Iterator[bytes]:
        try:
            carry = stream.read(FAST_BLOCK)
            carry = carry[self._fast_start(carry[:FAST_HEAD]) :]
            while True:
                chunk = stream.read(FAST_BLOCK)
                if not chunk:
                    break
                cut = chunk.rfind(b"\n") + 1
                if not cut:  # a line longer than the block: read on
                    carry += chunk
                    continue
                yield carry + chunk[:cut]
                carry = chunk[cut:]
        except (OSError, *DAMAGED) as err:
            raise FastPathUnavailable(f"cannot read it to the end ({_first_line(err)})") from None
        if carry:
            yield carry

    def count_rows(self, progress: Callable[[int], None] | None = None) -> int:
        """Rows of the file, read to the end. UTF-8 JSON Lines (trn.json): its lines, newlines
        counted in the decompressed bytes on a new handle (a last line without a newline counts,
        and so would a blank line); anything else (a JSON array, UTF-16): the records iteration
        gives. ``progress`` gets :meth:`position` after each chunk."""
        lines = self._count_lines(progress)
        if lines is not None:
            return lines
        rows = 0
        for rows, _ in enumerate(self, start=1):
            if progress is not None and rows % 20000 == 0:
                progress(self.position())
        return rows

    def _count_lines(self, progress: Callable[[int], None] | None) -> int | None:
        """The lines of UTF-8 JSON Lines; None for anything else."""
        raw: BinaryIO = open(self.path, "rb", buffering=READ_CHUNK)
        self._fast_raw = raw
        lines, last = 0, b"\n"
        try:
            stream = self._open_rows(raw)
            chunk = stream.read(FAST_BLOCK)
            self._fast_start(chunk[:FAST_HEAD])
            while chunk:
                lines += chunk.count(b"\n")
                last = chunk[-1:]
                if progress is not None:
                    progress(self.position())
                chunk = stream.read(FAST_BLOCK)
        except FastPathUnavailable:
            return None
        except DAMAGED as err:
            raise DataError(
                f"{self.where} is truncated or corrupt ({_first_line(err)}): download it again"
            ) from None
        finally:
            self._fast_raw = None
            raw.close()
        return lines + (last != b"\n")


Block = bytes | tuple[str, int, int]
"""A block of whole lines: its bytes, or (path, start, end) of a byte range of a plain file."""
FAST_BLOCK = 1 << 22
"""Bytes of whole lines parsed by pyarrow at a time (a longer line makes a longer block)."""
FAST_HEAD = 1 << 16
ARROW_FIELDS = ("uid", "title", "content")


class FastPathUnavailable(Exception):
    """pyarrow cannot read this file exactly as the line-by-line reader would; use that one."""


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def read_block(block: Block) -> tuple["pa.Array", "pa.Array", "pa.Array"]:
    """(uid, title, content) string arrays of one block of whole JSON lines, parsed by pyarrow:
    exactly the rows the line reader gives, or :class:`FastPathUnavailable`.

    pyarrow lets through what the line reader refuses, so the block is checked first: strict
    UTF-8 everywhere (pyarrow does not check the fields it skips), and every non-blank line
    starting with ``{`` and ending with ``}`` (pyarrow also takes an object spread over several
    lines). Then rows == non-blank lines proves one object a line (pyarrow takes two on one
    line). A row whose title or content is missing, null or not a string, or whose uid is not a
    string, is one the line reader counts or converts differently: that raises too. ``uid`` is
    ``""`` where the row has none. One known difference is left: JSON nested deeper than
    Python's recursion limit (~1,000 levels) in a skipped field is read here, where the line
    reader counts the line malformed ("nested too deeply")."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    if isinstance(block, tuple):
        path, start, end = block
        with open(path, "rb") as fh:
            fh.seek(start)
            block = fh.read(end - start)
    data = pa.py_buffer(block)
    offsets = pa.py_buffer(array("q", [0, len(block)]).tobytes())
    region = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, data])  # the block, not copied
    try:
        region.cast(pa.large_string())  # strict UTF-8 (as json.loads of each line): C++, a few GB/s
    except pa.ArrowInvalid as err:
        raise FastPathUnavailable(f"not UTF-8 ({_first_line(err)})") from None
    lines = _count_lines(block, region)
    schema = pa.schema([(name, pa.string()) for name in ARROW_FIELDS])
    if not lines:
        return tuple(pa.array([], pa.string()) for _ in ARROW_FIELDS)  # type: ignore[return-value]
    try:
        table = pj.read_json(
            pa.BufferReader(data),
            read_options=pj.ReadOptions(block_size=len(block) + 1, use_threads=False),
            parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
    except pa.ArrowException as err:
        raise FastPathUnavailable(_first_line(err)) from None
    if table.num_rows != lines:
        raise FastPathUnavailable(f"{table.num_rows} JSON values on {lines} lines")
    uid, title, content = (table.column(name).combine_chunks() for name in ARROW_FIELDS)
    if title.null_count or content.null_count:
        raise FastPathUnavailable("a row without a string title or content")
    return pc.fill_null(uid, ""), title, content


def _count_lines(block: bytes, region: "pa.Array") -> int:
    """Non-blank lines of ``block``, each checked to start with ``{`` and end with ``}``."""
    import pyarrow.compute as pc

    if block.startswith(b"{") and block.endswith((b"}\n", b"}\r\n", b"}")):
        newlines = pc.count_substring_regex(region, "\n")[0].as_py()
        total = newlines if block.endswith(b"\n") else newlines + 1
        if pc.count_substring_regex(region, "\\}\r?\n\\{")[0].as_py() == total - 1:
            return total  # the usual case: one object a line, no blank lines, nothing around braces
    count = 0
    for line in block.split(b"\n"):
        text = line.strip(b" \t\r")
        if not text:
            continue  # blank: skipped by both readers
        if not (text.startswith(b"{") and text.endswith(b"}")):
            raise FastPathUnavailable("a line that is not one whole JSON object")
        count += 1
    return count


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


def _array_records(read: Callable[[int], str], path: Path | str) -> Iterator[Record]:
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
_CONTROL_RANGES = ((0x00, 0x08), (0x0B, 0x0C), (0x0E, 0x1F), (0x7F, 0x7F), (0x200B, 0x200B), (0xFEFF, 0xFEFF))
"""Characters clean_text deletes: C0 controls but tab/newline/CR, DEL, zero-width space, BOM."""
_CONTROL = re.compile("[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in _CONTROL_RANGES) + "]")


def clean_text(text: str) -> str:
    """Unescape HTML entities (repeatedly, for double-escaped ``&amp;#8217;``), strip HTML tags
    and control characters, collapse whitespace. Bare ``<`` / ``>`` that are not tags stay."""
    if "&" in text:
        text = unescape_html(text)
    if "<" in text:
        text = _TAG.sub(" ", text)
    if not text.isprintable():  # fast C check; most rows skip the regex
        text = _CONTROL.sub("", text)
    return " ".join(text.split())  # str.split() splits on all Unicode whitespace, \xa0 included


def unescape_html(text: str) -> str:
    """``html.unescape`` until nothing changes, at most three times (``&amp;amp;#8217;`` → ``’``)."""
    for _ in range(3):
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    return text


EDITION_NOTE = r"(?i) ?[-–—]* ?This text refers to (?:an?|the) ?[^.]*?edition(?: of this title)?\."
"""Amazon's edition note in a cleaned description, with the dashes that often lead into it and the
space before them, glued ("…to thePaperbackedition.") or not, in any case (models write it
after "--" too). The same pattern for Python's ``re`` and pyarrow's RE2 (``[^.]`` never crosses a
sentence: "This text refers to theory. Its edition…" is not a note)."""

REVIEW_BYLINE = (
    r"(?i) ?(?:\(c\)|©)? ?Copyright ?(?:©|\(c\))? ?(?:\d{4}(?:[-–]\d{2,4})?,? )?(?:by )?"
    r"(?:Reed Business Information|Reed Elsevier|Cahners|American Library Association|Kirkus"
    r"|VNU Business Media|The Horn Book|Library Journal|Publishers Weekly)"
    r"[^.]*(?:\.|$)(?: All rights reserved\.?)?"
)
"""The copyright line of a trade review quoted in a description ("Copyright 1991 Reed Business
Information, Inc.", "Copyright © American Library Association. All rights reserved"), to its
first full stop or the end of the text: only with a review publisher's name after it, so a book
about copyright keeps its text. The same pattern for ``re`` and RE2."""


@dataclass(frozen=True)
class Boilerplate:
    """Text 01 cuts out of every cleaned description when its data setting is on."""

    setting: str
    """The DataConfig flag that turns the cut on."""
    pattern: str
    """What is cut (Python ``re`` and pyarrow RE2 alike)."""
    hint: str
    """In every match, in lower case: texts without it skip the regex."""


BOILERPLATE = (
    Boilerplate("drop_edition_note", EDITION_NOTE, "refers to"),
    Boilerplate("drop_review_byline", REVIEW_BYLINE, "copyright"),
)


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def boilerplate_for(data: Any) -> tuple[Boilerplate, ...]:
    """The boilerplate a DataConfig (or anything with the same flags) has switched on."""
    return tuple(b for b in BOILERPLATE if getattr(data, b.setting))


def cut_boilerplate(text: str, kinds: Iterable[Boilerplate] = BOILERPLATE) -> str:
    """A cleaned text without the given boilerplate, spaces collapsed:
    "A novel. --This text refers to thePaperbackedition." → "A novel."."""
    for kind in kinds:
        if kind.hint in text.lower():
            text = " ".join(_compiled(kind.pattern).sub(" ", text).split())
    return text


def cut_boilerplate_arrow(texts: "pa.Array", kinds: Iterable[Boilerplate] = BOILERPLATE) -> "pa.Array":
    """``cut_boilerplate`` of every string of a pyarrow string array, with the same results (the
    texts are cleaned: their only whitespace is single spaces between words)."""
    import pyarrow.compute as pc

    for kind in kinds:
        def cut(a: "pa.Array", pattern: str = kind.pattern) -> "pa.Array":
            a = pc.replace_substring_regex(a, pattern, " ")
            return pc.utf8_trim(pc.replace_substring_regex(a, " {2,}", " "), " ")

        texts = _where(texts, pc.match_substring(texts, kind.hint, ignore_case=True), cut)
    return texts


GLUE = (
    (r"(This text refers to (?:an alternate|the))([A-Z][^.]*?[^ .])edition", r"\1 \2 edition"),
    (r"([a-z]{2}[.!?][\"”’)]?)([A-Z][a-z])", r"\1 \2"),
    (r"\b([a-z]{3,})([A-Z][a-z]{2,})\b", r"\1 \2"),
)
"""Words glued together where the source's markup (a paragraph, an italic title) was stripped
without a space, as (RE2 pattern, replacement) pairs that put the space back:

- Amazon's edition note with the binding name glued to its neighbours: "This text refers to an
  alternatePaperbackedition." → "… an alternate Paperback edition." (12% of the sample's rows);
- a sentence glued to the one before it: "…sold in 30 countries.He was…", "(Mar.)Its";
- a lower-case word glued to a capitalised one: "known from hisEvening Post column", "forHarper's".
  Only a word of 3+ letters before one capitalised word of 3+ letters that ends there, so
  "iPhone", "eBay", "onClick", "McDonald" and "getElementById" stay as they are.

Models trained on glued text learn to glue words. Glue inside a word's end ("Postcolumn")
cannot be told from a word and stays."""


def respace_glue(texts: "pa.Array | pa.ChunkedArray") -> "pa.Array | pa.ChunkedArray":
    """Every string of a pyarrow string array with the :data:`GLUE` spaces put back (01 applies
    it to the selected rows' descriptions, after their keys are taken, so splits and duplicates
    are as without it)."""
    import pyarrow.compute as pc

    for pattern, spaced in GLUE:
        texts = pc.replace_substring_regex(texts, pattern, spaced)
    return texts


@dataclass(frozen=True)
class _RE2:
    """clean_text's steps as RE2 patterns for pyarrow.compute. RE2's ``\\s`` is ASCII only, so
    whitespace is spelled out from this Python's own ``str.isspace`` (what ``str.split()`` and
    ``re``'s ``\\s`` use)."""

    dirty: str
    """Matches every string clean_text changes (and a few it leaves as they are): ``&``, ``<``,
    a deleted character, whitespace other than single spaces between words."""
    tag: str
    """``_TAG``."""
    control: str
    """``_CONTROL``."""
    spaces: str
    """A whitespace run that is not one plain space (what ``" ".join(text.split())`` changes)."""


@functools.cache
def _re2() -> _RE2:
    spaces = [ord(c) for c in map(chr, range(0x110000)) if c.isspace()]

    def char_class(ranges: Iterable[tuple[int, int]]) -> str:
        return "[" + "".join(f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in ranges) + "]"

    space = char_class((c, c) for c in spaces)
    other_space = char_class((c, c) for c in spaces if c != 0x20)
    control = char_class(_CONTROL_RANGES)
    return _RE2(
        dirty="|".join(("[&<]", control, other_space, "  ", "^ ", " $")),
        tag=f"(?s:<!--.*?-->)|</?[A-Za-z][A-Za-z0-9]*(?:{space}[^<>]*)?/?>",
        control=control,
        spaces=f"{space}{{2,}}|{other_space}",
    )


def clean_arrow(texts: "pa.Array") -> "pa.Array":
    """``clean_text`` of every string of a pyarrow string array, with the same results, mostly
    vectorized: strings that are already clean (one RE2 match finds them) stay as they are; of
    the others, those with ``&`` go through ``unescape_html`` in Python, then tags, deleted
    characters and whitespace are handled by pyarrow's RE2 kernels in clean_text's order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pattern = _re2()
    dirty = pc.match_substring_regex(texts, pattern.dirty)
    if not dirty.true_count:
        return texts
    part = texts.filter(dirty)
    # (one character: RE2 finds it with memchr, ~5x faster than match_substring's search)
    part = _where(part, pc.match_substring_regex(part, "&"),
                  lambda a: pa.array([unescape_html(t) for t in a.to_pylist()], type=a.type))
    part = _where(part, pc.match_substring_regex(part, "<"), lambda a: pc.replace_substring_regex(a, pattern.tag, " "))

    def replace(a: "pa.Array", regex: str, by: str) -> "pa.Array":
        return _where(a, pc.match_substring_regex(a, regex), lambda b: pc.replace_substring_regex(b, regex, by))

    def controls_and_spaces(a: "pa.Array") -> "pa.Array":  # only the strings that have either
        return replace(replace(a, pattern.control, ""), pattern.spaces, " ")

    part = _where(part, pc.match_substring_regex(part, f"{pattern.control}|{pattern.spaces}"), controls_and_spaces)
    return pc.replace_with_mask(texts, dirty, pc.utf8_trim(part, " "))


def _where(texts: "pa.Array", mask: "pa.Array", fn: Callable[["pa.Array"], "pa.Array"]) -> "pa.Array":
    """``texts`` with ``fn`` applied to the strings where ``mask`` is true."""
    import pyarrow.compute as pc

    hits = mask.true_count
    if not hits:
        return texts
    if hits == len(texts):
        return fn(texts)
    return pc.replace_with_mask(texts, mask, fn(texts.filter(mask)))


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
