"""Rollout records: a training step's prompts, completions, scores and advantages as JSON lines, for the browser.

Every ``logging.rollouts_every_n_steps`` steps, the module writes ``<log_dir>/rollouts/step=N.jsonl``,
N being the number of optimizer steps before the step (TensorBoard's step when ``loss.num_iterations`` is 1), one
line per group of G completions: every group the step sampled, also those that dynamic sampling left out. Under
data parallelism the processes' records are gathered and the first process writes them all in one file (each
record names its ``rank``). ``python -m grpo_lightning.report --rollouts <log_dir>`` makes a page of them
(:func:`grpo_lightning.report.render_rollouts`).

A record::

    {"step": 20, "rank": 0, "round": 0, "group": 1, "prompt_id": "262284001", "question": "...",
     "image_path": "/data/coco/train2014/COCO_train2014_000000262284.jpg", "answer": "mèo", "reward_std": 0.47,
     "filtered": false, "trained": true,
     "completions": [{"text": "...", "reward": 1.5, "scores": {"accuracy": 1.5, "format": null}, "advantage": 0.81,
                      "truncated": false, "length": 37}, ...]}

``round`` is 0 for the step's own batch and k for the k-th batch dynamic sampling drew; ``filtered``: the group's
rewards did not spread enough and dynamic sampling left it out (or, when its rounds ran out, trained it to make up
the batch); ``trained``: the step trained the group (``advantage`` is null otherwise); ``scores``: each reward
function's score before weighting (null: no opinion).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from grpo_lightning.algorithms import group_reward_std, is_truncated
from grpo_lightning.rewards import combine_rewards
from grpo_lightning.rollout import ScoredRollout
from grpo_lightning.rollout_files import rollout_file


def rollout_records(
    sampled: list[ScoredRollout],
    chosen: list[tuple[int, int]],
    advantages: Tensor,
    reward_names: list[str],
    eos_token_ids: int | list[int],
    num_generations: int,
    step: int,
    rank: int = 0,
    dynamic_sampling: bool = False,
    reward_weights: list[float] | None = None,
) -> list[dict[str, Any]]:
    """One record per sampled group (see the module's docstring).

    Args:
        sampled: the step's rounds of sampling, in the order drawn.
        chosen: the trained groups as (round, prompt) pairs, in the order of ``advantages``' groups.
        advantages: (len(chosen) * G,) the trained completions' advantages.
        reward_names: the reward functions' names, in the column order of the scores.
        eos_token_ids: the ids that end a completion (a completion without one was truncated).
        num_generations: G.
        step: the step's number (the optimizer steps before it).
        rank: this process's global rank.
        dynamic_sampling: whether groups without a spread were left out (``filtered`` is false otherwise).
        reward_weights: the reward functions' weights: ``reward`` is then their weighted sum of the scores, as
            ``train/reward`` logs it, also where the advantages came from another aggregation (``normalize_then_sum``);
            None: the rewards the round holds.
    """
    position = {group: i for i, group in enumerate(chosen)}
    advantages = advantages.detach().float().cpu()
    records = []
    for r, round_ in enumerate(sampled):
        rollout, batch = round_.rollout, round_.batch
        rewards = round_.rewards if reward_weights is None else combine_rewards(round_.per_func, reward_weights)
        completions = _completion_records(round_, rewards, reward_names, eos_token_ids)
        stds = group_reward_std(round_.rewards.float(), num_generations).tolist()
        for p in range(len(rollout.prompts)):
            trained = (r, p) in position
            group = completions[p * num_generations : (p + 1) * num_generations]
            for g, completion in enumerate(group):
                advantage = advantages[position[(r, p)] * num_generations + g] if trained else None
                completion["advantage"] = _number(advantage)
            records.append(
                {
                    "step": step,
                    "rank": rank,
                    "round": r,
                    "group": p,
                    "prompt_id": str(_field(batch, "id", p, "")),
                    "question": str(_field(batch, "question", p, "")),
                    "image_path": str(_field(batch, "image_path", p, "")),
                    "answer": _field(batch, "answer", p, None),
                    "reward_std": _number(stds[p]),
                    "filtered": dynamic_sampling and not bool(round_.informative[p]),
                    "trained": trained,
                    "completions": group,
                }
            )
    return records


def _completion_records(
    round_: ScoredRollout, rewards: Tensor, reward_names: list[str], eos_token_ids: int | list[int]
) -> list[dict[str, Any]]:
    """One record per completion of a round, in its order (``advantage`` is the caller's to fill)."""
    rollout = round_.rollout
    truncated = is_truncated(rollout.completion_ids, eos_token_ids).tolist()
    lengths = rollout.completion_mask.sum(-1).tolist()
    return [
        {
            "text": rollout.completions[j],
            "reward": _number(rewards[j]),
            "scores": {name: _number(round_.per_func[j, f]) for f, name in enumerate(reward_names)},
            "advantage": None,
            "truncated": bool(truncated[j]),
            "length": int(lengths[j]),
        }
        for j in range(len(rollout.completions))
    ]


def write_rollouts(records: list[dict[str, Any]], log_dir: str | os.PathLike, step: int) -> Path:
    """Write the records of step ``step`` to ``<log_dir>/rollouts/step=N.jsonl``, whole or not at all (a reader, or a
    resumed run's page, never sees half a file). Returns the file."""
    path = rollout_file(log_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(temp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(temp, path)
    return path


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _field(batch: dict[str, list[Any]], key: str, index: int, default: Any) -> Any:
    values = batch.get(key)
    return values[index] if values is not None and index < len(values) else default


__all__ = ["rollout_records", "write_rollouts"]
