"""The one exception type a stage turns into a one-line message and a non-zero exit."""

from __future__ import annotations

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


def run_guarded(func: Callable[[], int], debug: bool) -> int:
    """Run ``func``; turn a user-fixable failure into one ``error:`` line on stderr and an exit code.

    ``UserError`` → its message, exit 2; ``OSError`` (disk full, read-only root, permissions) → the
    OS's words and the path, exit 1; Ctrl-C → exit 130. With ``debug`` the traceback is shown.
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
        print(f"error: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
