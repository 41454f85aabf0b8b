"""The one exception type a stage turns into a one-line message and a non-zero exit."""

from __future__ import annotations

import errno
import sys
from typing import Callable


class UserError(Exception):
    """A problem the user can fix: bad input, bad config, missing file.

    ``str(err)`` is printed as one line on stderr (no traceback unless ``--debug``), so the
    message names the file or key at fault and says what to do about it.
    """

    exit_code = 2


class ConfigError(UserError):
    """An unknown key, a mistyped value, or a value out of range."""


class DataError(UserError):
    """Input data that cannot be used (unreadable, malformed beyond tolerance, all filtered)."""


_ROOM = "free some space there (or choose another --root) and run again"
_ACCESS = "check the permissions of that path, or choose another --root"
OS_HINTS = {
    errno.ENOSPC: _ROOM,
    errno.EDQUOT: _ROOM,
    errno.EACCES: _ACCESS,
    errno.EPERM: _ACCESS,
    errno.EROFS: "that file system is read-only: choose another --root",
    errno.ENOTDIR: "part of that path is a file where a folder is expected: check --root and the paths given",
}
"""What to do about the OS errors a stage meets on bad ground (full disk, read-only root, ...)."""


def run_guarded(func: Callable[[], int], debug: bool) -> int:
    """Run ``func``; turn a user-fixable failure into one ``error:`` line on stderr and an exit code.

    ``UserError`` → its message, exit 2; ``OSError`` (disk full, read-only root, permissions) → the
    OS's words, the path and what to do, exit 1; Ctrl-C → exit 130. With ``debug`` the traceback is shown.
    """
    try:
        return func()
    except (UserError, OSError) as err:
        if debug:
            raise
        if isinstance(err, UserError):
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
        where = f": {err.filename}" if err.filename else ""
        hint = f": {OS_HINTS[err.errno]}" if err.errno in OS_HINTS else ""
        print(f"error: {err.strerror or err}{where}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
