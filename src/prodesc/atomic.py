"""Atomic writes: every artifact appears whole under its final name, or not at all.

A file is written to a temporary sibling and renamed over the target (``os.replace`` is atomic
on POSIX within one filesystem, Google Drive's FUSE mount included). A directory artifact is built
in a temporary sibling directory and renamed into place only once it is complete.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
"""What a plain ``open(path, "w")`` would give (mkstemp's 0600 would hide files from other users)."""


def _tmp_sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno and not err.filename:  # a full disk names no file
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


@contextlib.contextmanager
def build_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory; on success, move it to ``final`` in one rename.

    On an exception the temporary directory is removed and ``final`` is left as it was. With
    ``overwrite`` an existing ``final`` is replaced only after the new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(final)
    tmp = _tmp_sibling(final, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final, overwrite=overwrite)


def sweep_leftovers(final: Path) -> list[Path]:
    """Remove what a killed writer of ``final`` left beside it; return what was removed.

    ``.<name>.tmp-<pid>`` (a directory being built) and ``.<name>.old-<pid>`` (the previous version
    being replaced) of a process that is no longer alive on this machine are deleted, except an
    ``old`` one when ``final`` itself is missing: the kill fell between the two renames, so that
    folder is the last complete version and is moved back to ``final``. A leftover whose pid is
    alive (another writer, or an unrelated process of a later runtime that reuses the pid) is kept.
    """
    from prodesc.runlock import pid_alive

    removed: list[Path] = []
    prefix = f".{final.name}."
    try:
        siblings = [p for p in final.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return removed
    for path in sorted(siblings):
        kind, _, pid = path.name[len(prefix):].partition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        if kind == "old" and not final.exists():
            os.replace(path, final)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def replace_dir(src: Path, final: Path, overwrite: bool = False) -> None:
    """Move the complete directory ``src`` to ``final``, replacing an old one if ``overwrite``.

    An existing ``final`` without ``overwrite``, or one another process moved there meanwhile,
    raises ``FileExistsError`` naming it; ``src`` is then removed."""
    clash = FileExistsError(errno.EEXIST, "already exists (another run may have written it meanwhile)", str(final))
    old = None
    if final.exists():
        if not overwrite:
            shutil.rmtree(src, ignore_errors=True)
            raise clash
        old = _tmp_sibling(final, "old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    try:
        os.replace(src, final)
    except OSError as err:
        shutil.rmtree(src, ignore_errors=True)
        if err.errno in (errno.EEXIST, errno.ENOTEMPTY):  # final appeared since the check
            raise clash from err
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
