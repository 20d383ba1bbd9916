"""Reward functions and their registry.

A reward is a plain function ``(completions: list[str], solution: list[str], **kwargs) -> list[float | None]``
(TRL's interface): one score per completion, ``None`` meaning "no opinion on this sample", which is
left out of that sample's weighted sum. ``kwargs`` carry every batch field (``id``, ``question``,
``answer``, ``explanations``, ``image_path``, ...), repeated so that entry j belongs to completion j.

A score is a real number: a ``float``, an ``int``, a ``bool`` (``True`` counts 1.0, so ``[a == b for ...]`` is a
valid 0/1 reward), a numpy scalar or a one-element tensor. The list itself may be a list, a tuple, a numpy array or
a 1-D tensor. Anything else (a bare ``None``, a string such as ``"0.5"``, NaN) stops the run with a
:class:`RewardError` naming the reward and the sample. A reward with no opinion on any completion of a training
step contributes nothing to it; :class:`RewardOpinions` warns about that, and stops the run when no reward scored
anything in its first steps.

Rewards are named in the config (``model.rewards.funcs``) by a registered name or a dotted path
``my_pkg.my_module:my_reward``, so users add rewards without editing the library. Registered:

- ``accuracy``: graded answer match, 3.0 / 1.5 / 0.0 (:mod:`~grpo_lightning.rewards.accuracy`);
- ``format``: 1.0 for a completion in the answer format of :mod:`grpo_lightning.task`, else 0.0;
- ``tag_count``: partial format credit, 1/6 per well-used tag (:mod:`~grpo_lightning.rewards.format`);
- ``explanation``: CIDEr-D (corpus document frequencies) and CLIPScore of the explanation, in [0, 1]
  (:class:`~grpo_lightning.rewards.explanation.ExplanationReward`, configured by ``model.rewards.kwargs.explanation``);
- ``overlong``: DAPO's soft overlong penalty, 0 up to ``max_length - buffer`` tokens, falling linearly to -1 at
  ``max_length`` (:class:`~grpo_lightning.rewards.overlong.OverlongReward`; it reads the field ``completion_length``).

Besides the batch's fields, the trainer passes ``completion_length`` (each completion's length in tokens, up to and
including its EOS) and ``max_completion_length`` (the sampling budget, repeated per completion).

A reward that needs heavy resources (a model, statistics of a corpus) declares a set-up step: a ``setup()`` method,
no arguments, that loads them (and does nothing the second time). :func:`prepare_rewards` runs every reward's set-up
before the first training step (and before validate, test and predict), in every process, so that missing weights
or a bad data file stop the run at once with one message, not after hours of training. Plain functions need none.

A reward call may be given a time limit (``model.rewards.timeout_s``, :mod:`~grpo_lightning.rewards.time_limit`);
one that runs longer stops the run with a :class:`RewardError` instead of hanging it.
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn

from grpo_lightning.errors import ConfigError, UserError, user_message
from grpo_lightning.registry import Registry
from grpo_lightning.rewards import time_limit
from grpo_lightning.rewards.accuracy import accuracy_reward
from grpo_lightning.rewards.explanation import ExplanationReward
from grpo_lightning.rewards.format import format_reward, tag_count_reward
from grpo_lightning.rewards.overlong import OverlongReward
from grpo_lightning.rewards.time_limit import TimeLimitExceeded, call_with_time_limit

RewardFunc = Callable[..., list[float | None]]

#: What every message about a reward's return value says a reward must return.
REWARD_CONTRACT = "a reward must return a list with one number (or None for no opinion) per completion"


class RewardError(UserError, RuntimeError):
    """A reward function that returned something other than one real number (or None) per completion."""


#: Rewards by name (``model.rewards.funcs``); ``register_reward(name)`` decorates a reward to add it.
REWARDS: Registry[RewardFunc] = Registry("reward")
register_reward = REWARDS.register


register_reward("accuracy")(accuracy_reward)
register_reward("format")(format_reward)
register_reward("tag_count")(tag_count_reward)
register_reward("explanation")(ExplanationReward)
register_reward("overlong")(OverlongReward)


def get_reward(name: str, **options: Any) -> RewardFunc:
    """Resolve a registered reward name or a dotted path ``package.module:function``.

    A reward is a function, or a class whose instances are such functions (for rewards that hold state:
    a model, a cache). ``options`` configure it: a class is instantiated with them, a function gets them
    bound as keyword arguments.
    """
    if name in REWARDS:
        target = REWARDS[name]
    elif ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ConfigError(f"Reward {name!r}: cannot import module {module_name!r} ({err}).") from err
        target = getattr(module, attr, None)
        if not callable(target):
            raise ConfigError(f"Reward {name!r}: module {module_name!r} has no callable {attr!r}.")
    else:
        known = ", ".join(sorted(REWARDS.names()))
        raise ConfigError(
            f"Unknown reward {name!r}. Registered rewards: {known}; or give a dotted path 'my_pkg.my_module:my_reward'."
        )
    if isinstance(target, type):
        try:
            return target(**options)
        except TypeError as err:
            raise ConfigError(f"Reward {name!r}: invalid options {sorted(options)} ({err}).") from err
    return functools.partial(target, **options) if options else target


def reward_name(name: str) -> str:
    """The short name a reward is logged under (``train/rewards/<name>``)."""
    return name.rpartition(":")[2] if ":" in name else name


def prepare_rewards(funcs: Sequence[tuple[str, RewardFunc]]) -> None:
    """Run the set-up step (a ``setup()`` method) of every reward that declares one; see the module docstring.

    The module calls this before the first training step, and before validate, test and predict, in every process
    (each loads its own copy of a model, on its own device).

    Args:
        funcs: (name, reward) pairs, as :func:`score_completions` takes them.

    Raises:
        RewardError: a set-up failed; the message names the reward and carries the set-up's own message (a user
            error's, which says what to do) or, for any other exception, its traceback from the reward's frames down.
    """
    for name, func in funcs:
        setup = getattr(func, "setup", None)
        if not callable(setup):
            continue
        try:
            setup()
        except UserError as err:
            raise RewardError(f"Reward {name!r} cannot start: {user_message(err)}") from err
        except Exception as err:
            frames = _reward_traceback(err)
            raise RewardError(
                f"Reward {name!r} raised {type(err).__name__} in its set-up, before training: {err}. "
                f"In the reward:\n{frames}"
            ) from err


def score_completions(
    funcs: Sequence[tuple[str, RewardFunc]],
    completions: list[str],
    solution: list[str],
    fields: dict[str, list[Any]],
    timeout_s: float | None = None,
    step: int | None = None,
) -> torch.Tensor:
    """Run every reward on the completions; returns (N, F) float64 scores with NaN where a reward said None.

    A reward that raises is reported with its name, the step, its own traceback (from its function down) and the
    sample that breaks it, so a broken plugin is found in seconds; one that returns anything but one real number or
    None per completion (see the module docstring) raises a :class:`RewardError` that names it, the sample and what a
    reward must return. The failing sample of a plain reward is found by calling it again one sample at a time, after
    its traceback was written down (a second call into some libraries, huggingface_hub among them, clears the
    tracebacks of the exceptions being handled); a reward with a set-up step holds resources (a model) and is not
    called again: the message names the batch's samples instead.

    Args:
        funcs: (name, reward) pairs; the name is the one messages and logs use.
        completions: N completions.
        solution: N solutions.
        fields: the batch's other fields, N values each (``id`` names samples in messages).
        timeout_s: the longest a reward call may run, in seconds (None: no limit); see
            :func:`~grpo_lightning.rewards.time_limit.call_with_time_limit`.
        step: the global step, for messages (None: not named).

    Raises:
        RewardError: a reward raised, ran past ``timeout_s``, or returned something that is not one score per
            completion.
    """
    scores = torch.full((len(completions), len(funcs)), math.nan, dtype=torch.float64)
    ids = fields.get("id", list(range(len(completions))))
    at_step = "" if step is None else f" at global step {step}"
    for f, (name, func) in enumerate(funcs):
        values = _call_reward(name, func, completions, solution, fields, ids, timeout_s, at_step)
        for j, score in enumerate(_checked_scores(name, values, ids, len(completions))):
            if score is not None:
                scores[j, f] = score
    return scores


def _call_reward(name, func, completions, solution, fields, ids, timeout_s, at_step) -> Any:
    """One reward's return value on the whole batch, or a :class:`RewardError` that names the reward, the step, the
    failing sample and the reward's own traceback (see :func:`score_completions`)."""
    call = functools.partial(func, completions=completions, solution=solution, **fields)
    try:
        return call_with_time_limit(call, timeout_s)
    except TimeLimitExceeded as stopped:
        # from None: the message says where the call was stopped; the stop itself is nothing to act on
        raise RewardError(_timeout_message(name, stopped, timeout_s, at_step, ids)) from None
    except Exception as caught:
        # Written down before anything else runs: see score_completions.
        err, frames = caught, _reward_traceback(caught)
    # Out of the except block, so that nothing the search raises is chained to (and can touch) the error.
    where = _failing_sample(func, completions, solution, fields, ids, timeout_s)
    raise RewardError(
        f"Reward {name!r} raised {type(err).__name__}: {err} ({where}{at_step}). In the reward:\n{frames}"
    ) from err


def _checked_scores(name: str, values: Any, ids: list[Any], count: int) -> list[float | None]:
    """A reward's return value as ``count`` floats (None: no opinion), or a :class:`RewardError` that names the
    reward and the sample when it is not one real number or None per completion."""
    values = _score_list(name, values, ids)
    if len(values) != count:
        raise RewardError(
            f"Reward {name!r} returned {len(values)} scores for {count} completions "
            f"(sample ids {_some(ids)}); {REWARD_CONTRACT}."
        )
    return [_score_value(name, value, ids[j]) for j, value in enumerate(values)]


#: The files of the code that calls rewards, whose frames are left out of the tracebacks shown for a reward.
_CALLING_FILES = frozenset({__file__, time_limit.__file__})


def _reward_traceback(err: BaseException) -> str:
    """``err`` with its traceback as text, from the reward's own frames down (the caller's frames left out).

    A traceback that some library cleared (None) gives the exception's line alone rather than an error of its own.
    """
    tb = err.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in _CALLING_FILES:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(err), err, tb or err.__traceback__)).rstrip()


def _timeout_message(name: str, stopped: TimeLimitExceeded, timeout_s: float | None, at_step: str, ids) -> str:
    frames = [frame for frame in traceback.extract_tb(stopped.__traceback__) if frame.filename not in _CALLING_FILES]
    where = "".join(traceback.StackSummary.from_list(frames).format()).rstrip()
    return (
        f"Reward {name!r} did not return within model.rewards.timeout_s ({timeout_s:g} s){at_step}, scoring sample "
        f"ids {_some(ids)}, and was stopped. Make the reward faster (load its models and data once, in a setup() "
        "method, which runs before training), or raise model.rewards.timeout_s (null: no limit)."
        + (f" It was stopped in:\n{where}" if where else "")
    )


def _failing_sample(func, completions, solution, fields, ids, timeout_s) -> str:
    """Where a reward failed: the first sample it fails on alone (a plain reward, called once per sample), or the
    batch's sample ids (a reward with a set-up step, which is not called again)."""
    if callable(getattr(func, "setup", None)):
        return f"one of sample ids {_some(ids)}"
    for j in range(len(completions)):
        one = {key: values[j : j + 1] for key, values in fields.items()}
        call = functools.partial(func, completions=completions[j : j + 1], solution=solution[j : j + 1], **one)
        try:
            call_with_time_limit(call, timeout_s)
        except TimeLimitExceeded:
            return f"sample ids {_some(ids)}; the search for the failing one ran past model.rewards.timeout_s"
        except Exception:
            return f"sample id {ids[j]}"
    return f"sample ids {_some(ids)}; no sample fails alone"


def _score_list(name: str, values: Any, ids: list[Any]) -> Sequence[Any]:
    """The reward's return value as a sequence, or a RewardError when it is not a list-like of scores."""
    if isinstance(values, torch.Tensor | np.ndarray) and values.ndim == 1:
        return values.tolist()
    if isinstance(values, list | tuple):
        return values
    got = "None" if values is None else f"{_short_repr(values)} (a {type(values).__name__})"
    raise RewardError(f"Reward {name!r} returned {got} for sample ids {_some(ids)}; {REWARD_CONTRACT}.")


def _score_value(name: str, value: Any, sample_id: Any) -> float | None:
    """One returned score as a float (None stays None); RewardError for strings, NaN and anything not real."""
    if value is None:
        return None
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy scalars, 0-d arrays and tensors
        value = value.item()
    if not isinstance(value, numbers.Real):  # bool and int are Real; str, complex and lists are not
        raise RewardError(
            f"Reward {name!r} returned {_short_repr(value)} (a {type(value).__name__}) for sample id {sample_id}; "
            f"{REWARD_CONTRACT}."
        )
    score = float(value)
    if not math.isfinite(score):
        raise RewardError(f"Reward {name!r} returned {value} for sample id {sample_id}; rewards must be finite.")
    return score


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _some(ids: Sequence[Any], limit: int = 5) -> str:
    """The first few sample ids of a batch, for messages ("a, b, c and 13 more")."""
    unique = list(dict.fromkeys(ids))
    shown = ", ".join(str(i) for i in unique[:limit])
    return shown + (f" and {len(unique) - limit} more" if len(unique) > limit else "")


#: The key under which :class:`RewardOpinions` counts steps on which no reward had an opinion.
_EVERY_REWARD = "(every reward)"


def _ids_note(ids: Sequence[Any], before: str, after: str = "") -> str:
    return f"{before}sample ids {_some(ids)}{after}" if len(ids) else ""


class RewardOpinions:
    """Watches training steps for rewards that had no opinion (None) on any completion of the step (every round of
    sampling of it, under dynamic sampling).

    Such a reward contributes nothing to the step; when no reward has an opinion, every reward of the step is 0,
    every advantage is 0 and the step learns nothing. Each reward's silent steps are warned about at the 1st, 2nd,
    4th, 8th, ... occurrence with counts, so the log is not flooded. When no reward scored any completion in any
    of the first ``patience`` steps, the rewards cannot score this data at all (a plugin that returns None for
    everything, a field missing from every record), and :meth:`observe` raises a :class:`RewardError` rather than
    letting the run train on nothing. ``patience`` is a few steps rather than one because a reward that scores only
    some samples (one answer type, say) may by chance have no sample to score in one small batch.

    Args:
        names: the reward names, in the column order of the scores.
        patience: how many leading steps without any opinion stop the run.
    """

    def __init__(self, names: Sequence[str], patience: int = 3):
        self.names = list(names)
        self.patience = patience
        self.steps = 0
        self.silent_steps: Counter[str] = Counter()
        self.learned_something = False

    def observe(
        self,
        scores: torch.Tensor,
        step: int,
        ids: Sequence[Any] = (),
        opinions_everywhere: Callable[[int], int] = lambda count: count,
    ) -> None:
        """Count one training step's silent rewards; warn at powers of two; raise if the run cannot learn.

        Args:
            scores: the step's (N, F) scores from :func:`score_completions`, every round of sampling (NaN: no
                opinion).
            step: the global step, for messages.
            ids: the sample id of each completion, for messages.
            opinions_everywhere: the number of opinions over every process, given this process's (a sum over
                processes under data parallelism, so that all processes decide alike); called only in the first
                ``patience`` steps.
        """
        self.steps += 1
        opinions = (~torch.isnan(scores)).sum(dim=0)
        silent = [name for name, count in zip(self.names, opinions.tolist(), strict=True) if count == 0]
        if len(silent) == len(self.names):
            silent = [_EVERY_REWARD]
        for name in silent:
            self.silent_steps[name] += 1
            count = self.silent_steps[name]
            if count & (count - 1) == 0:  # 1, 2, 4, 8, ...
                rank_zero_warn(self._message(name, scores.shape[0], step, count, ids))
        if self.learned_something or self.steps > self.patience:
            return
        self.learned_something = opinions_everywhere(int(opinions.sum())) > 0
        if not self.learned_something and self.steps == self.patience:
            names = ", ".join(repr(name) for name in self.names)
            raise RewardError(
                f"No reward ({names}) scored any completion in the first {self.patience} training steps: every "
                f"reward returned None for every completion{_ids_note(ids, ' (last ', ')')}, so every advantage is 0 "
                "and the model learns nothing. Check that the rewards can score this data (the fields they read, "
                "the answer types they cover), or add a reward that scores every completion, such as 'format'; "
                f"{REWARD_CONTRACT}."
            )

    def _message(self, name: str, completions: int, step: int, count: int, ids: Sequence[Any]) -> str:
        so_far = f"{count} such step(s) of {self.steps} so far; the next warning comes at {2 * count}"
        if name == _EVERY_REWARD:
            return (
                f"Step {step}: no reward had an opinion on any of the {completions} completions (every reward "
                f"returned None{_ids_note(ids, '; ')}), so the step's advantages are all 0 and it learns nothing "
                f"({so_far})."
            )
        return (
            f"Step {step}: reward {name!r} had no opinion (returned None) on any of the {completions} completions"
            f"{_ids_note(ids, ' (', ')')}; it contributed nothing to the step ({so_far})."
        )


# (N, F) scores, num_generations, eps -> (N, F) the scores the weighted sum adds up
ScorePreparation = Callable[[torch.Tensor, "int | None", float], torch.Tensor]

#: How the reward functions' scores become one training reward per completion (``model.rewards.aggregation``): what
#: is done to the scores before their weighted sum.
AGGREGATIONS: Registry[ScorePreparation] = Registry("reward aggregation")


@AGGREGATIONS.register("sum_then_normalize")
def _as_scored(scores: torch.Tensor, num_generations: int | None, eps: float) -> torch.Tensor:
    """GRPO: the scores as they are; the advantage normalises their weighted sum."""
    return scores


@AGGREGATIONS.register("normalize_then_sum")
def _normalised_first(scores: torch.Tensor, num_generations: int | None, eps: float) -> torch.Tensor:
    """GDPO: each function's scores normalised within each group first (:func:`_normalised_within_groups`)."""
    if not num_generations or scores.shape[0] % num_generations:
        raise ValueError(
            f"aggregation 'normalize_then_sum' needs num_generations dividing the {scores.shape[0]} completions, "
            f"got {num_generations!r}"
        )
    return _normalised_within_groups(scores, num_generations, eps)


def combine_rewards(
    scores: torch.Tensor,
    weights: Sequence[float],
    aggregation: str = "sum_then_normalize",
    num_generations: int | None = None,
    eps: float = 1e-4,
) -> torch.Tensor:
    """One reward per completion from the (N, F) scores of :func:`score_completions`: (N, F) -> (N,).

    * ``"sum_then_normalize"``: the weighted sum over reward functions, None (NaN) entries left out; the advantage
      normalises it afterwards (GRPO).
    * ``"normalize_then_sum"`` (GDPO, "Group reward-Decoupled Normalization Policy Optimization", arXiv 2601.05242;
      TRL's ``multi_objective_aggregation``): each function's scores are first normalised within
      the prompt's group of ``num_generations`` completions, ``(x - mean) / (std + eps)`` with the mean and the
      unbiased std over the completions that function scored (std 0 for fewer than two), then weighted and summed,
      None entries left out as above. A function whose scores are equal within a group adds 0 there, so one with a
      large scale cannot drown the others, and two rewards that trade off against each other keep their signal
      where their plain sum is constant. GDPO then normalises the sum over the batch, which is why this aggregation
      requires ``loss.scale_rewards: batch`` (:func:`grpo_lightning.config.check_option_groups`). Within a group the
      normalised scores of each function sum to 0, so the group mean the advantage subtracts is 0, as is the batch
      mean GDPO and TRL subtract.

    A completion on which no function has an opinion gets 0 in both modes; that is the reward it is shown with. For
    the advantages it has no reward at all: :func:`mark_unscored` makes it NaN, which
    :func:`~grpo_lightning.algorithms.compute_group_advantages` leaves out of every mean and std (group and batch)
    and gives advantage 0, as TRL does.

    Args:
        scores: (N, F) float scores, NaN where a function had no opinion; prompt-major (the G completions of a
            prompt are consecutive).
        weights: F weights.
        aggregation: ``"sum_then_normalize"`` or ``"normalize_then_sum"``.
        num_generations: G, completions per prompt; needed by ``"normalize_then_sum"``.
        eps: added to each function's group std (``"normalize_then_sum"``).

    Raises:
        ValueError: an unknown ``aggregation``, or ``"normalize_then_sum"`` without a ``num_generations`` dividing N.
    """
    scores = AGGREGATIONS[aggregation](scores, num_generations, eps)
    weighted = scores * torch.as_tensor(weights, dtype=scores.dtype)
    return torch.nansum(weighted, dim=1)


def mark_unscored(rewards: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The rewards with NaN for each completion that no reward function scored: (N,), (N, F) -> (N,).

    What :func:`~grpo_lightning.algorithms.compute_group_advantages` takes: a NaN reward is no reward, left out of
    the group's and the batch's mean and std, with advantage 0 (TRL's unscorable completions). Counted as 0 instead,
    such a completion would move its group's mean and the batch's std, and get an advantage of its own.

    Args:
        rewards: (N,) rewards from :func:`combine_rewards`.
        scores: (N, F) scores from :func:`score_completions`, NaN where a function had no opinion.
    """
    unscored = torch.isnan(scores).all(dim=1).to(rewards.device)
    return rewards.masked_fill(unscored, math.nan)


def _normalised_within_groups(scores: torch.Tensor, num_generations: int, eps: float) -> torch.Tensor:
    """(N, F) scores -> each column normalised within each group of ``num_generations`` rows, NaN kept."""
    grouped = scores.reshape(-1, num_generations, scores.shape[1])  # (P, G, F)
    scored = ~torch.isnan(grouped)
    count = scored.sum(dim=1, keepdim=True)
    mean = torch.nansum(grouped, dim=1, keepdim=True) / count.clamp_min(1)
    centred = torch.where(scored, grouped - mean, torch.zeros_like(grouped))
    variance = (centred**2).sum(dim=1, keepdim=True) / (count - 1).clamp_min(1)
    std = torch.where(count > 1, variance.sqrt(), torch.zeros_like(variance))
    normalised = torch.where(scored, centred / (std + eps), grouped)  # NaN stays NaN: still no opinion
    return normalised.reshape(scores.shape)


__all__ = [
    "AGGREGATIONS",
    "REWARDS",
    "REWARD_CONTRACT",
    "RewardError",
    "RewardOpinions",
    "combine_rewards",
    "get_reward",
    "mark_unscored",
    "prepare_rewards",
    "register_reward",
    "reward_name",
    "score_completions",
]
