"""``model.rewards.timeout_s``: a reward call that runs too long stops the run with a message, in the main thread (a
``SIGALRM`` timer) and elsewhere (an abandoned daemon thread), and a call within the limit leaves nothing behind."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import torch

from grpo_lightning.config import RewardConfig
from grpo_lightning.errors import ConfigError
from grpo_lightning.rewards import RewardError, score_completions
from grpo_lightning.rewards.time_limit import TimeLimitExceeded, call_with_time_limit
from grpo_lightning.rollout import Rollout
from tests.helpers import make_module

TIMEOUT = 0.5
#: How long past the limit a stopped call may take to hand control back (a loaded 2-core machine).
SLACK = 1.0


def sleeps_forever(completions, solution, **kwargs):
    time.sleep(3600)
    return [1.0] * len(completions)


def spins_forever(completions, solution, **kwargs):
    count = 0
    while count >= 0:  # a pure-Python loop: no system call for a signal to interrupt
        count += 1
    return [1.0] * len(completions)


def swallows_every_exception(completions, solution, **kwargs):
    while True:
        try:
            time.sleep(3600)
        except Exception:  # a reward's own error handling must not swallow the time limit
            continue


def fast(completions, solution, **kwargs):
    return [float(len(c)) for c in completions]


def _score(reward, timeout_s=TIMEOUT, step=12) -> torch.Tensor:
    return score_completions([("slow", reward)], ["a", "bb"], ["", ""], {"id": ["q-1", "q-2"]}, timeout_s, step)


@pytest.mark.parametrize(
    ("reward", "stopped_in"),
    [(sleeps_forever, "sleeps_forever"), (spins_forever, "spins_forever"), (swallows_every_exception, "swallows")],
)
def test_a_reward_that_never_returns_is_stopped_with_a_message(reward, stopped_in):
    handler = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    with pytest.raises(RewardError) as error:
        _score(reward)
    elapsed = time.monotonic() - start
    assert TIMEOUT <= elapsed < TIMEOUT + SLACK
    message = str(error.value)
    assert message.startswith(
        "Reward 'slow' did not return within model.rewards.timeout_s (0.5 s) at global step 12, scoring sample ids "
        "q-1, q-2, and was stopped. Make the reward faster"
    )
    assert "raise model.rewards.timeout_s (null: no limit)" in message
    assert f'It was stopped in:\n  File "{__file__}"' in message and f"in {stopped_in}" in message
    assert "time_limit.py" not in message  # the reward's frames only
    assert signal.getsignal(signal.SIGALRM) is handler and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.parametrize("timeout_s", [None, TIMEOUT])
def test_a_reward_within_the_limit_scores_as_usual_and_leaves_no_timer_or_handler(timeout_s):
    handler = signal.getsignal(signal.SIGALRM)
    scores = _score(fast, timeout_s)
    assert scores[:, 0].tolist() == [1.0, 2.0]
    assert signal.getsignal(signal.SIGALRM) is handler
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    time.sleep(TIMEOUT + 0.1)  # no alarm of ours comes later either


def test_an_earlier_timer_and_its_handler_are_given_back():
    fired = []

    def outer(signum, frame):
        fired.append(time.monotonic())

    previous = signal.signal(signal.SIGALRM, outer)
    try:
        start = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        assert _score(fast)[:, 0].tolist() == [1.0, 2.0]
        assert signal.getsignal(signal.SIGALRM) is outer
        remaining, interval = signal.getitimer(signal.ITIMER_REAL)
        assert 0.0 < remaining <= 1.0 - (time.monotonic() - start) + 1e-3 and interval == 0.0
        while not fired and time.monotonic() - start < 1.0 + SLACK:
            time.sleep(0.01)
        assert len(fired) == 1 and 1.0 - 1e-3 <= fired[0] - start < 1.0 + SLACK  # it still fires, on time
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _in_a_thread(func):
    """``func()`` run in a thread other than the main one: (its value or the exception it raised, seconds taken)."""
    outcome: list = []

    def run():
        start = time.monotonic()
        try:
            value = func()
        except BaseException as err:
            value = err
        outcome.append((value, time.monotonic() - start))

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(TIMEOUT + SLACK + 5)
    assert not worker.is_alive()
    return outcome[0]


def test_outside_the_main_thread_a_call_past_the_limit_is_abandoned():
    release = threading.Event()

    def waits(completions, solution, **kwargs):
        release.wait(3600)
        return [1.0] * len(completions)

    try:
        error, elapsed = _in_a_thread(lambda: _score(waits))
    finally:
        release.set()  # let the abandoned call end, so that it does not outlive the test
    assert isinstance(error, RewardError) and TIMEOUT <= elapsed < TIMEOUT + SLACK
    assert str(error).startswith("Reward 'slow' did not return within model.rewards.timeout_s (0.5 s) at global step")
    # a call that returns or raises in time comes back as it would in the main thread
    scores, _ = _in_a_thread(lambda: _score(fast))
    assert scores[:, 0].tolist() == [1.0, 2.0]
    error, _ = _in_a_thread(lambda: call_with_time_limit(lambda: 1 / 0, TIMEOUT))
    assert isinstance(error, ZeroDivisionError)


def test_the_time_limit_is_no_ordinary_exception():
    # a reward's `except Exception` cannot catch it (see swallows_every_exception above)
    assert issubclass(TimeLimitExceeded, BaseException) and not issubclass(TimeLimitExceeded, Exception)


@pytest.mark.parametrize("timeout_s", [0, -1.0])
def test_the_timeout_must_be_positive(timeout_s):
    with pytest.raises(ConfigError, match=rf"rewards.timeout_s must be a positive number of seconds, not {timeout_s}"):
        RewardConfig(timeout_s=timeout_s)


def test_the_module_passes_the_timeout_and_its_step(assets):
    module = make_module(assets, rewards={"funcs": ["tests.test_rewards_timeout:sleeps_forever"], "timeout_s": TIMEOUT})
    rollout = Rollout(None, torch.tensor([0, 0]), torch.zeros(2, 3), torch.ones(2, 3), ["a", "b"])
    start = time.monotonic()
    stopped = r"^Reward 'sleeps_forever' did not return within .* \(0\.5 s\) at global step 0"
    with pytest.raises(RewardError, match=stopped):
        module.rollouts.score(rollout, {"prompt": ["p"], "id": ["q-1"]})
    assert time.monotonic() - start < TIMEOUT + SLACK
