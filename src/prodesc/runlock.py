"""One run, one writer: a lock file in the run folder held while 02 or 03 writes into it.

Two stages writing the same run at once (a second Colab tab, a cell run twice, 03 started while
02 still trains) would interleave checkpoints and overwrite each other's artifacts. So 02 and 03
hold ``runs/<run>/run.lock`` (:attr:`prodesc.paths.RunPaths.lock`) while they run, and a second
writer stops at once with a one-line error naming the holder.

Why a plain file and not ``fcntl``/``flock``: the run folder usually lives on Google Drive, a FUSE
mount on which POSIX advisory locks are not reliable (and would not reach another VM anyway). The
lock is therefore a file created with ``O_CREAT | O_EXCL`` -- of two processes creating it, exactly
one succeeds -- holding JSON: pid, hostname, boot id, the process's start time (``/proc``), the
wall-clock start, a random token and the stage.

A lock left behind by a process that died (SIGKILL, a crashed VM) must not block the run forever:

- **Same machine** (same hostname and boot id): the holder is alive when its pid exists, is not a
  zombie, and started at the recorded time (so a reused pid is not mistaken for the holder). A
  dead holder's lock is taken over with a warning.
- **Another machine**: its pid cannot be checked. The holder refreshes the lock file's
  modification time every :data:`HEARTBEAT_S` (10) seconds (a daemon thread); a lock whose
  heartbeat is older than :data:`STALE_AFTER_S` (60 s) is taken over with a warning. This is the
  Colab case: after a reset the new runtime is a new VM (new hostname and boot id), the old one is
  gone, and its lock must not hold up "Run all". A fresh lock from another machine -- a second
  runtime on the same Drive folder -- is refused with one line: the holder, its heartbeat's age,
  when it would be taken over, and ``unlock=true``.

  Why 60 s: Drive syncs asynchronously, so a heartbeat written on one VM shows on another only
  after a delay, which can be tens of seconds. 60 s is six missed heartbeats and leaves 50 s of
  such delay before a live holder could look dead. A rerun on a fresh Colab VM mounts Drive,
  clones and runs 00_install and 01 before 02, which usually takes longer than 60 s (not measured
  here), so it usually starts at once. Exclusion between VMs is only as good as Drive's sync: a
  lock file created on one VM is likewise invisible to another until synced, and the heartbeat
  assumes Drive carries a file's mtime across (not testable here).
- ``unlock=true`` (:attr:`prodesc.config.Config.unlock`) takes over a lock from another machine
  or an unreadable one at once, with a warning naming the holder: for a user who knows that
  runtime is gone. It never takes the lock from a live process on this machine.
- A lock file with unreadable content (its writer died between creating and filling it) is stale
  once it is older than :data:`UNREADABLE_GRACE_S`.

Taking over renames the stale file aside, checks that the renamed file is the one judged stale
(else puts it back and refuses), then creates a fresh lock with ``O_EXCL`` again. Release deletes
the file only while it still holds this process's token. The lock is released when the ``with``
block ends, also on an exception or Ctrl-C; a SIGKILL leaves it behind, to be taken over as above.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from prodesc.errors import UserError

HEARTBEAT_S = 10.0
"""How often the holder refreshes the lock file's modification time."""

STALE_AFTER_S = 60.0
"""A lock from another machine whose heartbeat is older than this is considered abandoned (six
missed heartbeats: 50 s left for Drive to carry a heartbeat from one VM to another)."""

UNREADABLE_GRACE_S = 30.0
"""A lock file whose content cannot be read is considered abandoned after this many seconds."""

RANK_ENV = "RANK"
"""Set by ``accelerate launch``/``torchrun`` for every process; only rank 0 takes the lock."""


class RunLockedError(UserError):
    """Another live process holds the run's lock."""


@dataclass(frozen=True)
class LockInfo:
    pid: int
    host: str
    boot_id: str
    proc_start: int | None
    started: str
    token: str
    stage: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def parse(cls, raw: bytes) -> "LockInfo | None":
        try:
            data = json.loads(raw.decode("utf-8"))
            return cls(
                pid=int(data["pid"]),
                host=str(data["host"]),
                boot_id=str(data.get("boot_id", "")),
                proc_start=None if data.get("proc_start") is None else int(data["proc_start"]),
                started=str(data.get("started", "")),
                token=str(data["token"]),
                stage=str(data.get("stage", "")),
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None


# --------------------------------------------------------------------------- this machine


def hostname() -> str:
    return socket.gethostname()


def boot_id() -> str:
    """The kernel's boot id (Linux): tells apart two machines (containers) with the same hostname."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) from /proc/<pid>/stat, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()  # the command name may hold spaces and ')'
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def proc_start(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def pid_alive(pid: int, started: int | None = None) -> bool:
    """True when process ``pid`` runs on this machine (not a zombie, and, when ``started`` is
    known, the same process that recorded it rather than a later one given the same pid)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    stat = _proc_stat(pid)
    if stat is not None:
        state, start = stat
        if state in ("Z", "X"):
            return False
        if started is not None and start != started:
            return False
    return True


def this_process(stage: str) -> LockInfo:
    pid = os.getpid()
    return LockInfo(
        pid=pid,
        host=hostname(),
        boot_id=boot_id(),
        proc_start=proc_start(pid),
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        token=secrets.token_hex(8),
        stage=stage,
    )


# --------------------------------------------------------------------------- the lock


def _what(holder: LockInfo) -> str:
    return f"{holder.stage} (pid {holder.pid})" if holder.stage else f"pid {holder.pid}"


def _log(message: str) -> None:
    from prodesc.cli import log

    log(message)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


class RunLock:
    """``with RunLock(path, run, stage):`` -- hold the run's lock for the block (see the module doc)."""

    def __init__(
        self,
        path: Path,
        run_name: str,
        stage: str,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = STALE_AFTER_S,
        unreadable_grace_s: float = UNREADABLE_GRACE_S,
        unlock: bool = False,
    ) -> None:
        self.path = Path(path)
        self.run_name = run_name
        self.stage = stage
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.unreadable_grace_s = unreadable_grace_s
        self.unlock = unlock
        self.info: LockInfo | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ acquire

    def acquire(self) -> "RunLock":
        if self.info is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = this_process(self.stage)
        for _ in range(5):
            if self._create(mine):
                self.info = mine
                self._start_heartbeat()
                return self
            raw = _read(self.path)
            if raw is None:
                continue  # released in between: try again
            self._take_over_if_stale(raw)
        raise RunLockedError(
            f"run '{self.run_name}': could not take the lock {self.path} (other processes keep "
            "creating it): make sure only one stage writes this run at a time"
        )

    def _create(self, info: LockInfo) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(info.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _take_over_if_stale(self, raw: bytes) -> None:
        """Return after moving a stale lock aside; raise RunLockedError when the holder may be alive."""
        holder = LockInfo.parse(raw)
        age = self._heartbeat_age()
        reason = self._stale_reason(holder, age)
        if reason is None:
            raise RunLockedError(self._refusal(holder, age))
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else removed it first
        if _read(aside) != raw:  # a newer lock was created after we read the stale one: put it back
            with contextlib.suppress(OSError):
                if not self.path.exists():
                    os.rename(aside, self.path)
            raise RunLockedError(
                f"run '{self.run_name}': another process took the lock {self.path} just now; "
                "only one stage may write a run at a time"
            )
        with contextlib.suppress(OSError):
            os.unlink(aside)
        message = f"warning: taking over the lock of run '{self.run_name}' ({self.path}): {reason}"
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        _log(message)

    def _stale_reason(self, holder: LockInfo | None, age: float | None) -> str | None:
        """Why the lock held by ``holder`` may be taken, or None when its holder may be alive."""
        if holder is None:
            if age is not None and age > self.unreadable_grace_s:
                return f"its content is unreadable and it is {age:.0f} s old"
            return "unlock=true; its content is unreadable" if self.unlock else None
        if self._same_machine(holder):
            if not pid_alive(holder.pid, holder.proc_start):
                return f"pid {holder.pid} ({holder.stage or 'a stage'}) on this machine is no longer running"
            return None  # unlock=true or not: never from a live process here
        if age is not None and age > self.stale_after_s:
            return (
                f"its holder, pid {holder.pid} on host '{holder.host}', sent no heartbeat for "
                f"{age:.0f} s (limit {self.stale_after_s:.0f} s)"
            )
        if self.unlock:
            return (
                f"unlock=true; its holder, {_what(holder)} on host '{holder.host}', sent its last "
                f"heartbeat {age or 0.0:.0f} s ago: if that runtime is still running, stop it, as two "
                "runtimes writing one run overwrite each other's checkpoints"
            )
        return None

    def _same_machine(self, holder: LockInfo) -> bool:
        if holder.host != hostname():
            return False
        here = boot_id()
        return not (holder.boot_id and here and holder.boot_id != here)

    def _heartbeat_age(self) -> float | None:
        try:
            return max(0.0, time.time() - self.path.stat().st_mtime)
        except FileNotFoundError:
            return None

    def _refusal(self, holder: LockInfo | None, age: float | None) -> str:
        """One line: who holds the lock, since when, how old its heartbeat is, and what to do."""
        if holder is None:
            return (
                f"run '{self.run_name}' is locked by {self.path}, which is being written or is "
                f"unreadable: wait a few seconds and try again, or, if no stage is running on this "
                "run, run again with unlock=true"
            )
        what = _what(holder)
        if self._same_machine(holder):
            refused = " (unlock=true does not take it from a process running here)" if self.unlock else ""
            return (
                f"run '{self.run_name}' is in use: {what} on this machine holds {self.path} since "
                f"{holder.started}{refused}; wait for it to finish or stop it (if it is not a prodesc "
                f"stage, delete {self.path})"
            )
        age = age or 0.0
        left = max(0.0, self.stale_after_s - age)
        return (
            f"run '{self.run_name}' is in use: {what} on host '{holder.host}' holds {self.path} since "
            f"{holder.started}, last heartbeat {age:.0f} s ago; it is taken over automatically once "
            f"the heartbeat is {self.stale_after_s:.0f} s old (in {left:.0f} s): "
            "run again then, or now with unlock=true if no other runtime is using this run"
        )

    # ------------------------------------------------------------------ heartbeat

    def _start_heartbeat(self) -> None:
        if self.heartbeat_s <= 0:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="runlock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.holds():
                _log(f"warning: the lock {self.path} of run '{self.run_name}' was taken by another process")
                return
            with contextlib.suppress(OSError):
                os.utime(self.path, None)

    def holds(self) -> bool:
        """True while the lock file on disk is this lock's."""
        if self.info is None:
            return False
        raw = _read(self.path)
        holder = LockInfo.parse(raw) if raw is not None else None
        return holder is not None and holder.token == self.info.token

    # ------------------------------------------------------------------ release

    def release(self) -> None:
        if self.info is None:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        try:
            if self.holds():
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            self.info = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def is_main_rank(environ: dict[str, str] | os._Environ | None = None) -> bool:
    """False in the processes of a distributed launch other than rank 0."""
    env = os.environ if environ is None else environ
    try:
        return int(env.get(RANK_ENV, "0") or 0) == 0
    except ValueError:
        return True


@contextlib.contextmanager
def run_lock(paths: Any, stage: str, enabled: bool | None = None, **kwargs: Any) -> Iterator[RunLock | None]:
    """Hold ``paths.lock`` (a :class:`~prodesc.paths.RunPaths`) for the block. Only rank 0 of a
    distributed launch takes it (``enabled`` defaults to :func:`is_main_rank`)."""
    if enabled is None:
        enabled = is_main_rank()
    if not enabled:
        yield None
        return
    with RunLock(paths.lock, paths.run_name, stage, **kwargs) as lock:
        yield lock


def locked(body: Any, stage: str) -> Any:
    """``body(cfg, paths)`` run while holding the run's lock: what 02 and 03 pass to run_stage."""

    def wrapper(cfg: Any, paths: Any, *args: Any) -> None:
        with run_lock(paths, stage, unlock=cfg.unlock):
            body(cfg, paths, *args)

    wrapper.__name__ = getattr(body, "__name__", "body")
    wrapper.__doc__ = body.__doc__
    return wrapper
