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

from grpo_lightning.errors import ConfigError, UserError
from grpo_lightning.rewards.accuracy import accuracy_reward
from grpo_lightning.rewards.explanation import ExplanationReward
from grpo_lightning.rewards.format import format_reward, tag_count_reward
from grpo_lightning.rewards.overlong import OverlongReward

RewardFunc = Callable[..., list[float | None]]

#: What every message about a reward's return value says a reward must return.
REWARD_CONTRACT = "a reward must return a list with one number (or None for no opinion) per completion"


class RewardError(UserError, RuntimeError):
    """A reward function that returned something other than one real number (or None) per completion."""


REWARDS: dict[str, RewardFunc] = {}


def register_reward(name: str) -> Callable[[RewardFunc], RewardFunc]:
    def decorator(func: RewardFunc) -> RewardFunc:
        if name in REWARDS:
            raise ValueError(f"A reward named {name!r} is already registered ({REWARDS[name].__module__}).")
        REWARDS[name] = func
        return func

    return decorator


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
        known = ", ".join(sorted(REWARDS))
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


def score_completions(
    funcs: Sequence[tuple[str, RewardFunc]],
    completions: list[str],
    solution: list[str],
    fields: dict[str, list[Any]],
) -> torch.Tensor:
    """Run every reward on the completions; returns (N, F) float64 scores with NaN where a reward said None.

    A reward that raises is reported with its name and the id of the offending sample, so a broken plugin is found
    in seconds rather than in a stack trace; one that returns anything but one real number or None per completion
    (see the module docstring) raises a :class:`RewardError` that names it, the sample and what a reward must return.
    """
    scores = torch.full((len(completions), len(funcs)), math.nan, dtype=torch.float64)
    ids = fields.get("id", list(range(len(completions))))
    for f, (name, func) in enumerate(funcs):
        try:
            values = func(completions=completions, solution=solution, **fields)
        except Exception as err:
            sample = _first_failing_sample(func, completions, solution, fields, ids)
            # The reward's own frames (from its function down), not the trainer's: where to look in the reward's code.
            frames = "".join(traceback.format_exception(type(err), err, err.__traceback__.tb_next)).rstrip()
            raise RewardError(
                f"Reward {name!r} raised {type(err).__name__}: {err} (sample id {sample}). In the reward:\n{frames}"
            ) from err
        values = _score_list(name, values, ids)
        if len(values) != len(completions):
            raise RewardError(
                f"Reward {name!r} returned {len(values)} scores for {len(completions)} completions "
                f"(sample ids {_some(ids)}); {REWARD_CONTRACT}."
            )
        for j, value in enumerate(values):
            score = _score_value(name, value, ids[j])
            if score is not None:
                scores[j, f] = score
    return scores


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


#: How the reward functions' scores become one training reward per completion (``model.rewards.aggregation``).
AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")


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
      where their plain sum is constant. GDPO then normalises the sum over the batch: ``loss.scale_rewards: batch``
      (the group mean this project subtracts is 0 when every function scored every completion of the group, so the
      batch mean TRL subtracts is the same).

    A completion on which no function has an opinion gets 0 in both modes.

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
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"Unknown reward aggregation {aggregation!r}; known values are: {', '.join(AGGREGATIONS)}.")
    if aggregation == "normalize_then_sum":
        if not num_generations or scores.shape[0] % num_generations:
            raise ValueError(
                f"aggregation 'normalize_then_sum' needs num_generations dividing the {scores.shape[0]} completions, "
                f"got {num_generations!r}"
            )
        scores = _normalised_within_groups(scores, num_generations, eps)
    weighted = scores * torch.as_tensor(weights, dtype=scores.dtype)
    return torch.nansum(weighted, dim=1)


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


def _first_failing_sample(func, completions, solution, fields, ids) -> Any:
    """Re-run the reward one sample at a time to name the sample that breaks it."""
    for j in range(len(completions)):
        try:
            func(
                completions=completions[j : j + 1],
                solution=solution[j : j + 1],
                **{k: v[j : j + 1] for k, v in fields.items()},
            )
        except Exception:
            return ids[j]
    return "unknown (fails only on the whole batch)"


__all__ = [
    "AGGREGATIONS",
    "REWARDS",
    "REWARD_CONTRACT",
    "RewardError",
    "RewardOpinions",
    "combine_rewards",
    "get_reward",
    "register_reward",
    "reward_name",
    "score_completions",
]
