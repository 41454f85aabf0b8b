"""One run, one writer: prodesc.runlock with real processes contending for a real lock file.

"Another host" cannot be created here: those tests write a lock file whose hostname is not this
machine's, exactly as a Colab VM that has since disconnected would have left it on Drive, or run a
holder process whose hostname and boot id are faked (a second live runtime). Heartbeat ages are set
with os.utime instead of waiting.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
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
from prodesc import runlock
from prodesc.runlock import RunLock
if len(sys.argv) > 3:  # pretend to be another machine: another Colab VM on the same Drive folder
    runlock.hostname = lambda: sys.argv[3]
    runlock.boot_id = lambda: "boot-" + sys.argv[3]
beat = float(sys.argv[4]) if len(sys.argv) > 4 else 0.2
lock = RunLock(Path(sys.argv[1]), "r1", "holder", heartbeat_s=beat)
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


def _start_holder(lock: Path, seconds: float, *host_and_heartbeat: str) -> subprocess.Popen:
    proc = subprocess.Popen([PYTHON, "-c", HOLD, str(lock), str(seconds), *host_and_heartbeat],
                            env=stage_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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


def test_fresh_lock_from_another_host_is_refused_with_one_line(tmp_path):
    lock = _paths(tmp_path).lock
    info = _plant(lock, age_s=20, host="colab-vm-other", pid=_dead_pid())  # a dead pid here means nothing
    with pytest.raises(RunLockedError) as caught:
        RunLock(lock, "r1", "02", heartbeat_s=0).acquire()
    msg = str(caught.value)
    assert "\n" not in msg
    shape = (
        f"run 'r1' is in use: 02_sft_qlora \\(pid {info.pid}\\) on host 'colab-vm-other' "
        f"holds {re.escape(str(lock))} since 2026-01-01T00:00:00\\+00:00, last heartbeat (\\d+) s ago; "
        "it is taken over automatically once the heartbeat is 60 s old \\(in (\\d+) s\\): "
        "run again then, or now with unlock=true if no other runtime is using this run"
    )
    found = re.fullmatch(shape, msg)
    assert found, msg
    age, left = int(found[1]), int(found[2])
    assert 20 <= age <= 22 and age + left in (59, 60, 61)
    assert json.loads(lock.read_text())["token"] == info.token  # untouched
    # same hostname but another boot id is another machine too (containers)
    _plant(lock, age_s=5, boot_id="not-this-boot", pid=_dead_pid())
    with pytest.raises(RunLockedError, match="on host"):
        RunLock(lock, "r1", "02", heartbeat_s=0).acquire()


def test_rerun_after_a_colab_reset_takes_over_at_the_default_limit(tmp_path):
    """The old VM is gone; the new one (another hostname and boot id) reruns the notebook. With the
    default limits a heartbeat 90 s old is stale, one just under 60 s is not."""
    lock = _paths(tmp_path).lock
    _plant(lock, age_s=runlock.STALE_AFTER_S - 3, host="colab-vm-old", boot_id="old-boot")
    with pytest.raises(RunLockedError, match="last heartbeat 5[78] s ago.*\\(in [23] s\\)"):
        RunLock(lock, "r1", "02", heartbeat_s=0).acquire()
    old = time.time() - (runlock.STALE_AFTER_S + 1)
    os.utime(lock, (old, old))
    stale = "host 'colab-vm-old', sent no heartbeat for 6[12] s \\(limit 60 s\\)"
    with pytest.warns(RuntimeWarning, match=stale):
        RunLock(lock, "r1", "02", heartbeat_s=0).acquire().release()
    _plant(lock, age_s=90, host="colab-vm-old", boot_id="old-boot")
    with pytest.warns(RuntimeWarning, match="sent no heartbeat for 9[01] s"):
        with RunLock(lock, "r1", "02", heartbeat_s=0) as taken:
            assert taken.holds()
    assert not lock.exists()


def _drive_sync(src: Path, dst: Path, lag_s: float, stop: threading.Event) -> None:
    """Stand-in for Drive between two VMs (there is no Drive here): ``dst`` is the holder's lock as
    the other VM sees it (copied before the thread starts), its heartbeat (mtime) arriving
    ``lag_s`` late."""
    seen: list[tuple[float, float]] = []
    while not stop.wait(0.02):
        with contextlib.suppress(FileNotFoundError):
            seen.append((time.time(), src.stat().st_mtime))
        due = [mtime for when, mtime in seen if when <= time.time() - lag_s]
        if due:
            os.utime(dst, (due[-1], due[-1]))


@pytest.mark.slow  # real processes, 10-17 s: in the full suite, not make test-fast
def test_a_live_holder_on_another_host_is_never_taken_for_dead(tmp_path):
    """Two runtimes on one Drive folder, both alive, Drive 35 s late: the holder heartbeats, the
    other VM is refused throughout, and takes over only once the holder is killed.
    Times are the real HEARTBEAT_S, STALE_AFTER_S and lag scaled down 20 times."""
    lock = _paths(tmp_path).lock
    seen_on_b = tmp_path / "vm-b" / "run.lock"
    beat, limit, lag = runlock.HEARTBEAT_S / 20, runlock.STALE_AFTER_S / 20, 35.0 / 20
    holder = _start_holder(lock, 60, "colab-vm-a", str(beat))
    seen_on_b.parent.mkdir()
    seen_on_b.write_bytes(lock.read_bytes())
    stop = threading.Event()
    sync = threading.Thread(target=_drive_sync, args=(lock, seen_on_b, lag, stop), daemon=True)
    sync.start()
    try:
        token = json.loads(lock.read_text())["token"]
        deadline = time.time() + limit + lag  # long enough for a misjudged holder to show
        refusals = 0
        while time.time() < deadline:
            with pytest.raises(RunLockedError, match="on host 'colab-vm-a'"):
                RunLock(seen_on_b, "r1", "vm-b", heartbeat_s=0, stale_after_s=limit).acquire()
            refusals += 1
            time.sleep(0.05)
        assert refusals > 20 and json.loads(seen_on_b.read_text())["token"] == token
    finally:
        holder.kill()
        holder.wait()
    time.sleep(limit + lag + 0.3)  # the killed VM's last heartbeat reaches B and goes stale there
    stop.set()
    sync.join()
    with pytest.warns(RuntimeWarning, match="host 'colab-vm-a', sent no heartbeat"):
        RunLock(seen_on_b, "r1", "vm-b", heartbeat_s=0, stale_after_s=limit).acquire().release()


def test_unlock_takes_a_fresh_lock_from_another_host_with_a_warning(tmp_path, capsys):
    lock = _paths(tmp_path).lock
    _plant(lock, age_s=12, host="colab-vm-other", boot_id="b")
    warned = ("unlock=true; its holder, 02_sft_qlora \\(pid 123456\\) on host 'colab-vm-other', sent its "
              "last heartbeat 1[23] s ago: if that runtime is still running, stop it")
    with pytest.warns(RuntimeWarning, match=warned):
        with RunLock(lock, "r1", "03", heartbeat_s=0, unlock=True) as taken:
            assert taken.holds()
    err = capsys.readouterr().err
    assert "warning: taking over the lock of run 'r1'" in err and len(err.strip().splitlines()) == 1
    # an unreadable lock too, without waiting for its grace period
    lock.write_text("")
    with pytest.raises(RunLockedError, match="if no stage is running on this run, run again with unlock=t"):
        RunLock(lock, "r1", "02", heartbeat_s=0).acquire()
    with pytest.warns(RuntimeWarning, match="unlock=true; its content is unreadable"):
        RunLock(lock, "r1", "02", heartbeat_s=0, unlock=True).acquire().release()
    # nothing to unlock: it just takes the lock
    RunLock(lock, "r1", "02", heartbeat_s=0, unlock=True).acquire().release()


def test_unlock_never_takes_the_lock_from_a_live_process_on_this_machine(tmp_path):
    lock = _paths(tmp_path).lock
    holder = _start_holder(lock, 30)
    try:
        token = json.loads(lock.read_text())["token"]
        with pytest.raises(RunLockedError) as caught:
            RunLock(lock, "r1", "02", heartbeat_s=0, unlock=True).acquire()
        msg = str(caught.value)
        assert f"holder (pid {holder.pid}) on this machine holds {lock} since " in msg
        assert "(unlock=true does not take it from a process running here); wait for it" in msg
        assert json.loads(lock.read_text())["token"] == token
    finally:
        holder.kill()
        holder.wait()
    with pytest.warns(RuntimeWarning, match="no longer running"):  # dead: taken over, as without unlock
        RunLock(lock, "r1", "02", heartbeat_s=0, unlock=True).acquire().release()


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
    """The real 02, 03 and 05 scripts stop with one line before loading anything heavy."""
    paths = RunPaths(root=tmp_path / "root", run_name="held", prepared_name="p")
    holder = _start_holder(paths.lock, 60)
    try:
        for script in ("02_sft_qlora.py", "03_merge_fp16.py", "05_export.py"):
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


def test_unlock_config_key_reaches_the_lock_of_02_and_03(tmp_path):
    """A fresh lock left by another VM: refused by default, naming unlock=true; with unlock=true
    the stage takes it over and goes on (here to its next error: nothing is trained yet)."""
    from prodesc.config import load_config

    assert load_config("cpu").unlock is False and load_config("cpu", ["unlock=true"]).unlock is True
    paths = RunPaths(root=tmp_path / "root", run_name="held", prepared_name="p")
    for script in ("02_sft_qlora.py", "03_merge_fp16.py"):
        _plant(paths.lock, age_s=15, host="colab-vm-old", boot_id="old-boot")
        cmd = [sys.executable, str(SRC / script), "--preset", "cpu", f"--root={paths.root}", "paths.run=held"]
        out = subprocess.run(cmd, env=stage_env(), capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, (script, out.stderr)
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("error: run 'held' is in use: 02_sft_qlora (pid 123456) on host 'colab-vm-")
        assert last.endswith("or now with unlock=true if no other runtime is using this run")
        out = subprocess.run([*cmd, "unlock=true"], env=stage_env(), capture_output=True, text=True,
                             timeout=120)
        assert "taking over the lock of run 'held'" in out.stderr, (script, out.stderr)
        assert "unlock=true; its holder" in out.stderr
        assert "is in use" not in out.stderr
        assert not paths.lock.exists()  # released when the stage ended
