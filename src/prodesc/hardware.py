"""What GPU this machine has, asked of nvidia-smi (stdlib only: no torch, usable before install)."""

from __future__ import annotations

import shutil
import subprocess


def detect_gpu() -> tuple[str, float] | None:
    """(name, memory in GiB) of the first NVIDIA GPU, or None (no driver, no GPU, or it fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
        name, mem = out.strip().splitlines()[0].rsplit(",", 1)
        return name.strip(), float(mem) / 1024
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
