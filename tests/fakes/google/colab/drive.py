"""Stand-in for ``google.colab.drive``: "mounts" the folder named by $PRODESC_FAKE_DRIVE as My Drive."""

from __future__ import annotations

import os
from pathlib import Path

DRIVE_ENV = "PRODESC_FAKE_DRIVE"


def mount(
    mountpoint: str, force_remount: bool = False, timeout_ms: int = 120000, readonly: bool = False
) -> None:
    """Make ``<mountpoint>/MyDrive`` a symlink to $PRODESC_FAKE_DRIVE, as Colab's FUSE mount
    shows the user's Drive there. Mounting the same Drive again is a no-op, as in Colab."""
    drive = os.environ.get(DRIVE_ENV)
    if not drive:
        raise RuntimeError(f"fake google.colab.drive: set ${DRIVE_ENV} to the folder that plays My Drive")
    target = Path(drive).resolve()
    my_drive = Path(mountpoint) / "MyDrive"
    if my_drive.is_symlink() and my_drive.resolve() == target and not force_remount:
        print(f"Drive already mounted at {mountpoint}; to attempt to forcibly remount, "
              f'call drive.mount("{mountpoint}", force_remount=True).')
        return
    if my_drive.is_symlink():
        my_drive.unlink()
    elif my_drive.exists():
        raise ValueError("Mountpoint must not already contain files")
    target.mkdir(parents=True, exist_ok=True)
    my_drive.parent.mkdir(parents=True, exist_ok=True)
    my_drive.symlink_to(target, target_is_directory=True)
    print(f"Mounted at {mountpoint}")
