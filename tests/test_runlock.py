"""One run, one writer: prodesc.runlock with real processes contending for a real lock file.

"Another host" cannot be created here: those tests write a lock file whose hostname is not this
machine's, exactly as a Colab VM that has since disconnected would have left it on Drive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PYTHON, SRC, stage_env
from prodesc import runlock
from prodesc.paths import RunPaths
from prodesc.runlock import LockInfo, RunLock, RunLockedError

HOLD = """
import sys, time
from pathlib import Path
from prodesc.runlock import RunLock
lock = RunLock(Path(sys.argv[1]), "r1", "holder", heartbeat_s=0.2)
with lock:
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
print("released", flush=True)
"""

TRY = """
import sys
from pathlib import Path
from prodesc.errors import run_guarded
from prodesc.runlock import RunLock

def body():
    with RunLock(Path(sys.argv[1]), "r1", "second"):
        print("acquired", flush=True)
    return 0

sys.exit(run_guarded(body, debug=False))
"""


def _paths(tmp_path: Path) -> RunPaths:
    return RunPaths(root=tmp_path / "root", run_name="r1", prepared_name="p")


def _start_holder(lock: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([PYTHON, "-c", HOLD, str(lock), str(seconds)], env=stage_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held", proc.stderr.read()
    return proc


def _plant(lock: Path, age_s: float = 0.0, **fields) -> LockInfo:
    """Write a lock file as another process would have, with its heartbeat ``age_s`` old."""
    info = LockInfo(**{**dict(pid=123456, host=runlock.hostname(), boot_id=runlock.boot_id(),
                              proc_start=None, started="2026-01-01T00:00:00+00:00",
                              token="feedfacefeedface", stage="02_sft_qlora"), **fields})
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(info.to_json())
    then = time.time() - age_s
    os.utime(lock, (then, then))
    return info


def _dead_pid() -> int:
    proc = subprocess.Popen([PYTHON, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_path_comes_from_runpaths(tmp_path):
    paths = _paths(tmp_path)
    assert paths.lock == paths.run / "run.lock"
    with runlock.run_lock(paths, "02_sft_qlora", heartbeat_s=0) as lock:
        held = json.loads(paths.lock.read_text())
        assert held["pid"] == os.getpid() and held["host"] == runlock.hostname()
        assert held["stage"] == "02_sft_qlora" and held["token"] == lock.info.token
        assert held["started"] and held["proc_start"] == runlock.proc_start(os.getpid())
    assert not paths.lock.exists()


def test_released_on_exception(tmp_path):
    paths = _paths(tmp_path)
    with pytest.raises(ZeroDivisionError):
        with runlock.run_lock(paths, "03_merge_fp16", heartbeat_s=0):
            assert paths.lock.is_file()
            1 / 0
    assert not paths.lock.exists()


def test_only_rank_zero_takes_the_lock(tmp_path):
    assert runlock.is_main_rank({}) and runlock.is_main_rank({"RANK": "0"})
    assert not runlock.is_main_rank({"RANK": "1"})
    paths = _paths(tmp_path)
    with runlock.run_lock(paths, "02", enabled=False) as lock:
        assert lock is None and not paths.lock.exists()


def test_two_processes_contend_one_is_refused_then_the_next_succeeds(tmp_path):
    lock = _paths(tmp_path).lock
    holder = _start_holder(lock, 6)
    try:
        second = subprocess.run([PYTHON, "-c", TRY, str(lock)], env=stage_env(), capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "acquired" not in second.stdout
        err = second.stderr.strip()
        assert len(err.splitlines()) == 1, err
        assert f"run 'r1' is in use: holder (pid {holder.pid}) on this machine holds {lock}" in err
        assert "wait for it to finish" in err
        # the heartbeat keeps the file fresh while it is held
        first = lock.stat().st_mtime
        time.sleep(0.6)
        assert lock.stat().st_mtime > first
    finally:
        out, err = holder.communicate(timeout=60)
    assert holder.returncode == 0 and "released" in out, err
    assert not lock.exists()
    again = subprocess.run([PYTHON, "-c", TRY, str(lock)], env=stage_env(), capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0 and "acquired" in again.stdout, again.stderr


def test_many_processes_race_exactly_one_wins(tmp_path):
    lock = _paths(tmp_path).lock
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom prodesc.runlock import RunLock, RunLockedError\n"
        "start = float(sys.argv[2])\n"
        "while time.time() < start: time.sleep(0.001)\n"
        "try:\n"
        "    with RunLock(Path(sys.argv[1]), 'r1', 'racer', heartbeat_s=0):\n"
        "        print('won', flush=True); time.sleep(3)\n"
        "except RunLockedError:\n"
        "    print('refused', flush=True)\n"
    )
    start = time.time() + 4  # every process is past its imports by then
    procs = [subprocess.Popen([PYTHON, "-c", code, str(lock), str(start)], env=stage_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    results = sorted(o.strip() for o, _ in outs)
    assert results == ["refused", "refused", "refused", "won"], outs


def test_a_killed_holder_is_taken_over_with_a_warning(tmp_path, capsys):
    """SIGKILL leaves the lock file behind; the next writer on this machine sees the pid is gone."""
    lock = _paths(tmp_path).lock
    holder = _start_holder(lock, 60)
    holder.kill()
    holder.wait()
    assert json.loads(lock.read_text())["pid"] == holder.pid  # left behind
    with pytest.warns(RuntimeWarning, match=f"pid {holder.pid} .* is no longer running"):
        with RunLock(lock, "r1", "next", heartbeat_s=0) as taken:
            assert json.loads(lock.read_text())["token"] == taken.info.token
    assert "taking over the lock of run 'r1'" in capsys.readouterr().err
    assert not lock.exists()
    assert not list(lock.parent.glob("run.lock.stale-*"))


def test_dead_pid_and_reused_pid_are_stale(tmp_path):
    lock = _paths(tmp_path).lock
    _plant(lock, pid=_dead_pid())
    with pytest.warns(RuntimeWarning, match="no longer running"):
        RunLock(lock, "r1", "x", heartbeat_s=0).acquire().release()
    # a live pid that started at another time is a different process that reuses the number
    _plant(lock, pid=os.getppid(), proc_start=(runlock.proc_start(os.getppid()) or 0) + 1)
    with pytest.warns(RuntimeWarning, match="no longer running"):
        RunLock(lock, "r1", "x", heartbeat_s=0).acquire().release()
    # the same live process is not stale
    _plant(lock, pid=os.getppid(), proc_start=runlock.proc_start(os.getppid()))
    with pytest.raises(RunLockedError, match=f"pid {os.getppid()}\\) on this machine"):
        RunLock(lock, "r1", "x", heartbeat_s=0).acquire()


def test_stale_heartbeat_from_another_host_is_taken_over(tmp_path):
    """A Colab VM that disconnected: other hostname, its heartbeat stopped 11 minutes ago."""
    lock = _paths(tmp_path).lock
    _plant(lock, age_s=660, host="colab-vm-old", boot_id="other-boot", pid=os.getpid())
    with pytest.warns(RuntimeWarning, match="host 'colab-vm-old', sent no heartbeat for 6[56]\\d s"):
        with RunLock(lock, "r1", "02", heartbeat_s=0) as taken:
            assert taken.holds()
    assert not lock.exists()


def test_fresh_lock_from_another_host_is_refused(tmp_path):
    lock = _paths(tmp_path).lock
    info = _plant(lock, age_s=20, host="colab-vm-other", pid=_dead_pid())  # a dead pid here means nothing
    with pytest.raises(RunLockedError) as caught:
        RunLock(lock, "r1", "02", heartbeat_s=0).acquire()
    msg = str(caught.value)
    assert "\n" not in msg
    assert f"pid {info.pid}) on host 'colab-vm-other' holds {lock}" in msg
    assert "last heartbeat 2" in msg and f"if no other runtime is using this run, delete {lock}" in msg
    assert json.loads(lock.read_text())["token"] == info.token  # untouched
    # same hostname but another boot id is another machine too (containers)
    _plant(lock, age_s=5, boot_id="not-this-boot", pid=_dead_pid())
    with pytest.raises(RunLockedError, match="on host"):
        RunLock(lock, "r1", "02", heartbeat_s=0).acquire()


def test_unreadable_lock_waits_for_the_grace_period(tmp_path):
    lock = _paths(tmp_path).lock
    lock.parent.mkdir(parents=True)
    lock.write_text("")  # its writer died between creating and filling it
    with pytest.raises(RunLockedError, match="being written or is unreadable"):
        RunLock(lock, "r1", "02", heartbeat_s=0).acquire()
    old = time.time() - 120
    os.utime(lock, (old, old))
    with pytest.warns(RuntimeWarning, match="content is unreadable"):
        RunLock(lock, "r1", "02", heartbeat_s=0).acquire().release()


def test_a_lock_taken_over_is_not_deleted_by_its_old_holder(tmp_path):
    lock = _paths(tmp_path).lock
    first = RunLock(lock, "r1", "a", heartbeat_s=0).acquire()
    other = _plant(lock, token="0123456789abcdef", host="elsewhere")  # as if taken over meanwhile
    assert not first.holds()
    first.release()
    assert json.loads(lock.read_text())["token"] == other.token


def test_stage_refuses_while_another_process_holds_the_run(tmp_path):
    """The real 02 and 03 scripts stop with one line before loading anything heavy."""
    paths = RunPaths(root=tmp_path / "root", run_name="held", prepared_name="p")
    holder = _start_holder(paths.lock, 60)
    try:
        for script in ("02_sft_qlora.py", "03_merge_fp16.py"):
            out = subprocess.run(
                [sys.executable, str(SRC / script), "--preset", "cpu", f"--root={paths.root}", "paths.run=held"],
                env=stage_env(), capture_output=True, text=True, timeout=120,
            )
            assert out.returncode == 2, (script, out.stderr)
            last = out.stderr.strip().splitlines()[-1]
            assert last.startswith("error: run 'held' is in use: holder (pid") and str(paths.lock) in last
    finally:
        holder.kill()
        holder.wait()
