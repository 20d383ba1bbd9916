"""A time limit on one call of a reward function (``model.rewards.timeout_s``).

In the main thread, where the trainer calls rewards, the limit is a one-shot ``SIGALRM`` timer
(``signal.setitimer``) whose handler raises :class:`TimeLimitExceeded` in the running call: the call stops at its
next Python bytecode, also inside ``time.sleep`` or a blocking read, and the process carries on. A call inside a C
extension (one large tensor operation, say) stops only when the extension hands control back to Python.

Elsewhere (another thread, or a platform without ``SIGALRM``) the call runs in a daemon thread that is waited for
``seconds``; a call that does not return by then is abandoned: it goes on running in the background, holding
whatever it holds, until it returns or the process ends. That is the only way to stop waiting for it there.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

Result = TypeVar("Result")


class TimeLimitExceeded(BaseException):
    """A reward call ran past its time limit.

    A ``BaseException``, like ``KeyboardInterrupt``, so that a reward's own ``except Exception`` cannot swallow it;
    :func:`grpo_lightning.rewards.score_completions` turns it into a :class:`~grpo_lightning.rewards.RewardError`.
    """


def call_with_time_limit(func: Callable[[], Result], seconds: float | None) -> Result:
    """``func()``, stopped with :class:`TimeLimitExceeded` when it runs longer than ``seconds`` (None: no limit).

    In the main thread the previous ``SIGALRM`` handler and timer are put back afterwards; an earlier timer that
    came due during the call fires right after it. Elsewhere the call runs in a daemon thread that is abandoned
    when it runs too long (see the module docstring).

    Raises:
        TimeLimitExceeded: the call ran longer than ``seconds``.
    """
    if seconds is None:
        return func()
    if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
        return _call_with_alarm(func, seconds)
    return _call_in_thread(func, seconds)


def _call_with_alarm(func: Callable[[], Result], seconds: float) -> Result:
    running = [True]

    def on_alarm(signum: int, frame: Any) -> None:
        # The timer is one-shot: once it fired, nothing here can raise again, so the restoring below always runs.
        if running[0]:
            raise TimeLimitExceeded

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    if previous_handler is None:  # installed outside Python: the default is the closest thing to put back
        previous_handler = signal.SIG_DFL
    started = time.monotonic()
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        try:
            return func()
        finally:
            # An alarm between func's return and this line raises here, past the call's own limit: reported as such.
            running[0] = False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay > 0:  # someone else's timer: give back what was left of it (due now: fire at once)
            remaining = max(previous_delay - (time.monotonic() - started), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, remaining, previous_interval)


def _call_in_thread(func: Callable[[], Result], seconds: float) -> Result:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = func()
        except BaseException as err:  # handed to the waiting thread, which re-raises it
            outcome["error"] = err

    worker = threading.Thread(target=run, name="reward-call", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeLimitExceeded  # the worker is abandoned: a thread cannot be stopped from outside
    if "error" in outcome:
        raise outcome.pop("error")
    return outcome["value"]


__all__ = ["TimeLimitExceeded", "call_with_time_limit"]
