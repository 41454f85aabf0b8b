"""Checkpoints of a training run: which are complete, where they live, and the Drive mirror.

A checkpoint is *complete* when every file a resume reads is whole: trainer_state.json parses,
the adapter's safetensors file is as long as its header says, and the optimizer, scheduler and
RNG files are intact zip archives. A disconnect in the middle of a save leaves an incomplete one,
which is never loaded.

In Colab the Trainer writes checkpoints to the VM's disk and :func:`mirror_callback` copies each
finished one to the run's folder on Drive in the background (temporary name, then rename).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import struct
import threading
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prodesc.cli import log
from prodesc.config import Config
from prodesc.paths import RunPaths, in_colab

CHECKPOINT_PREFIX = "checkpoint-"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAINER_STATE = "trainer_state.json"

COLAB_LOCAL_CHECKPOINTS = Path("/content/prodesc_ckpt")
"""In Colab the Trainer writes checkpoints here (the VM's fast disk); each one is then copied to
the run's checkpoints/ folder on Drive in the background."""


@dataclass(frozen=True)
class CheckpointDirs:
    output: Path
    """Where the Trainer writes checkpoints."""
    mirror: Path | None = None
    """Colab: the Drive folder each finished checkpoint is copied to (None elsewhere)."""

    def search(self) -> list[Path]:
        return [d for d in (self.output, self.mirror) if d is not None]


def checkpoint_dirs(cfg: Config, paths: RunPaths) -> CheckpointDirs:
    if in_colab():
        return CheckpointDirs(output=COLAB_LOCAL_CHECKPOINTS / cfg.run_name, mirror=paths.checkpoints)
    return CheckpointDirs(output=paths.checkpoints)


def checkpoint_step(path: Path) -> int | None:
    name = path.name
    if not name.startswith(CHECKPOINT_PREFIX):
        return None
    tail = name[len(CHECKPOINT_PREFIX):]
    return int(tail) if tail.isdigit() else None


def list_checkpoints(folder: Path) -> list[Path]:
    """``checkpoint-<step>`` folders, oldest step first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p))


def _safetensors_ok(path: Path) -> str | None:
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{path.name} header is truncated"
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as err:
        return f"{path.name} is unreadable ({err})"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if size != 8 + n + end:
        return f"{path.name} is truncated ({size} bytes, expected {8 + n + end})"
    return None


def _torch_file_ok(path: Path) -> str | None:
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (OSError, zipfile.BadZipFile) as err:
        return f"{path.name} is unreadable ({err})"
    return f"{path.name} is corrupt ({bad})" if bad else None


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed from, or None when it is complete."""
    state = path / TRAINER_STATE
    if not state.is_file():
        return f"{TRAINER_STATE} is missing"
    try:
        loaded = json.loads(state.read_text(encoding="utf-8"))
        int(loaded["global_step"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{TRAINER_STATE} is unreadable ({err})"
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        return f"{ADAPTER_WEIGHTS} is missing"
    problem = _safetensors_ok(weights)
    if problem:
        return problem
    for name in ("optimizer.pt", "scheduler.pt"):
        problem = _torch_file_ok(path / name)
        if problem:
            return problem
    rng = sorted(path.glob("rng_state*.pth"))
    if not rng:
        return "rng_state.pth is missing"
    for f in rng:
        problem = _torch_file_ok(f)
        if problem:
            return problem
    return None


def newest_complete_checkpoint(dirs: CheckpointDirs, warn: bool = True) -> tuple[Path | None, list[Path]]:
    """(newest complete checkpoint across the output and mirror folders, incomplete ones newer than it)."""
    candidates = []
    for where, folder in enumerate(dirs.search()):
        for ckpt in list_checkpoints(folder):
            candidates.append((checkpoint_step(ckpt), -where, ckpt))
    incomplete: list[Path] = []
    for _, _, ckpt in sorted(candidates, reverse=True):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt, incomplete
        if warn:
            msg = f"skipping incomplete checkpoint {ckpt}: {problem}"
            warnings.warn(msg, stacklevel=2)
            log(msg)
        incomplete.append(ckpt)
    return None, incomplete


def remove_tree(path: Path, truncate: bool = False) -> None:
    """Delete a folder; with ``truncate`` empty every file first (Drive keeps deleted files in its
    Trash, which counts against the quota: a 0-byte file costs nothing there)."""
    if truncate:
        for f in sorted(path.rglob("*")):
            if f.is_file() and not f.is_symlink():
                try:
                    with open(f, "r+b") as fh:
                        fh.truncate(0)
                except OSError:
                    pass
    shutil.rmtree(path, ignore_errors=True)


def reached_max_steps(ckpt: Path) -> bool:
    """True when ``ckpt`` is its run's last step (trainer_state.json: global_step >= max_steps).
    Resuming from it would make the Trainer take one step too many."""
    try:
        state = json.loads((ckpt / TRAINER_STATE).read_text(encoding="utf-8"))
        return int(state.get("max_steps") or 0) > 0 and int(state["global_step"]) >= int(state["max_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def tokens_in_checkpoint(ckpt: Path | None) -> int:
    if ckpt is None:
        return 0
    try:
        return int(json.loads((ckpt / TRAINER_STATE).read_text())["num_input_tokens_seen"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


# --------------------------------------------------------------------------- Drive mirror

MIRROR_IDLE_S = 1.0
"""Seconds the Drive mirror's worker waits for the next checkpoint before it stops."""


def mirror_callback(mirror: Path, keep: int) -> Any:
    """A TrainerCallback that copies each finished checkpoint to ``mirror`` (Drive) in the background.

    The checkpoint is first hard-linked into a local staging folder (instant, and safe from the
    Trainer's own rotation deleting it mid-copy), then copied to ``.checkpoint-N.partial`` on Drive
    and renamed to ``checkpoint-N`` once whole. Mirrored checkpoints older than the newest ``keep``
    are truncated to 0 bytes, then deleted, so Drive's Trash does not fill up. ``wait()`` blocks
    until every copy is done.

    One worker thread copies; it stops after :data:`MIRROR_IDLE_S` without a job and the next save
    starts another. Queueing a job and the worker's decision to stop happen under one lock, so a
    save that comes as the worker stops is never left in the queue with nobody to take it.
    """
    from transformers import TrainerCallback

    class DriveMirrorCallback(TrainerCallback):
        def __init__(self) -> None:
            self.jobs: queue.Queue = queue.Queue()
            self.errors: list[str] = []
            self.lock = threading.Lock()
            self.working = False
            """A worker thread is running and will take every job queued before it stops."""

        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            src = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
            if not src.is_dir():
                return
            staging = Path(args.output_dir) / f".mirror-{src.name}"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(src, staging, copy_function=_link_or_copy)
            with self.lock:
                self.jobs.put((staging, src.name))
                if not self.working:
                    self.working = True
                    threading.Thread(target=self._work, name="drive-mirror", daemon=True).start()

        def _work(self) -> None:
            while True:
                try:
                    staging, name = self.jobs.get(timeout=MIRROR_IDLE_S)
                except queue.Empty:
                    with self.lock:  # a save may have queued a job since the wait ran out
                        if self.jobs.empty():
                            self.working = False
                            return
                    continue
                try:
                    copy_checkpoint(staging, Path(mirror) / name)
                    rotate_mirror(Path(mirror), keep)
                except Exception as err:  # keep training (and this worker alive); say so at the end
                    self.errors.append(f"{name}: {err}")
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
                    self.jobs.task_done()

        def wait(self) -> None:
            self.jobs.join()
            for err in self.errors:
                log(f"warning: could not copy checkpoint to Drive: {err}")

    return DriveMirrorCallback()


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def copy_checkpoint(src: Path, final: Path) -> None:
    """Copy a checkpoint folder to ``final`` atomically (temp name on the target, then rename)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if final.exists():
        remove_tree(final, truncate=True)
    os.replace(tmp, final)


def rotate_mirror(mirror: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints on Drive; empty then delete the older ones."""
    ckpts = list_checkpoints(mirror)
    for old in ckpts[: max(0, len(ckpts) - keep)]:
        remove_tree(old, truncate=True)
