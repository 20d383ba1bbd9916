"""Errors that are the user's to fix: bad data, a wrong path, a config value, a broken reward plugin.

The command line prints such an error as one message (what was wrong, where, and what to do) and exits with
status 2, without a traceback in front of it; ``GRPO_LIGHTNING_TRACEBACK=1`` shows the traceback as well. Every
other exception is a bug or an environment failure and keeps its traceback.
"""

from __future__ import annotations

import re

#: Set to 1 to see the traceback of a user error too (for bug reports).
TRACEBACK_ENV = "GRPO_LIGHTNING_TRACEBACK"


class UserError(Exception):
    """A problem with the user's input; its message names the file, line, sample or option and what to do."""


class ConfigError(UserError, ValueError):
    """A configuration value that cannot work (a missing model folder, an option out of range)."""


def user_message(error: UserError) -> str:
    """The message a user error was raised with, also when a dataloader worker process raised it.

    PyTorch re-raises a worker's exception in the main process as the same type with a new message, "Caught X in
    DataLoader worker process N" followed by the worker's whole traceback; the original message is the text after
    the traceback's last line's ``X: ``.
    """
    text = str(error)
    if not text.startswith("Caught ") or "\nOriginal Traceback" not in text:
        return text
    name = re.escape(type(error).__name__)
    found = re.search(rf"^(?:[\w.]+\.)?{name}: (.*)\Z", text, flags=re.MULTILINE | re.DOTALL)
    return found.group(1).rstrip() if found else text


__all__ = ["TRACEBACK_ENV", "ConfigError", "UserError", "user_message"]
