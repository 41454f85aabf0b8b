"""The one exception type a stage turns into a one-line message and a non-zero exit."""

from __future__ import annotations


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
