"""Errors that are the user's to fix: bad data, a wrong path, a config value, a broken reward plugin.

The command line prints such an error as one message (what was wrong, where, and what to do) and exits with
status 2, without a traceback in front of it; ``GRPO_LIGHTNING_TRACEBACK=1`` shows the traceback as well. Every
other exception is a bug or an environment failure and keeps its traceback.
"""

from __future__ import annotations

#: Set to 1 to see the traceback of a user error too (for bug reports).
TRACEBACK_ENV = "GRPO_LIGHTNING_TRACEBACK"


class UserError(Exception):
    """A problem with the user's input; its message names the file, line, sample or option and what to do."""


class ConfigError(UserError, ValueError):
    """A configuration value that cannot work (a missing model folder, an option out of range)."""


__all__ = ["TRACEBACK_ENV", "ConfigError", "UserError"]
