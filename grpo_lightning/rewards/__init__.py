"""Reward functions and their registry.

A reward is a plain function ``(completions: list[str], solution: list[str], **kwargs) -> list[float | None]``
(TRL's interface): one score per completion, ``None`` meaning "no opinion on this sample", which is
left out of that sample's weighted sum. ``kwargs`` carry every batch field (``id``, ``question``,
``answer``, ``explanations``, ``image_path``, ...), repeated so that entry j belongs to completion j.

Rewards are named in the config (``reward_funcs``) by a registered name or a dotted path
``my_pkg.my_module:my_reward``, so users add rewards without editing the library. Registered:

- ``accuracy``: graded answer match, 3.0 / 1.5 / 0.0 (:mod:`~grpo_lightning.rewards.accuracy`);
- ``format``: 1.0 for ``<think>…</think><answer>…</answer><explain>…</explain>``, else 0.0;
- ``tag_count``: partial format credit, 1/6 per well-used tag (:mod:`~grpo_lightning.rewards.format`);
- ``explanation``: CIDEr-D (corpus document frequencies) and CLIPScore of the ``<explain>`` text, in [0, 1]
  (:class:`~grpo_lightning.rewards.explanation.ExplanationReward`, configured by ``reward_kwargs.explanation``).
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from grpo_lightning.rewards.accuracy import accuracy_reward
from grpo_lightning.rewards.explanation import ExplanationReward
from grpo_lightning.rewards.format import format_reward, tag_count_reward

RewardFunc = Callable[..., list[float | None]]

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
            raise ValueError(f"Reward {name!r}: cannot import module {module_name!r} ({err}).") from err
        target = getattr(module, attr, None)
        if not callable(target):
            raise ValueError(f"Reward {name!r}: module {module_name!r} has no callable {attr!r}.")
    else:
        known = ", ".join(sorted(REWARDS))
        raise ValueError(
            f"Unknown reward {name!r}. Registered rewards: {known}; or give a dotted path 'my_pkg.my_module:my_reward'."
        )
    if isinstance(target, type):
        try:
            return target(**options)
        except TypeError as err:
            raise ValueError(f"Reward {name!r}: invalid options {sorted(options)} ({err}).") from err
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

    A reward that raises or returns the wrong number of scores is reported with its name and the id of
    the offending sample, so a broken plugin is found in seconds rather than in a stack trace.
    """
    scores = torch.full((len(completions), len(funcs)), math.nan, dtype=torch.float64)
    ids = fields.get("id", list(range(len(completions))))
    for f, (name, func) in enumerate(funcs):
        try:
            values = func(completions=completions, solution=solution, **fields)
        except Exception as err:
            sample = _first_failing_sample(func, completions, solution, fields, ids)
            raise RuntimeError(f"Reward {name!r} raised {type(err).__name__}: {err} (sample id {sample}).") from err
        if len(values) != len(completions):
            raise RuntimeError(f"Reward {name!r} returned {len(values)} scores for {len(completions)} completions.")
        for j, value in enumerate(values):
            if value is None:
                continue
            if not math.isfinite(float(value)):
                raise RuntimeError(f"Reward {name!r} returned {value} for sample id {ids[j]}; rewards must be finite.")
            scores[j, f] = float(value)
    return scores


def combine_rewards(scores: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """Weighted sum over reward functions, leaving out None (NaN) entries: (N, F) -> (N,)."""
    weighted = scores * torch.as_tensor(weights, dtype=scores.dtype)
    return torch.nansum(weighted, dim=1)


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


__all__ = ["REWARDS", "combine_rewards", "get_reward", "register_reward", "reward_name", "score_completions"]
