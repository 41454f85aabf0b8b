"""python src/01_prepare.py [--preset NAME] [--root DIR] [--inspect] [key=value ...]

Clean, deduplicate and split AmazonTitles trn.json into a prepared dataset:
<root>/data/prepared/<name>/{dataset/, manifest.json}. --inspect only shows the file(s) it would
read: path, zip member, size and rows (counted), and prepares nothing.

One streaming pass reads the raw file (JSON Lines or a JSON array, plain or .gz, or trn.json /
trn.json.gz streamed out of the dataset's zip, data.member naming another member), cleans each
row (HTML entities unescaped, tags stripped, whitespace collapsed), drops unusable rows (each
reason counted), removes exact duplicates and spills the kept rows to temporary files. UTF-8
JSON Lines such as trn.json are parsed by pyarrow in blocks of lines, on every core for a big
file; other files are read line by line, with the same result. A seeded
hash of each (title, content) pair then picks the subsample and the train/validation/test splits,
so the same data and seed give the same splits whatever the file's order, format or compression.
Amazon's edition note ("This text refers to the Paperback edition.") and the copyright line of a
quoted trade review ("Copyright 1991 Reed Business Information, Inc.") are cut out of every
description while cleaning (data.drop_edition_note, data.drop_review_byline,
rawdata.cut_boilerplate), before the length filter and the duplicate check; with
data.drop_edition_note=false the selected rows' notes get
their spaces back instead ("…to an alternatePaperbackedition." → "… alternate Paperback edition.");
the same step (rawdata.respace_glue, on the selected rows) puts back the spaces between sentences
and words that stripped markup glued together ("countries.He was", "hisEvening Post").
With data.example_words, every row also gets its example: the training row whose title shares
the most words with its own (never itself), stored as the lists example_title and example_content
(one entry, or none) and shown in its prompt (prodesc.retrieval). The result appears under its final
name only when complete; re-running with the same settings skips the work (overwrite=true redoes it).
With data.test_source (tst.json: a file, or a member of data.source's zip) the test split comes from
the dataset's own test file instead, cleaned, filtered and deduplicated the same way, less the rows
whose (title, content) pair is also in the train or validation split, at most data.test_size of
them; the train and validation splits then share trn.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import itertools
import json
import os
import shutil
import threading
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from prodesc import __version__, atomic
from prodesc.cli import log, run_stage
from prodesc.config import Config
from prodesc.errors import DataError, UserError
from prodesc.paths import RunPaths
from prodesc.prepared import read_manifest
from prodesc.rawdata import (
    Boilerplate,
    FastPathUnavailable,
    RawReader,
    SourceInfo,
    boilerplate_for,
    clean_arrow,
    clean_text,
    cut_boilerplate,
    cut_boilerplate_arrow,
    is_zip,
    read_block,
    respace_glue,
    row_fields,
)
from prodesc.retrieval import MAX_TRAIN_ROWS, Example, TitleIndex, cut
from prodesc.templates import PromptTemplate, template_for

BUNDLED_SAMPLE = Path(__file__).resolve().parent / "data" / "sample_trn.jsonl"
SPLITS = ("train", "validation", "test")
MALFORMED = ("malformed_json", "not_utf8", "not_an_object")
DROP_REASONS = MALFORMED + (
    "missing_title",
    "missing_content",
    "wrong_type",
    "empty_content",
    "title_too_short",
    "content_too_short",
    "content_too_long",
    "duplicate",
)
FORMAT_VERSION = 5
"""Part of a prepared dataset's identity: 2 re-spaces Amazon's edition note, 3 cuts it out
(data.drop_edition_note), 4 cuts review copyright lines (data.drop_review_byline), 5 re-spaces
glued sentences and words (rawdata.respace_glue)."""
EARLY_CHECK_ROWS = 2000


@dataclass
class PassStats:
    """What the streaming pass saw: every row read lands in exactly one bucket."""

    rows_read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    first_error: str = ""

    @property
    def malformed(self) -> int:
        return sum(self.dropped[r] for r in MALFORMED)


TEST_MEMBER = "tst.json"
"""The member read from a zip given as data.test_source (as tst.json or tst.json.gz)."""


@dataclass(frozen=True)
class RawFile:
    """A raw file 01 reads: its path, the zip member ('' = the reader's default, or not a zip),
    and the setting that chose the member (named in errors)."""

    path: Path
    member: str = ""
    setting: str = "data.member"

    def open(self) -> RawReader:
        return RawReader(self.path, self.member, self.setting)


def source_path(cfg: Config, paths: RunPaths) -> Path:
    if cfg.data.source == "bundled":
        return BUNDLED_SAMPLE
    return paths.raw_source(cfg.data.source)


def raw_files(cfg: Config, paths: RunPaths) -> tuple[RawFile, RawFile | None]:
    """data.source (with data.member), and data.test_source or None: a file where one of that
    name exists (a bare name is also looked up in data/raw/; a zip: its tst.json), else a member
    of data.source's zip."""
    source = source_path(cfg, paths)
    train = RawFile(source, cfg.data.member)
    name = cfg.data.test_source
    if not name:
        return train, None
    path = paths.raw_source(name, "data.test_source")
    if path.exists():
        return train, RawFile(path, TEST_MEMBER if is_zip(path) else "", "data.test_source")
    if is_zip(source):
        return train, RawFile(source, name, "data.test_source")
    raise DataError(
        f"data.test_source: {path} not found, and data.source ({source}) is not a zip archive to "
        f"take a member '{name}' from: give the path of the test file (tst.json or tst.json.gz)"
    )


def fingerprint(
    cfg: Config, template: PromptTemplate, source: SourceInfo, test: SourceInfo | None = None
) -> str:
    """Identity of a prepared dataset: settings, seed, template, and the raw files' paths and sizes
    (the zip member's name, and the test file's, only where there is one)."""
    blob: dict[str, Any] = {
        "data": {k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "name"},
        "seed": cfg.seed,
        "template": template.to_dict(),
        "source": str(source.path),
        "source_bytes": source.bytes,
        "format_version": FORMAT_VERSION,
    }
    if source.member:
        blob["member"] = source.member
    if test is not None:
        blob["test_source"] = {"path": str(test.path), "bytes": test.bytes, "member": test.member}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _key(seed: int, title: str, content: str) -> int:
    digest = hashlib.blake2b(
        f"{title}\x00{content}".encode(), digest_size=8, key=seed.to_bytes(8, "little", signed=True)
    ).digest()
    return int.from_bytes(digest, "little")


SPILL_BATCH = 8192


def spill_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("uid", pa.string()), ("title", pa.string()), ("content", pa.string()), ("key", pa.uint64())])


class Spill:
    """Kept rows of pass 1 with their sampling keys, as an Arrow IPC stream file of
    (uid, title, content, key), written in record batches so memory stays flat."""

    def __init__(self, path: Path):
        import pyarrow as pa

        self.path = path
        self.schema = spill_schema()
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self._pending: list[list[Any]] = [[], [], [], []]

    def add(self, uid: str, title: str, content: str, key: int) -> None:
        for column, value in zip(self._pending, (uid, title, content, key)):
            column.append(value)
        if len(self._pending[0]) >= SPILL_BATCH:
            self._flush()

    def add_arrays(self, *columns: Any) -> None:
        import pyarrow as pa

        self._flush()
        if len(columns[0]):
            self._writer.write_batch(pa.record_batch(list(columns), schema=self.schema))

    def _flush(self) -> None:
        import pyarrow as pa

        if self._pending[0]:
            arrays = [pa.array(values, field.type) for values, field in zip(self._pending, self.schema)]
            self._writer.write_batch(pa.record_batch(arrays, schema=self.schema))
            self._pending = [[], [], [], []]

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._sink.close()

    def __enter__(self) -> "Spill":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def batches(path: Path) -> Iterator[Any]:
        """The record batches of a spill file, memory-mapped: columns not looked at are not read."""
        import pyarrow as pa

        with pa.memory_map(str(path), "r") as source:
            yield from pa.ipc.open_stream(source)


Pass1 = tuple[array, list[Path]]
"""Pass 1's result: the kept rows' sampling keys in file order, and the spill files."""


def stream_rows(
    cfg: Config, reader: RawReader, spill: Path, stats: PassStats, fast: bool = True, desc: str = "01 prepare"
) -> Pass1:
    """Read, clean, filter and dedupe every row. Returns the sampling keys of the kept rows in
    file order, and the spill files (in order, under the folder ``spill``) that hold those rows
    with their keys (plus, from the fast reader, duplicates, which pass 2 skips). Duplicates are
    rows with the same (title, content) after cleaning, found by their sampling key (64 bits of
    a keyed BLAKE2b of the pair).

    With ``fast``, pyarrow parses the file in blocks of lines and cleaning is mostly vectorized
    (:func:`_stream_blocks`); a file pyarrow cannot read exactly as the line-by-line reader
    would (malformed lines, a JSON array, UTF-16, ...) is read again by that one
    (:func:`_stream_lines`). Both give the same rows, drop counts and keys."""
    from tqdm.auto import tqdm

    spill.mkdir()
    bar = tqdm(
        total=reader.info.data_bytes, unit="B", unit_scale=True, desc=desc, mininterval=1.0, disable=None
    )
    try:
        if fast:
            try:
                return _stream_blocks(cfg, reader, spill, stats, bar)
            except FastPathUnavailable as why:
                log(f"reading line by line ({why})")
                stats.__init__()  # type: ignore[misc]  # start over: nothing of the fast pass is kept
                for part in spill.iterdir():
                    part.unlink()
                bar.reset()
        return _stream_lines(cfg, reader, spill, stats, bar)
    finally:
        bar.close()


def _stream_lines(cfg: Config, reader: RawReader, spill: Path, stats: PassStats, bar: Any) -> Pass1:
    """The line-by-line reader: one Python ``json.loads`` and ``clean_text`` a row."""
    data = cfg.data
    kinds = boilerplate_for(data)
    seen: set[int] = set()
    keys = array("Q")
    path = spill / "lines.arrow"
    with Spill(path) as out:
        for record in reader:
            stats.rows_read += 1
            if stats.rows_read % 20000 == 0:
                bar.update(reader.position() - bar.n)
            if stats.rows_read == EARLY_CHECK_ROWS:
                _check_malformed(cfg, reader, stats, final=False)
            reason = _reason_or_row(record, data, kinds)
            if isinstance(reason, str):
                stats.dropped[reason] += 1
                if reason in MALFORMED and not stats.first_error:
                    stats.first_error = f"line {record.line}: {record.detail}"
                continue
            uid, title, content = reason
            key = _key(cfg.seed, title, content)
            if data.dedup:
                if key in seen:
                    stats.dropped["duplicate"] += 1
                    continue
                seen.add(key)
            keys.append(key)
            out.add(uid, title, content, key)
            stats.kept += 1
    bar.update(reader.info.data_bytes - bar.n)
    return keys, [path]


def _stream_blocks(cfg: Config, reader: RawReader, spill: Path, stats: PassStats, bar: Any) -> Pass1:
    """The fast reader: :func:`clean_block` parses, checks, cleans, filters and keys each block
    of lines and writes its kept rows to a spill file of its own, in worker processes (one per
    core) for a big file; the blocks come back in order, and duplicates are counted here."""
    data = cfg.data
    settings = BlockSettings(
        cfg.seed, data.min_title_chars, data.min_content_chars, data.max_content_chars, boilerplate_for(data)
    )
    workers = block_workers(reader.info.data_bytes)
    seen: set[int] = set()
    keys = array("Q")
    parts: list[Path] = []

    def take(result: BlockResult) -> None:
        stats.rows_read += result.rows
        for reason, n in result.dropped.items():
            stats.dropped[reason] += n
        block_keys = array("Q", result.keys)
        if data.dedup:
            first = [k not in seen and not seen.add(k) for k in block_keys]  # type: ignore[func-returns-value]
            unique = sum(first)
            if unique < len(first):
                stats.dropped["duplicate"] += len(first) - unique
                block_keys = array("Q", (k for k, f in zip(block_keys, first) if f))
        keys.extend(block_keys)
        stats.kept += len(block_keys)
        if result.path is not None:
            parts.append(result.path)

    from concurrent.futures.process import BrokenProcessPool

    try:
        with _block_pool(workers) as pool:
            pending: deque[Any] = deque()
            for number, block in enumerate(reader.line_blocks()):
                path = spill / f"block-{number:06d}.arrow"
                pending.append(pool.submit(clean_block, settings, block, str(path)))
                bar.update(reader.position() - bar.n)
                while len(pending) > 2 * max(workers, 1) or (pending and pending[0].done()):
                    take(pending.popleft().result())
            while pending:
                take(pending.popleft().result())
    except BrokenProcessPool as err:  # a worker was killed (out of memory?): one process is safer
        raise FastPathUnavailable(f"a worker process stopped: {err}") from None
    bar.update(reader.info.data_bytes - bar.n)
    return keys, parts


@dataclass(frozen=True)
class BlockSettings:
    """What :func:`clean_block` needs of the config (small, to send to a worker process)."""

    seed: int
    min_title_chars: int
    min_content_chars: int
    max_content_chars: int
    boilerplate: tuple[Boilerplate, ...]
    """What is cut out of every description (rawdata.boilerplate_for)."""


@dataclass(frozen=True)
class BlockResult:
    """What :func:`clean_block` sends back: counts, and the keys of the rows it wrote."""

    rows: int
    dropped: dict[str, int]
    keys: bytes
    """The kept rows' sampling keys (uint64, native order), duplicates included."""
    path: Path | None
    """The spill file with those rows, or None when none was kept."""


POOL_MIN_BYTES = 64 << 20
"""Files at least this big (on disk) are read by worker processes, one per core; for smaller
ones, starting the workers (~1 s) would cost more than it saves."""


def block_workers(file_bytes: int) -> int:
    """Worker processes for :func:`clean_block`: one per core for a big file, 0 (in-process) for
    a small one, on one core, or when workers could not start safely (see _main_is_safe)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return cores if cores > 1 and file_bytes >= POOL_MIN_BYTES and _main_is_safe() else 0


def _main_is_safe() -> bool:
    """Whether a spawned worker may import this program's main module: a spawned process runs
    the main script's top level again, which only a script with an ``if __name__ == "__main__"``
    guard survives. Ours are guarded; so are modules run with ``-m`` and notebook kernels, and
    ``python -c`` has no script. Someone else's script calling prepare() gets no workers."""
    import sys

    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        return True
    script = getattr(main, "__file__", None)
    return script is None or Path(script).resolve().parent == Path(__file__).resolve().parents[1]


class _InProcess:
    """An executor that runs each task at once, in this process."""

    def submit(self, fn: Any, *args: Any) -> Any:
        from concurrent.futures import Future

        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as err:  # as a process pool would: raised by .result()
            future.set_exception(err)
        return future

    def __enter__(self) -> "_InProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _block_pool(workers: int) -> Any:
    if not workers:
        return _InProcess()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a forked child of a process running threads (pyarrow's) can deadlock
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def clean_block(settings: BlockSettings, block: bytes, out: str) -> BlockResult:
    """One block of raw JSON lines → its kept rows with their keys in the spill file ``out``:
    ``_reason_or_row`` and ``_key`` for every row, vectorized (duplicates are left to the caller).
    Raises FastPathUnavailable when the block needs the line-by-line reader."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    uid, title, content = read_block(block)
    rows = len(title)
    dropped = dict.fromkeys(("empty_content", "title_too_short", "content_too_short", "content_too_long"), 0)
    # empty raw content is the commonest drop (~38% of trn.json): those rows skip the cleaning
    has_content = pc.not_equal(pc.binary_length(content), 0)
    if has_content.false_count:
        dropped["empty_content"] = has_content.false_count
        uid, title, content = (a.filter(has_content) for a in (uid, title, content))
    title, content = clean_arrow(title), clean_arrow(content)
    content = cut_boilerplate_arrow(content, settings.boilerplate)
    title_len, content_len = pc.utf8_length(title), pc.utf8_length(content)
    reasons = [  # in _reason_or_row's order: each row gets the first that applies
        ("empty_content", pc.equal(content_len, 0)),
        ("title_too_short", pc.less(title_len, settings.min_title_chars)),
        ("content_too_short", pc.less(content_len, settings.min_content_chars)),
    ]
    if settings.max_content_chars:
        reasons.append(("content_too_long", pc.greater(content_len, settings.max_content_chars)))
    kept = np.ones(len(title), dtype=bool)
    for reason, hit in reasons:
        hit = hit.to_numpy(zero_copy_only=False) & kept
        dropped[reason] += int(hit.sum())
        kept &= ~hit
    if not kept.all():
        mask = pa.array(kept)
        uid, title, content = (a.filter(mask) for a in (uid, title, content))
    if not len(title):
        return BlockResult(rows, dropped, b"", None)
    # _key of every kept row: the UTF-8 of f"{title}\x00{content}" is the two arrays' bytes joined
    pairs = pc.binary_join_element_wise(title.cast(pa.binary()), content.cast(pa.binary()), b"\x00").to_pylist()
    keyed = hashlib.blake2b(digest_size=8, key=settings.seed.to_bytes(8, "little", signed=True))
    digests = []
    for pair in pairs:  # a copy of the keyed state: ~15% faster than keying each hash anew
        h = keyed.copy()
        h.update(pair)
        digests.append(h.digest())
    keys = np.frombuffer(b"".join(digests), dtype="<u8").astype("=u8", copy=False)
    with Spill(Path(out)) as spill:
        spill.add_arrays(uid, title, content, pa.array(keys, pa.uint64()))
    return BlockResult(rows, dropped, keys.tobytes(), Path(out))


def _reason_or_row(record, data, kinds: tuple[Boilerplate, ...]) -> str | tuple[str, str, str]:
    if record.error:
        return record.error
    fields = row_fields(record.row)
    if isinstance(fields, str):
        return fields
    uid, title, content = fields
    title, content = clean_text(title), clean_text(content)
    content = cut_boilerplate(content, kinds)
    if not content:
        return "empty_content"
    if len(title) < data.min_title_chars:
        return "title_too_short"
    if len(content) < data.min_content_chars:
        return "content_too_short"
    if data.max_content_chars and len(content) > data.max_content_chars:
        return "content_too_long"
    return uid, title, content


def _check_malformed(cfg: Config, reader: RawReader, stats: PassStats, final: bool) -> None:
    """Stop when too many lines are unreadable: at the end, or early for a hopeless file."""
    if not stats.rows_read:
        return
    share = stats.malformed / stats.rows_read
    limit = cfg.data.max_malformed_fraction if final else max(cfg.data.max_malformed_fraction, 0.5)
    if share > limit:
        kinds = ", ".join(f"{stats.dropped[r]} {r}" for r in MALFORMED if stats.dropped[r])
        hint = (
            "re-save it as UTF-8"
            if stats.dropped["not_utf8"] >= stats.malformed / 2
            else "check it is JSON Lines (one object per line) or a JSON array"
        )
        raise DataError(
            f"{reader.where}: {stats.malformed} of {stats.rows_read} rows unreadable ({kinds}; first at "
            f"{stats.first_error}): {hint}, or raise data.max_malformed_fraction (now "
            f"{cfg.data.max_malformed_fraction})"
        )


# --------------------------------------------------------------------------- pass 2: split


def split_counts(cfg: Config, available: int, test_apart: bool = False) -> dict[str, int]:
    """Rows per split from counts (>= 1) or fractions (< 1) of the rows available. With
    ``test_apart`` (data.test_source) the test split comes from elsewhere (:func:`test_count`):
    0 here, and "the rest" for train includes the test split's share."""
    data = cfg.data
    sizes = {split: getattr(data, f"{split}_size") for split in SPLITS}
    counts = {split: int(size * available) if size < 1 else int(size) for split, size in sizes.items()}
    if test_apart:
        counts["test"] = 0
    all_fractions = all(0 < size < 1 for size in sizes.values())
    if data.train_size == 0 or (all_fractions and abs(sum(sizes.values()) - 1) < 1e-9):
        counts["train"] = available - counts["validation"] - counts["test"]  # the rest
    total = sum(counts.values())
    if total > available or counts["train"] <= 0 or (counts["test"] <= 0 and not test_apart):
        raise DataError(
            f"the splits ask for {counts['train']} train + {counts['validation']} validation + "
            f"{counts['test']} test rows but only {available} usable rows remain: lower "
            "data.train_size / data.validation_size / data.test_size, or give fractions "
            "(e.g. data.train_size=0.8 data.validation_size=0.1 data.test_size=0.1)"
        )
    return counts


def test_count(cfg: Config, usable: int, where: str) -> int:
    """data.test_source: test rows to take of the test file's ``usable`` ones (those not also in
    the train or validation split): data.test_size of them, a count capping them (all of them
    where fewer) or a fraction."""
    size = cfg.data.test_size
    count = int(size * usable) if size < 1 else min(int(size), usable)
    if count <= 0:
        raise DataError(
            f"data.test_size={size:g} of the {usable} usable rows of {where} that are not in the train or "
            "validation split gives no test rows: raise data.test_size, or check data.test_source"
        )
    if size >= 1 and size > usable:
        log(f"data.test_size={size:g} but {where} has only {usable} usable test rows: using all")
    return count


def assign_splits(keys: array, counts: dict[str, int]) -> tuple[Any, Any]:
    """The selected keys in sorted order and the rank boundaries: the ``sum(counts)`` smallest
    keys are selected; ranks [0, test) → test, then validation, then train."""
    import numpy as np

    all_keys = np.frombuffer(keys, dtype=np.uint64)
    total = sum(counts.values())
    selected = np.sort(np.partition(all_keys, total - 1)[:total]) if total < len(all_keys) else np.sort(all_keys)
    bounds = np.cumsum([counts["test"], counts["validation"], counts["train"]])
    return selected, bounds


def split_rows(parts: list[Path], selected, bounds, dedup: bool) -> Iterator[tuple[str, str, str, str]]:
    """(split, uid, title, content) for each selected row, in file order, the content with
    glued words re-spaced (:func:`respace_glue`). With ``dedup`` each selected key
    is taken once, at its first row (later rows with it are duplicates)."""
    import numpy as np

    names = ("test", "validation", "train")
    last = len(selected) - 1
    taken = np.zeros(len(selected), dtype=bool)
    for part in parts:
        for batch in Spill.batches(part):
            batch_keys = batch.column("key").to_numpy()
            ranks = np.searchsorted(selected, batch_keys)
            rows = np.flatnonzero(selected[np.minimum(ranks, last)] == batch_keys)
            if dedup and len(rows):
                first = np.zeros(len(rows), dtype=bool)
                first[np.unique(ranks[rows], return_index=True)[1]] = True
                rows = rows[first & ~taken[ranks[rows]]]
                taken[ranks[rows]] = True
            if not len(rows):
                continue
            splits = np.searchsorted(bounds, ranks[rows], side="right")
            picked = batch.take(rows)
            columns = [picked.column("uid").to_pylist(), picked.column("title").to_pylist(),
                       respace_glue(picked.column("content")).to_pylist()]
            for split, uid, title, content in zip(splits.tolist(), *columns):
                yield names[split], uid, title, content


def find_examples(rows: Iterator[tuple[str, str, str, str]], words: int) -> dict[str, list[list[Example]]]:
    """data.example_words: each selected row's example (by split, in the order of ``rows``), the
    most similar training row's title and first ``words`` words of description, as a list of one;
    a training row never gets itself (none where the training split holds no other row)."""
    from tqdm.auto import tqdm

    titles: dict[str, list[str]] = {s: [] for s in SPLITS}
    contents: list[str] = []
    for split, _, title, content in rows:
        titles[split].append(title)
        if split == "train":
            contents.append(content)
    index = TitleIndex(titles["train"])
    out: dict[str, list[list[Example]]] = {}
    with tqdm(total=sum(map(len, titles.values())), desc="01 examples", unit="row", disable=None) as bar:
        for split in SPLITS:
            own = list(range(len(titles[split]))) if split == "train" else None
            found = index.nearest(titles[split], exclude=own, progress=bar.update)
            out[split] = [[(titles["train"][r], cut(contents[r], words))] if r >= 0 else [] for r in found]
    return out


def write_dataset(
    rows: Iterator[tuple[str, str, str, str]],
    template: PromptTemplate,
    out: Path,
    scratch: Path,
    examples: dict[str, list[list[Example]]] | None = None,
) -> dict[str, int]:
    """Write the selected rows as a ``datasets.DatasetDict`` (Arrow) with prompt/completion
    columns formatted by ``template`` (with ``examples``, from :func:`find_examples`, also their
    example_title/example_content columns); return the rows per split. Each split is streamed
    to an Arrow file in record batches (memory stays flat), memory-mapped, and saved."""
    import datasets
    import pyarrow as pa

    datasets.disable_progress_bars()
    features = dataset_features(template, with_examples=examples is not None)
    schema = features.arrow_schema
    files = {s: scratch / f"{s}.arrow" for s in SPLITS}
    sinks = {s: pa.OSFile(str(path), "wb") for s, path in files.items()}
    writers = {s: pa.ipc.new_stream(sinks[s], schema) for s in SPLITS}
    pending: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)

    def flush(split: str) -> None:
        if pending[split]:
            writers[split].write_batch(pa.RecordBatch.from_pylist(pending[split], schema=schema))
            pending[split] = []

    try:
        for split, uid, title, content in rows:
            row = {"uid": uid, "title": title, "content": content}
            shown: list[Example] = []
            if examples is not None:
                shown = examples[split][counts[split]]
                row["example_title"] = [t for t, _ in shown]
                row["example_content"] = [d for _, d in shown]
            row["prompt"] = template.format_prompt(title, shown)
            row["completion"] = template.format_completion(content)
            pending[split].append(row)
            counts[split] += 1
            if len(pending[split]) >= SPILL_BATCH:
                flush(split)
        for split in SPLITS:
            flush(split)
    finally:
        for split in SPLITS:
            writers[split].close()
            sinks[split].close()
    empty = [split for split in SPLITS if not counts[split]]
    if empty:  # `datasets` saves an empty split but cannot load it back
        raise DataError(
            f"the {empty[0]} split would be empty, which a saved dataset cannot hold: set "
            f"data.{empty[0]}_size to at least 1 (a count) or a fraction such as 0.05"
        )
    info = datasets.DatasetInfo(features=features)
    parts = {split: datasets.Dataset.from_file(str(path), info=info) for split, path in files.items()}
    datasets.DatasetDict(parts).save_to_disk(str(out))
    return counts


def dataset_features(template: PromptTemplate, with_examples: bool = False):
    from datasets import Features, List, Value

    text = Value("string")
    message = {"role": text, "content": text}
    turn = List(message) if template.kind == "chat" else text
    columns = {"uid": text, "title": text, "content": text}
    if with_examples:
        columns |= {"example_title": List(text), "example_content": List(text)}  # one entry per example
    return Features({**columns, "prompt": turn, "completion": turn})


# --------------------------------------------------------------------------- the stage


@dataclass
class SourcePass:
    """Pass 1 over one raw file: what it was, what was read, and the kept rows (:data:`Pass1`)."""

    info: SourceInfo
    where: str
    stats: PassStats
    keys: array
    parts: list[Path]


def read_source(cfg: Config, raw: RawFile, spill: Path, fast: bool, desc: str = "01 prepare") -> SourcePass:
    """Pass 1 over ``raw``; a DataError when too many rows are unreadable or none is usable."""
    stats = PassStats()
    with raw.open() as reader:
        keys, parts = stream_rows(cfg, reader, spill, stats, fast=fast, desc=desc)
        _check_malformed(cfg, reader, stats, final=True)
        if stats.kept == 0:
            raise DataError(_nothing_left(reader.where, stats))
        return SourcePass(reader.info, reader.where, stats, keys, parts)


def _named(info: SourceInfo) -> str:
    return f"{info.path} ({info.member})" if info.member else str(info.path)


def _source_entry(info: SourceInfo) -> dict[str, Any]:
    return {"path": str(info.path), "member": info.member, "bytes": info.bytes,
            "compression": info.compression, "encoding": info.encoding, "layout": info.layout}


def prepare(cfg: Config, paths: RunPaths, *, fast: bool = True) -> dict[str, Any]:
    """Build (or reuse) the prepared dataset for ``cfg``; return its manifest. ``fast=False``
    reads line by line even where pyarrow could (the reference the fast reader is tested on)."""
    import numpy as np

    train_file, test_file = raw_files(cfg, paths)
    template = template_for(cfg, paths)
    with train_file.open() as reader:  # fails fast, before any work, on a missing/empty/folder path
        source_info = reader.info
    test_info = None
    if test_file is not None:
        with test_file.open() as reader:
            test_info = reader.info
    ident = fingerprint(cfg, template, source_info, test_info)
    existing = read_manifest(paths.prepared_manifest)
    if existing and not cfg.overwrite:
        if existing.get("fingerprint") == ident:
            log(f"already prepared: {paths.prepared} (overwrite=true to redo)")
            return existing
        if existing.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{paths.prepared} was prepared by an older prodesc (data format "
                f"{existing.get('format_version')}; this one writes {FORMAT_VERSION}): "
                "pass overwrite=true to rebuild it, or set data.name=<new name> to keep it"
            )
        raise UserError(
            f"{paths.prepared} holds data prepared from another source or with other settings: "
            "pass overwrite=true to rebuild it, or set data.name=<new name>"
        )
    start = time.monotonic()
    with atomic.build_dir(paths.prepared, overwrite=True) as tmp:
        scratch = tmp / "scratch"
        scratch.mkdir()
        # `datasets` (~1.5 s to import) is needed only at the end: import it while pass 1 runs
        threading.Thread(target=_preload, args=("datasets",), daemon=True).start()
        log(f"reading {_named(source_info)}")
        train = read_source(cfg, train_file, scratch / "spill", fast)
        test = None
        if test_file is not None and test_info is not None:
            log(f"reading the test split from {_named(test_info)}")
            test = read_source(cfg, test_file, scratch / "test-spill", fast, desc="01 test file")
        stats = train.stats
        available = min(cfg.data.subsample, stats.kept) if cfg.data.subsample else stats.kept
        if cfg.data.subsample > stats.kept:
            log(f"data.subsample={cfg.data.subsample} but only {stats.kept} usable rows: using all")
        counts = split_counts(cfg, available, test_apart=test is not None)
        selected, bounds = assign_splits(train.keys, counts)
        selections = [(train.parts, selected, bounds)]
        taken = sum(counts.values())
        if test is not None:  # its rows whose pair is in the train or validation split are dropped
            test_keys = np.frombuffer(test.keys, dtype=np.uint64)
            in_train = np.isin(test_keys, selected)
            test_keys = test_keys[~in_train]
            counts["test"] = test_count(cfg, len(test_keys), test.where)
            only_test = {"test": counts["test"], "validation": 0, "train": 0}
            selections.append((test.parts, *assign_splits(test_keys, only_test)))

        def rows() -> Iterator[tuple[str, str, str, str]]:
            return itertools.chain.from_iterable(split_rows(*chosen, cfg.data.dedup) for chosen in selections)

        examples = None
        if template.example_words:
            if counts["train"] > MAX_TRAIN_ROWS:
                raise UserError(
                    f"data.example_words compares every title with all {counts['train']:,} training titles: "
                    f"set data.train_size to at most {MAX_TRAIN_ROWS:,}, or data.example_words=0"
                )
            examples = find_examples(rows(), template.example_words)
        written = write_dataset(rows(), template, tmp / "dataset", scratch, examples)
        assert written == counts, (written, counts)  # every selected key maps to one row
        manifest = {
            "complete": True,
            "format_version": FORMAT_VERSION,
            "fingerprint": ident,
            "source": _source_entry(train.info),
            "rows_read": stats.rows_read,
            "dropped": stats.dropped,
            "kept": stats.kept,
            "not_selected": stats.kept - taken,
            "splits": counts,
            "template": template.to_dict(),
            "config": {"data": cfg.to_dict()["data"], "seed": cfg.seed},
            "first_malformed": stats.first_error,
            "duration_s": round(time.monotonic() - start, 2),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "prodesc_version": __version__,
        }
        if test is not None:
            manifest["test_source"] = {
                **_source_entry(test.info),
                "rows_read": test.stats.rows_read,
                "dropped": test.stats.dropped,
                "kept": test.stats.kept,
                "in_train_or_validation": int(in_train.sum()),
                "not_selected": len(test_keys) - counts["test"],
                "first_malformed": test.stats.first_error,
            }
        shutil.rmtree(scratch, ignore_errors=True)
        atomic.write_json(tmp / "manifest.json", manifest)
    return manifest


def _preload(module: str) -> None:
    """Import ``module`` now (in a background thread); a failure shows where it is really used."""
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001
        pass


def _nothing_left(source: str, stats: PassStats) -> str:
    if not stats.rows_read:
        return f"{source} holds no rows (only blank lines, or an empty JSON array): check the download"
    top = sorted(((n, r) for r, n in stats.dropped.items() if n), reverse=True)[:3]
    reasons = ", ".join(f"{n} {r}" for n, r in top)
    if top and top[0][1] in ("missing_title", "missing_content"):
        fix = "the rows need 'title' and 'content' fields as in trn.json"
    elif top and top[0][1] == "wrong_type":
        fix = "'title' and 'content' must be strings"
    else:
        fix = "check the file, or relax data.min_content_chars / data.max_content_chars / data.min_title_chars"
    return f"no usable rows in {source} ({stats.rows_read} read: {reasons}): {fix}"


def format_manifest(manifest: dict[str, Any]) -> str:
    """The manifest as the table printed at the end of the stage."""
    test = manifest.get("test_source")
    rows = [("rows read", manifest["rows_read"])]
    rows += [(f"  dropped: {r}", n) for r, n in manifest["dropped"].items() if n]
    rows += [("kept", manifest["kept"]), ("  not selected", manifest["not_selected"])]
    rows += [(f"  {s}", n) for s, n in manifest["splits"].items() if not (test and s == "test")]
    if test:
        rows += [("test file rows read", test["rows_read"])]
        rows += [(f"  dropped: {r}", n) for r, n in test["dropped"].items() if n]
        rows += [("kept", test["kept"]), ("  in train/validation", test["in_train_or_validation"]),
                 ("  not selected", test["not_selected"]), ("  test", manifest["splits"]["test"])]
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value:>10,}" for label, value in rows]
    if test:
        lines.append(f"test file: {test['member'] + ' in ' if test['member'] else ''}{test['path']}")
    words = manifest["template"].get("example_words")
    example = f" + an example of {words} words" if words else ""
    lines.append(f"template: {manifest['template']['name']}{example}   took {manifest['duration_s']} s")
    return "\n".join(lines)


def inspect_data(cfg: Config, paths: RunPaths) -> str:
    """--inspect: each raw file 01 would read (data.source, and data.test_source when set), its
    zip member, size and rows, counted with a progress bar (:meth:`RawReader.count_rows`);
    nothing is prepared."""
    from tqdm.auto import tqdm

    train_file, test_file = raw_files(cfg, paths)
    out = []
    for label, raw in (("data file", train_file), ("test file", test_file)):
        if raw is None:
            continue
        with raw.open() as reader:
            info = reader.info
            with tqdm(total=info.data_bytes, unit="B", unit_scale=True, desc="01 count rows", mininterval=1.0,
                      disable=None) as bar:
                rows = reader.count_rows(lambda done: bar.update(done - bar.n))
        kind = {"none": "", "gzip": "gzip, "}.get(info.compression, "zip archive, ")
        out.append(f"{label}: {info.path} ({kind}{_size(info.bytes)})")
        if info.member:
            inner = "gzip, " if info.compression == "zip+gzip" else ""
            out.append(f"  member: {info.member} ({inner}{_size(info.data_bytes)} in the zip)")
        out.append(f"  rows: {rows:,}")
    return "\n".join(out)


def _size(n: int) -> str:
    return f"{n:,} bytes, {n / 2**20:,.1f} MiB"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--inspect", action="store_true",
        help="print the file(s) this stage would read (zip member, size, rows counted) and exit, "
        "preparing nothing",
    )


def _body(cfg: Config, paths: RunPaths, args: argparse.Namespace) -> None:
    if args.inspect:
        print(inspect_data(cfg, paths))
        return
    manifest = prepare(cfg, paths)
    print(format_manifest(manifest))
    print(f"prepared: {paths.prepared}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("01_prepare.py", __doc__, argv, _body, extra_args=add_arguments, words=False)
