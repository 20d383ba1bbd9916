"""Rollout records: a training step's prompts, completions, scores and advantages as JSON lines, for the browser.

Every ``logging.rollouts_every_n_steps`` steps, :func:`write_rollouts` writes ``<log_dir>/rollouts/step=N.jsonl``,
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
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from grpo_lightning.algorithms import group_reward_std, is_truncated
from grpo_lightning.report import ROLLOUT_FILE, ROLLOUTS_DIR
from grpo_lightning.rewards import combine_rewards
from grpo_lightning.rollout import ScoredRollout

if TYPE_CHECKING:
    from grpo_lightning.module import GRPOModule


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
        truncated = is_truncated(rollout.completion_ids, eos_token_ids).tolist()
        lengths = rollout.completion_mask.sum(-1).tolist()
        stds = group_reward_std(round_.rewards.float(), num_generations).tolist()
        for p in range(len(rollout.prompts)):
            trained = (r, p) in position
            rows = range(p * num_generations, (p + 1) * num_generations)
            completions = []
            for g, j in enumerate(rows):
                advantage = advantages[position[(r, p)] * num_generations + g] if trained else None
                completions.append(
                    {
                        "text": rollout.completions[j],
                        "reward": _number(rewards[j]),
                        "scores": {name: _number(round_.per_func[j, f]) for f, name in enumerate(reward_names)},
                        "advantage": _number(advantage),
                        "truncated": bool(truncated[j]),
                        "length": int(lengths[j]),
                    }
                )
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
                    "completions": completions,
                }
            )
    return records


def write_rollouts(
    module: GRPOModule, step: int, sampled: list[ScoredRollout], chosen: list[tuple[int, int]], advantages: Tensor
) -> Path | None:
    """Write the records of step ``step`` to ``<log_dir>/rollouts/step=N.jsonl``.

    Every process must call it (the records are gathered, and the log folder is agreed on); the first process
    writes. Returns the file there, None elsewhere.
    """
    trainer = module.trainer
    if not trainer.loggers:  # the records belong to the run's log folder; without a logger there is none
        return None
    records = rollout_records(
        sampled,
        chosen,
        advantages,
        [name for name, _ in module.reward_funcs],
        module.adapter.eos_token_ids(module.model),
        module.sampling.num_generations,
        step,
        trainer.global_rank,
        module.sampling.dynamic_sampling,
        module.reward_weights,
    )
    log_dir = trainer.log_dir  # a collective call: on every process
    if log_dir is None:  # a logger without a folder of its own: every process returns alike
        return None
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, records)
        records = [record for part in gathered for record in part]
    if not trainer.is_global_zero:
        return None
    folder = Path(log_dir, ROLLOUTS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step={step}.jsonl"
    temp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(temp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(temp, path)  # a reader (or a resumed run's page) never sees half a file
    return path


def drop_rollouts_from(log_dir: str | os.PathLike, step: int) -> list[Path]:
    """Delete a run's rollout files of step ``step`` and later: a run resumed from the checkpoint of step ``step``
    writes them again, and until it does, none of the steps a killed run sampled past its checkpoint should remain
    (the browser would show a branch the resumed run did not take).

    Returns:
        The files deleted.
    """
    folder = Path(log_dir, ROLLOUTS_DIR)
    if not folder.is_dir():
        return []
    dropped = []
    for path in folder.iterdir():
        match = re.fullmatch(ROLLOUT_FILE + r"(\.tmp-\d+)?", path.name)  # a write a kill cut short too
        if match and int(match.group(1)) >= step:
            path.unlink(missing_ok=True)
            dropped.append(path)
    return sorted(dropped)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _field(batch: dict[str, list[Any]], key: str, index: int, default: Any) -> Any:
    values = batch.get(key)
    return values[index] if values is not None and index < len(values) else default


__all__ = ["drop_rollouts_from", "rollout_records", "write_rollouts"]
