"""How a run stopped by a signal ends: with the status a scheduler reads as "killed", and never hung.

Lightning's own handling, and what :class:`SignalExits` adds (the command line installs it for its whole life):

* SIGTERM (a scheduler's preemption, ``kill``): Lightning notes it and stops at the end of the current step, after
  which :class:`~grpo_lightning.callbacks.StepCheckpoint` saves the step; then it raises ``SIGTERMException``, a
  ``SystemExit`` with no status, so the process exits with 0 and a scheduler counts the job as a success. Here it
  exits with 143 (128 + 15), as a process ended by SIGTERM does.
* SIGINT (Ctrl-C): Python raises ``KeyboardInterrupt``; Lightning saves through the callbacks and exits with 1. Here
  it exits with 130 (128 + 2).
* A step that never ends (a reward waiting on a server that does not answer): SIGTERM is only noted, the end of the
  step never comes, and the process hangs on. A second SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) in
  the main thread, which ends the step where it hangs: Lightning then stops as on Ctrl-C, and ``StepCheckpoint``
  saves the last completed step (or says why it cannot). Before a fit has begun (reading the config, loading the
  model), the first SIGTERM stops the process at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

#: The signals whose exit status :class:`SignalExits` sets.
HANDLED = (signal.SIGTERM, signal.SIGINT)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by a signal that must end the run now (a second SIGTERM, or one before training)."""


class SignalExits:
    """Notes SIGTERM and SIGINT while installed, ends a hung run on a second signal, and gives the exit status.

    Use as a context manager around the run; :attr:`exit_status` is ``128 + signal number`` of the first signal
    received (None when none was). Installing needs the main thread; elsewhere it does nothing.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}

    @property
    def exit_status(self) -> int | None:
        return 128 + self.received[0] if self.received else None

    def __enter__(self) -> SignalExits:
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            raise Terminated(f"{name} received") if self.received.count(signum) > 1 else KeyboardInterrupt()
        # SIGTERM. While a fit runs, Lightning's handler runs first and calls this one after it (it keeps the handler
        # it found); then the first SIGTERM waits for the end of the step, and a second one ends it now.
        inside_fit = signal.getsignal(signal.SIGTERM) != self._on_signal
        if not inside_fit or self.received.count(signum) > 1:
            raise Terminated(f"{name} received" + (" again while the step had not ended" if inside_fit else ""))


__all__ = ["HANDLED", "SignalExits", "Terminated"]
