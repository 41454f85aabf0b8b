"""Bad input, one case a row: every stage meets it, mostly by calling its ``main(argv)`` in this process.

Each case says what a user would expect. Where the stage must stop: the exit code (2 for a
:class:`UserError`, 1 for an OS error such as a full disk), exactly one ``error:`` line on stderr,
last, naming the file/field/key at fault and the fix, and no traceback. Where the stage rightly
carries on (a few bad rows are counted and skipped, a UTF-16 or BOM file is simply read): exit 0,
no ``error:`` line, and the manifest counts what was dropped. In every case every file that was in
the case's folder before (the artifact root, the inputs, the working directory) is byte for byte
the same afterwards, no temporary file is left behind, and a stage that stops adds no file except
the few a case names. ``--debug`` (one case) shows the traceback instead.

Two ways to run a case, with the same checks. In process (most cases): ``prodesc.<stage>.main(argv)``
with the case's working directory and the environment ``stage_env()`` gives a subprocess, its
stdout and stderr captured at the file descriptors. As the real ``python src/0N_*.py`` subprocess
(test ids ending ``-as-script``): the cases that need a process of their own -- the full disk and
the permission cases (below), and ``--debug``, whose traceback only an uncaught exception prints --
and three that also run in process, one per kind of command line, to check that the scripts behave
as their ``main()``: ``few-malformed-lines-are-skipped`` (01: its own options, output on stdout),
``no-prepared-data-for-02`` (02: a run lock around the stage) and ``missing-adapter-for-04`` (04:
titles among the arguments). The raw files here are far below prepare.POOL_MIN_BYTES, so 01 cleans
them in its own process either way (no worker pool).

Fakes, for what cannot happen here: a full disk is an ``fsync`` that fails with ENOSPC (a
``sitecustomize`` put on the stage's PYTHONPATH; filling a real disk is not safe on a shared
machine); Colab is its environment markers (as in test_paths.py); when the tests run as root, for
whom permissions block nothing, the unreadable-file and read-only-root cases run the stage without
the two capabilities that let root ignore file permissions (so the real permission checks apply).
The models are the tiny random ones from conftest.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import (
    EVAL_OVERRIDES,
    PYTHON,
    SRC,
    stage_env,
    stage_paths,
    tiny_overrides,
    write_prepared,
    write_tiny_adapter,
)
from rawfiles import jsonl, rows_for, write, zipped

FRACTIONS = ("data.train_size=0.8", "data.validation_size=0.1", "data.test_size=0.1")
ROWS = 120
USABLE = 80
"""rows_for(120): every third row has empty content, the other 80 are usable and distinct."""

OTHER_BASE = "other-org/OtherModel-1B"
"""A base model no adapter here was trained on."""

TEMP_NAME = re.compile(r"^\..+\.(tmp|tmp-\d+|old-\d+)$")
"""What prodesc.atomic names its temporary files and folders."""

ENOSPC_HOOK = '''\
"""Test fault (tests/test_bad_inputs.py): fsync of a file whose name contains $PRODESC_TEST_ENOSPC
fails the way it does on a full disk (Drive's FUSE mount reports ENOSPC when data is flushed)."""
import errno
import os

_target = os.environ.get("PRODESC_TEST_ENOSPC", "")
_real_fsync = os.fsync


def _fsync(fd):
    number = fd if isinstance(fd, int) else fd.fileno()
    try:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{number}"))
    except OSError:
        name = ""
    if _target and _target in name:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _real_fsync(fd)


os.fsync = _fsync
'''


# --------------------------------------------------------------------------- the case folder


@dataclass
class Shared:
    root: Path
    """An artifact root holding a prepared dataset `prev` (chat template) and its raw file."""
    adapter: Path
    """A LoRA adapter for the tiny model, laid out like 02's adapter/ (copied where a case needs it)."""
    model: Path


@dataclass
class Ctx:
    dir: Path
    """The case folder: everything under it is hashed before and after the stage."""
    root: Path
    inputs: Path
    cwd: Path
    shared: Shared


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_model_dir) -> Shared:
    base = tmp_path_factory.mktemp("bad-inputs")
    _, paths = stage_paths(tiny_overrides(tiny_model_dir, base / "root", "data.name=prev"))
    write_prepared(paths)
    adapter = write_tiny_adapter(tiny_model_dir, base / "adapter")
    return Shared(root=base / "root", adapter=adapter, model=tiny_model_dir)


@pytest.fixture
def ctx(shared, tmp_path):
    folder = tmp_path / "case"
    folder.mkdir()
    shutil.copytree(shared.root, folder / "root")
    for sub in ("inputs", "cwd"):
        (folder / sub).mkdir()
    yield Ctx(dir=folder, root=folder / "root", inputs=folder / "inputs", cwd=folder / "cwd", shared=shared)
    for path in [folder, *folder.rglob("*")]:  # undo read-only cases, so that pytest can clean up
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)


def file_hashes(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (a file we may not read: its size)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            try:
                out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
            except PermissionError:
                out[str(path.relative_to(folder))] = f"unreadable, {path.stat().st_size} bytes"
    return out


def temp_leftovers(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if TEMP_NAME.match(p.name)]


# --------------------------------------------------------------------------- inputs and arguments


def raw(c: Ctx, name: str, rows=None, text: str | None = None, data: bytes | None = None,
        encoding: str = "utf-8") -> Path:
    """A raw input file in the case's inputs folder: rows (JSON Lines), text, or bytes."""
    path = c.inputs / name
    if rows is not None:
        return write(path, rows, encoding=encoding)
    path.write_bytes(data if data is not None else text.encode(encoding))
    return path


def prep(c: Ctx, source, *extra: str, name: str = "prev") -> list[str]:
    """01 arguments that rebuild the prepared dataset ``name``. A failing case keeps the default
    `prev`, which already exists: the old dataset must survive the failed rebuild."""
    return ["--root", str(c.root), f"data.source={source}", f"data.name={name}", "overwrite=true",
            *FRACTIONS, *extra]


def prep_rows(c: Ctx, rows, *extra: str, file: str = "trn.jsonl", name: str = "prev", **kw) -> list[str]:
    return prep(c, raw(c, file, rows, **kw), *extra, name=name)


def tiny(c: Ctx, *extra: str) -> list[str]:
    """02/03/04 arguments: the tiny model, run `tiny`, the prepared dataset `prev`."""
    return tiny_overrides(c.shared.model, c.root, "data.name=prev", *EVAL_OVERRIDES, *extra)


def with_adapter(c: Ctx, base_name: str | None = None) -> Path:
    """Copy the shared adapter into runs/tiny/adapter (its recorded base model replaced if given)."""
    target = c.root / "runs" / "tiny" / "adapter"
    shutil.copytree(c.shared.adapter, target)
    if base_name is not None:
        cfg = target / "adapter_config.json"
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "base_model_name_or_path": base_name}))
    return target


def edited(**changes: dict) -> list[dict]:
    """rows_for(ROWS) with some fields of the given rows (``r<i>={field: value}``) replaced."""
    rows = rows_for(ROWS)
    for key, change in changes.items():
        row = rows[int(key[1:])]
        for field, value in change.items():
            row[field] = value
    return rows


def every_row(**change) -> list[dict]:
    return [{**r, **change} for r in rows_for(ROWS)]


def without(field: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k != field} for r in rows_for(ROWS)]


def truncated_gzip(c: Ctx) -> Path:
    data = gzip.compress(jsonl(rows_for(ROWS)).encode(), mtime=0)
    return raw(c, "trn.json.gz", data=data[: len(data) // 2])


def release_zip(c: Ctx, *members: str, cut: bool = False) -> Path:
    """The dataset's zip as distributed: ``members`` in its folder, each gzipped rows_for(ROWS);
    ``cut``: only its first half, as a download cut short."""
    folder = "LF-AmazonTitles-1.3M"
    data = gzip.compress(jsonl(rows_for(ROWS)).encode(), mtime=0)
    path = zipped(c.inputs / f"{folder}.zip", {f"{folder}/{m}": data for m in members})
    if cut:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def half_broken_lines() -> str:
    lines = jsonl(rows_for(ROWS)).splitlines(keepends=True)
    return "".join(line if i % 2 else '{"title": "cut off here\n' for i, line in enumerate(lines))


def latin1_rows() -> list[dict]:
    rows = rows_for(ROWS)
    for r in rows:
        r["title"] += " Café"
        r["content"] += " crème brûlée" if r["content"] else ""
    return rows


def locked_file(c: Ctx) -> Path:
    path = raw(c, "locked.jsonl", rows_for(ROWS))
    path.chmod(0)
    return path


def read_only_root(c: Ctx) -> list[str]:
    for path in [c.root, *c.root.rglob("*")]:
        if path.is_dir():
            path.chmod(0o555)
    return prep(c, "bundled", name="new")


def retrain_over_adapter(c: Ctx) -> list[str]:
    """A finished run trained again (overwrite=true): its adapter must survive a failed save."""
    with_adapter(c)
    return tiny(c, "overwrite=true", "train.max_steps=2", "train.eval_steps=0", "train.save_steps=50")


def other_base(c: Ctx, *extra: str) -> list[str]:
    with_adapter(c, OTHER_BASE)
    return [*tiny(c), *extra]


def preset_file(c: Ctx, text: str) -> list[str]:
    return ["--root", str(c.root), "--preset", str(raw(c, "mine.yaml", text=text))]


# --------------------------------------------------------------------------- checks of a run that carries on


def manifest(c: Ctx, name: str = "new") -> dict:
    return json.loads((c.root / "data" / "prepared" / name / "manifest.json").read_text())


Check = Callable[[Ctx, subprocess.CompletedProcess], None]


def counted(kept: int, encoding: str = "", **dropped: int) -> Check:
    """The new dataset kept ``kept`` rows; each reason dropped exactly that many, as printed."""

    def check(c: Ctx, res: subprocess.CompletedProcess) -> None:
        m = manifest(c)
        assert m["kept"] == kept and sum(m["splits"].values()) == kept
        for reason, n in dropped.items():
            assert m["dropped"][reason] == n, m["dropped"]
            assert re.search(rf"dropped: {reason}\s+{n}$", res.stdout, re.M), res.stdout
        if not any(r in dropped for r in ("malformed_json", "not_utf8", "not_an_object")):
            assert m["dropped"]["malformed_json"] == m["dropped"]["not_utf8"] == 0
        if encoding:
            assert m["source"]["encoding"] == encoding

    return check


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Case:
    id: str
    script: str
    setup: Callable[[Ctx], list[str]]
    """Writes the inputs into the case folder and returns the stage's arguments."""
    rc: int
    """0: the stage rightly carries on; 2: a UserError; 1: an OS error (disk, permissions)."""
    names: str = ""
    """Regex: the error line names the problem (the file, field or key). <in>/<root>: the folders."""
    fix: str = ""
    """Regex: the error line says what to do."""
    check: Check | None = None
    may_add: tuple[str, ...] = ()
    """fnmatch patterns (relative to the case folder; * spans folders) of files a stopping stage may add."""
    env: tuple[tuple[str, str], ...] = ()
    enospc: str = ""
    """Fake a full disk when a file whose name contains this is flushed."""
    permissions: bool = False
    """File permissions must bite, also when the tests run as root."""
    debug: bool = False

    @property
    def needs_a_process(self) -> bool:
        """The fsync fake and the dropped capabilities act on a whole process; ``--debug`` lets the
        exception out, which only an interpreter that exits turns into a printed traceback."""
        return bool(self.enospc) or self.permissions or self.debug


# A user expects the stage to carry on (exit 0) where a real trn.json could hold the problem in a
# few rows among millions, or where the file is valid in another common form (UTF-16 or a BOM, as
# Windows tools write); to stop where nothing sensible can come out, or where going on would hide
# a mistake (a config typo, a mismatched model or template, a file that is not the data).
CASES = [
    # ------------------------------------------------------------------ 01: the raw file
    Case("few-malformed-lines-are-skipped", "01_prepare.py",
         lambda c: prep(c, raw(c, "trn.jsonl", text=jsonl(rows_for(ROWS)) + '{"title": "cut\n'), name="new"),
         0, check=counted(USABLE, malformed_json=1)),
    Case("mostly-malformed-lines", "01_prepare.py",
         lambda c: prep(c, raw(c, "broken.jsonl", text=half_broken_lines())), 2,
         names=r"<in>/broken\.jsonl: 60 of 120 rows unreadable \(60 malformed_json; first at line 1",
         fix=r"check it is JSON Lines.*or raise data\.max_malformed_fraction"),
    Case("truncated-gzip", "01_prepare.py", lambda c: prep(c, truncated_gzip(c)), 2,
         names=r"<in>/trn\.json\.gz is a truncated or corrupt gzip file", fix=r"download it again"),
    Case("dataset-zip-is-read", "01_prepare.py",
         lambda c: prep(c, release_zip(c, "tst.json.gz", "trn.json.gz"), name="new"), 0,
         check=counted(USABLE)),
    Case("zip-without-trn-json", "01_prepare.py",
         lambda c: prep(c, release_zip(c, "tst.json.gz", "lbl.json.gz")), 2,
         names=r"<in>/LF-AmazonTitles-1\.3M\.zip holds no trn\.json or trn\.json\.gz \(it holds "
               r"LF-AmazonTitles-1\.3M/tst\.json\.gz, LF-AmazonTitles-1\.3M/lbl\.json\.gz\)",
         fix=r"name the member to read with data\.member=<name>"),
    Case("zip-with-two-trn-json", "01_prepare.py",
         lambda c: prep(c, release_zip(c, "trn.json", "trn.json.gz")), 2,
         names=r"<in>/LF-AmazonTitles-1\.3M\.zip holds 2 members named trn\.json: "
               r"LF-AmazonTitles-1\.3M/trn\.json, LF-AmazonTitles-1\.3M/trn\.json\.gz",
         fix=r"pick one with data\.member=<its full name>"),
    Case("truncated-zip", "01_prepare.py", lambda c: prep(c, release_zip(c, "trn.json.gz", cut=True)), 2,
         names=r"<in>/LF-AmazonTitles-1\.3M\.zip starts like a zip archive but cannot be opened",
         fix=r"download it again"),
    Case("utf16-with-bom-is-read", "01_prepare.py",
         lambda c: prep_rows(c, rows_for(ROWS), encoding="utf-16", name="new"),
         0, check=counted(USABLE, encoding="utf-16")),
    Case("latin1-file", "01_prepare.py",
         lambda c: prep_rows(c, latin1_rows(), file="latin1.jsonl", encoding="latin-1"), 2,
         names=r"<in>/latin1\.jsonl: 120 of 120 rows unreadable \(120 not_utf8",
         fix=r"re-save it as UTF-8"),
    Case("utf8-bom-is-read", "01_prepare.py",
         lambda c: prep_rows(c, rows_for(ROWS), encoding="utf-8-sig", name="new"),
         0, check=counted(USABLE, encoding="utf-8-sig")),
    Case("no-title-field", "01_prepare.py", lambda c: prep_rows(c, without("title")), 2,
         names=r"no usable rows in <in>/trn\.jsonl \(120 read: 120 missing_title\)",
         fix=r"the rows need 'title' and 'content' fields"),
    Case("no-content-field", "01_prepare.py", lambda c: prep_rows(c, without("content")), 2,
         names=r"no usable rows in <in>/trn\.jsonl \(120 read: 120 missing_content\)",
         fix=r"the rows need 'title' and 'content' fields"),
    Case("title-is-a-number", "01_prepare.py", lambda c: prep_rows(c, every_row(title=12345)), 2,
         names=r"no usable rows in <in>/trn\.jsonl \(120 read: 120 wrong_type\)", fix=r"must be strings"),
    Case("content-is-null", "01_prepare.py", lambda c: prep_rows(c, every_row(content=None)), 2,
         names=r"no usable rows in <in>/trn\.jsonl \(120 read: 120 wrong_type\)", fix=r"must be strings"),
    Case("content-is-a-list", "01_prepare.py", lambda c: prep_rows(c, every_row(content=["a", "b"])), 2,
         names=r"no usable rows in <in>/trn\.jsonl \(120 read: 120 wrong_type\)", fix=r"must be strings"),
    Case("wrong-types-in-a-few-rows-are-skipped", "01_prepare.py",
         lambda c: prep_rows(c, edited(r1={"content": ["a"]}, r2={"title": 7}, r4={"content": None}),
                             name="new"),
         0, check=counted(USABLE - 3, wrong_type=3)),
    Case("one-1mb-content-line-is-skipped", "01_prepare.py",
         lambda c: prep_rows(c, edited(r1={"content": "word " * 210_000}), name="new"),
         0, check=counted(USABLE - 1, content_too_long=1)),
    Case("empty-file", "01_prepare.py", lambda c: prep(c, raw(c, "empty.jsonl", text="")), 2,
         names=r"data file <in>/empty\.jsonl is empty", fix=r"check the download"),
    Case("blank-lines-only", "01_prepare.py", lambda c: prep(c, raw(c, "blank.jsonl", text="\n  \n\n")), 2,
         names=r"<in>/blank\.jsonl holds no rows", fix=r"check the download"),
    Case("every-row-filtered-out", "01_prepare.py",
         lambda c: prep_rows(c, rows_for(ROWS), "data.min_content_chars=500", "data.max_content_chars=900"),
         2,
         names=r"no usable rows in <in>/trn\.jsonl \(120 read: 80 content_too_short, 40 empty_content\)",
         fix=r"relax data\.min_content_chars"),
    Case("missing-path", "01_prepare.py", lambda c: prep(c, c.inputs / "nowhere.jsonl"), 2,
         names=r"data file <in>/nowhere\.jsonl not found", fix=r"check data\.source"),
    Case("directory-given-as-file", "01_prepare.py", lambda c: prep(c, c.inputs), 2,
         names=r"data file <in> is a folder", fix=r"give the path of trn\.json or trn\.json\.gz itself"),
    Case("unreadable-file", "01_prepare.py", lambda c: prep(c, locked_file(c)), 2, permissions=True,
         names=r"cannot read <in>/locked\.jsonl: permission denied", fix=r"fix the file's permissions"),
    Case("truncated-json-array", "01_prepare.py",
         lambda c: prep(c, raw(c, "trn.json", text=json.dumps(rows_for(ROWS))[:-300])), 2,
         names=r"<in>/trn\.json: JSON array element \d+ is malformed", fix=r"convert the file to JSON Lines"),
    Case("source-climbs-out-of-the-root", "01_prepare.py", lambda c: prep(c, "../../elsewhere.jsonl"), 2,
         names=r"data\.source '\.\./\.\./elsewhere\.jsonl' points outside the root",
         fix=r"give an absolute path"),
    # ------------------------------------------------------------------ config
    Case("unknown-config-key", "01_prepare.py", lambda c: ["--root", str(c.root), "train.lr=1e-4"], 2,
         names=r"unknown config key 'train\.lr'", fix=r"did you mean 'train\.learning_rate'\?"),
    Case("mistyped-value", "01_prepare.py", lambda c: ["--root", str(c.root), "train.learning_rate=abc"], 2,
         names=r"config key 'train\.learning_rate'", fix=r"expects a number, got 'abc'"),
    Case("override-without-equals", "01_prepare.py", lambda c: ["--root", str(c.root), "overwrite"], 2,
         names=r"override 'overwrite' is not key=value", fix=r"e\.g\. train\.learning_rate=1e-4"),
    Case("zero-test-size", "01_prepare.py", lambda c: ["--root", str(c.root), "data.test_size=0"], 2,
         names=r"config key 'data\.test_size'", fix=r"must be > 0"),
    Case("negative-train-size", "01_prepare.py", lambda c: ["--root", str(c.root), "data.train_size=-5"], 2,
         names=r"config key 'data\.train_size'", fix=r"must be a count >= 1 or a fraction in \(0, 1\)"),
    Case("zero-batch-size", "02_sft_qlora.py", lambda c: tiny(c, "train.batch_size=0"), 2,
         names=r"config key 'train\.batch_size'", fix=r"must be > 0"),
    Case("splits-larger-than-the-data", "01_prepare.py",
         lambda c: prep_rows(c, rows_for(ROWS), "data.train_size=1000", "data.validation_size=100",
                             "data.test_size=100"), 2,
         names=r"the splits ask for 1000 train \+ 100 validation \+ 100 test rows but only 80 usable rows",
         fix=r"lower data\.train_size / data\.validation_size / data\.test_size, or give fractions"),
    Case("run-name-climbs-out", "02_sft_qlora.py", lambda c: tiny(c, "paths.run=../../escape"), 2,
         names=r"config key 'paths\.run' '\.\./\.\./escape' is not a plain folder name",
         fix=r"use letters, digits"),
    Case("run-name-with-a-slash", "03_merge_fp16.py", lambda c: tiny(c, "paths.run=a/b"), 2,
         names=r"config key 'paths\.run' 'a/b' is not a plain folder name", fix=r"use letters, digits"),
    Case("unknown-preset", "01_prepare.py", lambda c: ["--root", str(c.root), "--preset", "nosuch"], 2,
         names=r"unknown preset 'nosuch'", fix=r"choose one of .*cpu.* or give a path to a \.yaml file"),
    Case("preset-file-not-yaml", "01_prepare.py", lambda c: preset_file(c, "train:\n  batch_size: [4\n"), 2,
         names=r"<in>/mine\.yaml is not valid YAML \(.* at line \d+\)", fix=r"fix the file"),
    Case("preset-file-mistyped-value", "01_prepare.py",
         lambda c: preset_file(c, "train:\n  learning_rate: fast\n"), 2,
         names=r"config key 'train\.learning_rate'", fix=r"expects a number, got 'fast'"),
    # ------------------------------------------------------------------ where the artifacts go
    Case("read-only-root", "01_prepare.py", read_only_root, 1, permissions=True,
         names=r"Permission denied: <root>/data/prepared",
         fix=r"check the permissions of that path, or choose another --root"),
    Case("root-is-a-file", "01_prepare.py",
         lambda c: prep(c, "bundled") + ["--root", str(raw(c, "afile", text="not a folder"))], 1,
         names=r"Not a directory: <in>/afile", fix=r"a file where a folder is expected: check --root"),
    Case("disk-full-while-saving-01", "01_prepare.py", lambda c: prep_rows(c, rows_for(ROWS)), 1,
         enospc="manifest.json",
         names=r"No space left on device: <root>/data/prepared/\.prev\.tmp-\d+/manifest\.json",
         fix=r"free some space there \(or choose another --root\)"),
    Case("disk-full-while-saving-the-02-adapter", "02_sft_qlora.py", retrain_over_adapter, 1,
         enospc="prompt_template.json",
         names=r"No space left on device: <root>/runs/tiny/\.adapter\.tmp-\d+/prompt_template\.json",
         fix=r"free some space there",
         # training itself writes the run's files, and `datasets` its cache next to the prepared data
         may_add=("root/runs/tiny/*", "root/data/prepared/prev/dataset/*/cache-*.arrow")),
    Case("drive-not-mounted", "01_prepare.py", lambda c: [], 2, env=(("COLAB_RELEASE_TAG", "release-test"),),
         names=r"running in Colab but Google Drive is not mounted at /content/drive",
         fix=r"drive\.mount\('/content/drive'\).*or pass --root"),
    # ------------------------------------------------------------------ models, adapters, prepared data
    Case("unknown-model-offline", "02_sft_qlora.py", lambda c: tiny(c, "model.name=some/unknown-repo"), 2,
         names=r"cannot load model\.name 'some/unknown-repo'",
         fix=r"use model\.name=smollm2-135m-instruct offline or give a local model folder",
         may_add=("root/runs/tiny/config.yaml", "root/runs/tiny/prepared_data.json")),
    Case("no-prepared-data-for-02", "02_sft_qlora.py", lambda c: tiny(c, "data.name=never-prepared"), 2,
         names=r"no prepared data at <root>/data/prepared/never-prepared", fix=r"run 01_prepare\.py first"),
    Case("prepared-with-another-template", "02_sft_qlora.py", lambda c: tiny(c, "data.template=alpaca"), 2,
         names=r"data at <root>/data/prepared/prev was made with template 'chat'.*data\.template=alpaca",
         fix=r"run 01_prepare\.py with overwrite=true, or set data\.template to the one used"),
    Case("missing-adapter-for-03", "03_merge_fp16.py", lambda c: tiny(c), 2,
         names=r"no trained adapter at <root>/runs/tiny/adapter", fix=r"run 02_sft_qlora\.py first"),
    Case("missing-adapter-for-04", "04_quick_demo.py", lambda c: [*tiny(c), "Acme Steel Kettle 1 l"], 2,
         names=r"no trained adapter at <root>/runs/tiny/adapter", fix=r"run 02_sft_qlora\.py first"),
    Case("adapter-of-another-base-for-03", "03_merge_fp16.py", other_base, 2,
         names=rf"the adapter was trained on '{OTHER_BASE}'.* but model\.name is",
         fix=r"set model\.name to the adapter's base model"),
    Case("adapter-of-another-base-for-04", "04_quick_demo.py", lambda c: other_base(c, "Acme Kettle 1 l"), 2,
         names=rf"the adapter was trained on '{OTHER_BASE}'",
         fix=r"set model\.name to the adapter's base model"),
    # ------------------------------------------------------------------ --debug
    Case("debug-shows-the-traceback", "01_prepare.py", lambda c: prep(c, c.inputs / "nowhere.jsonl"), 1,
         debug=True),
]


AS_SCRIPT_TOO = ("few-malformed-lines-are-skipped", "no-prepared-data-for-02", "missing-adapter-for-04")
"""Cases run both ways: the real scripts behave as main() (see the module docstring)."""


def test_the_corpus_is_large_and_its_ids_unique():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)
    assert set(AS_SCRIPT_TOO) <= {c.id for c in CASES if not c.needs_a_process}


# --------------------------------------------------------------------------- running a case


PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _without_permission_override() -> None:
    """In the child, before exec: root keeps its uid but loses the capabilities that let it ignore
    file permissions, so a mode-000 file or a 0555 folder stops it like anyone else."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def permissions_enforced(probe_dir: Path) -> dict:
    """subprocess.run arguments under which file permissions bite: none for a normal user; as
    root, drop the override capabilities, after proving that this blocks a read (else skip)."""
    if os.geteuid() != 0:
        return {}
    kw = {"preexec_fn": _without_permission_override}
    locked = probe_dir / "probe-000"
    locked.write_text("secret")
    locked.chmod(0)
    try:
        probe = subprocess.run([PYTHON, "-c", f"open({str(locked)!r}).read()"], capture_output=True,
                               text=True, timeout=60, **kw)
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"tests run as root, for whom permissions block nothing, and dropping "
                    f"CAP_DAC_OVERRIDE failed here ({err})")
    finally:
        locked.unlink()
    if "PermissionError" not in probe.stderr:
        pytest.skip("tests run as root, for whom permissions block nothing, and dropping CAP_DAC_OVERRIDE "
                    "did not change that here")
    return kw


def stage_main(script: str) -> Callable[[list[str]], int]:
    """The ``main`` the script calls (each is ``from prodesc import <stage>`` and ``<stage>.main``)."""
    name = re.search(r"^from prodesc import (\w+)$", (SRC / script).read_text(), re.M).group(1)
    return importlib.import_module(f"prodesc.{name}").main


def run_in_process(case: Case, c: Ctx, args: list[str], monkeypatch, capfd) -> subprocess.CompletedProcess:
    """``main(argv)`` of the case's stage, in the environment and working directory the script
    gets from run_case; returns what the script would have (exit code, stdout, stderr)."""
    env = {**stage_env(), **dict(case.env)}
    for key in set(os.environ) - set(env):
        monkeypatch.delenv(key)
    for key, value in env.items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    # huggingface_hub and datasets read the offline switches (stage_env sets them) when imported,
    # which in this process was before this case
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("datasets.config.HF_DATASETS_OFFLINE", True)
    monkeypatch.chdir(c.cwd)
    argv = ["--preset", "cpu", *args]
    main = stage_main(case.script)
    capfd.readouterr()  # what the setup printed
    before = dict(os.environ)
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own errors: the script would exit so
        code = 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
    finally:
        for key in set(os.environ) - set(before):  # what the stage set must not reach the next case
            del os.environ[key]
        os.environ.update(before)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def run_case(case: Case, c: Ctx, args: list[str]) -> subprocess.CompletedProcess:
    env = stage_env()
    env.update(case.env)
    kw = permissions_enforced(c.dir.parent) if case.permissions else {}
    if case.enospc:
        if not Path("/proc/self/fd").is_dir():
            pytest.skip("the full-disk fake reads /proc/self/fd (Linux)")
        hook = c.dir.parent / "hook"  # outside the hashed folder
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(ENOSPC_HOOK)
        env["PYTHONPATH"] = str(hook) + os.pathsep + env["PYTHONPATH"]
        env["PRODESC_TEST_ENOSPC"] = case.enospc
    command = [PYTHON, str(SRC / case.script), "--preset", "cpu", *(["--debug"] if case.debug else []), *args]
    return subprocess.run(command, env=env, cwd=c.cwd, capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.parametrize("case, as_script", [
    *(pytest.param(c, False, id=c.id) for c in CASES if not c.needs_a_process),
    *(pytest.param(c, True, id=f"{c.id}-as-script")
      for c in CASES if c.needs_a_process or c.id in AS_SCRIPT_TOO),
])
def test_bad_input(case: Case, as_script: bool, ctx: Ctx, monkeypatch, capfd):
    if case.env and Path("/content/drive").is_mount():
        pytest.skip("a real Colab Drive is mounted here")
    args = case.setup(ctx)
    before = file_hashes(ctx.dir)
    res = run_case(case, ctx, args) if as_script else run_in_process(case, ctx, args, monkeypatch, capfd)
    after = file_hashes(ctx.dir)
    said = res.stdout + res.stderr

    assert res.returncode == case.rc, said
    assert not temp_leftovers(ctx.dir), temp_leftovers(ctx.dir)
    changed = sorted(p for p, digest in before.items() if after.get(p) != digest)
    assert not changed, f"pre-existing files changed or removed: {changed}"

    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    if case.debug:
        assert "Traceback" in res.stderr and "DataError" in res.stderr and "nowhere.jsonl" in res.stderr
        return
    assert "Traceback" not in said
    if case.rc == 0:
        assert errors == [], res.stderr
        case.check(ctx, res)
        return
    assert len(errors) == 1, res.stderr
    assert res.stderr.rstrip().splitlines()[-1] == errors[0], "the error is the last thing said"
    line = errors[0]
    assert len(line) < 600, line
    for pattern in (case.names, case.fix):
        regex = pattern.replace("<in>", re.escape(str(ctx.inputs)))
        regex = regex.replace("<root>", re.escape(str(ctx.root)))
        assert re.search(regex, line), f"{pattern!r} not in: {line}"
    added = sorted(set(after) - set(before))
    unexpected = [p for p in added if not any(fnmatch.fnmatch(p, glob) for glob in case.may_add)]
    assert not unexpected, f"a stage that stopped wrote: {unexpected}"
