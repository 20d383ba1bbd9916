"""The rollout: what one step samples, handed from the sampling stage to scoring and the policy update."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from grpo_lightning.adapters import PromptBatch


@dataclass
class Rollout:
    """Prompts and their sampled completions, laid out prompt-major: sequence j belongs to prompt j // G.

    Attributes:
        prompts: the B prompts.
        prompt_index: (N,) index into ``prompts`` of each sequence (N = B * G).
        completion_ids: (N, C) generated tokens, right-padded.
        completion_mask: (N, C) 1 up to and including the first EOS, 0 after.
        completions: N decoded completion texts (special tokens skipped).
        engine_logps: (N, C) log-probs of the sampled tokens under the engine that sampled them (0 on padding), or
            None when the policy sampled them itself (the ``hf`` engine).
        versions: (N,) the optimizer step whose weights sampled each completion (``sampling.async_rollouts``; None:
            the weights of the step that trains them).
    """

    prompts: PromptBatch
    prompt_index: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    completions: list[str]
    engine_logps: Tensor | None = None
    versions: Tensor | None = None


def decode_completions(tokenizer: Any, completion_ids: Tensor, completion_mask: Tensor) -> list[str]:
    """The text of each completion: its tokens up to and including the first EOS (``completion_mask``), decoded with
    special tokens skipped. The padding after the EOS is left out rather than decoded, whatever its id: id 0, say, is
    the ordinary token ``!`` in Qwen2's vocabulary, which a completion zeroed past its EOS would end with."""
    lengths = completion_mask.sum(-1).tolist()
    kept = [row[: int(length)] for row, length in zip(completion_ids.tolist(), lengths, strict=True)]
    return tokenizer.batch_decode(kept, skip_special_tokens=True)


def encode_completions(tokenizer: Any, texts: Sequence[str], eos_token_id: int) -> tuple[Tensor, Tensor]:
    """The inverse of :func:`decode_completions`: each text's tokens (no special tokens added) and the EOS, right-padded
    with the tokenizer's pad id, and their mask, as a rollout holds its completions: (N, C) ids and (N, C) mask."""
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] + [eos_token_id] for text in texts]
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for index, tokens in enumerate(rows):
        ids[index, : len(tokens)] = torch.tensor(tokens)
        mask[index, : len(tokens)] = 1
    return ids, mask


@dataclass
class ScoredRollout:
    """One round of sampling in a step: a batch of prompts, its rollout and the rewards of its completions.

    Attributes:
        batch: the batch of prompts (columns, as the data loader gives them).
        rollout: its completions.
        rewards: (N,) combined reward of each completion.
        per_func: (N, F) score of each reward function (NaN: no opinion).
        informative: (P,) bool, the groups whose rewards spread enough to train on (all True without dynamic
            sampling).
    """

    batch: dict[str, list[Any]]
    rollout: Rollout
    rewards: Tensor
    per_func: Tensor
    informative: Tensor


@dataclass
class TrainedGroups:
    """The groups a step trains, out of its rounds of sampling (:func:`~grpo_lightning.dynamic_sampling.choose_groups`).

    Attributes:
        rollout: their completions, as one rollout (the first round's own object when it is all of them).
        rewards: (N,) their rewards, as the advantages take them.
        per_func: (N, F) their scores by reward function (NaN: no opinion).
        chosen: which groups they are, as (round, prompt) pairs, in the rollout's order.
        solutions: the gold solution of each of their prompts (the batch's ``solution``: the answer and the first
            reference explanation, :func:`~grpo_lightning.task.format_solution`), in the rollout's prompt order; None
            when the batches have none.
    """

    rollout: Rollout
    rewards: Tensor
    per_func: Tensor
    chosen: list[tuple[int, int]]
    solutions: list[str] | None = None


def join_groups(parts: Sequence[tuple[Rollout, Sequence[int]]], num_generations: int, pad_token_id: int) -> Rollout:
    """One rollout of the chosen groups of several rollouts, in the order given.

    Args:
        parts: (rollout, prompt indices of its groups to take) pairs.
        num_generations: G; the completions of prompt p of a rollout are its rows ``p * G`` to ``p * G + G - 1``.
        pad_token_id: the id that pads prompts (on the left) and completions (on the right) to a common width.

    Returns:
        A rollout of the taken prompts, prompt-major like every rollout. Prompt tokens, visual inputs and
        completions are the originals' (padding aside, which the masks leave out), and so are the engine's
        log-probs (``engine_logps``, right-padded with 0; None when the parts have none) and the weights versions;
        image features an earlier pass kept (``PromptBatch.feature_memo``) stay with their prompt.

    Raises:
        ValueError: some parts have engine log-probs (or weights versions) and others not.
    """
    prompt_ids, prompt_masks, visual, texts, rows = [], [], [], [], []
    aligned: dict[str, list[Tensor]] = {}
    memo: dict[int, Any] | None = None
    for rollout, groups in parts:
        prompts = rollout.prompts
        for p in groups:
            if prompts.feature_memo is not None:
                memo = {} if memo is None else memo
                if p in prompts.feature_memo:
                    memo[len(visual)] = prompts.feature_memo[p]
            keep = prompts.attention_mask[p].bool()
            first = int(keep.nonzero()[0]) if keep.any() else prompts.attention_mask.shape[1]
            prompt_ids.append(prompts.input_ids[p, first:])
            prompt_masks.append(prompts.attention_mask[p, first:])
            for key, value in prompts.token_aligned.items():
                aligned.setdefault(key, []).append(value[p, first:])
            visual.append(prompts.visual[p])
            texts.append(prompts.texts[p] if p < len(prompts.texts) else "")
            rows += [(rollout, p * num_generations + g) for g in range(num_generations)]
    width = max((rollout.completion_ids.shape[1] for rollout, _ in rows), default=0)
    completion_ids = torch.stack([_right(r.completion_ids[j], width, pad_token_id) for r, j in rows])
    completion_mask = torch.stack([_right(r.completion_mask[j], width, 0) for r, j in rows])
    with_engine = {rollout.engine_logps is not None for rollout, _ in parts}
    if len(with_engine) > 1:
        raise ValueError("cannot join rollouts with the engine's log-probs and rollouts without them")
    engine_logps = None
    if with_engine == {True} and rows:
        engine_logps = torch.stack([_right(r.engine_logps[j], width, 0) for r, j in rows])
    prompts = PromptBatch(
        input_ids=_left_stack(prompt_ids, pad_token_id),
        attention_mask=_left_stack(prompt_masks, 0),
        visual=visual,
        texts=texts,
        token_aligned={key: _left_stack(values, 0) for key, values in aligned.items()},
        feature_memo=memo,
    )
    prompt_index = torch.arange(len(visual), device=completion_ids.device).repeat_interleave(num_generations)
    completions = [r.completions[j] for r, j in rows]
    with_versions = {rollout.versions is not None for rollout, _ in parts}
    if len(with_versions) > 1:
        raise ValueError("cannot join rollouts with weights versions and rollouts without them")
    versions = torch.stack([r.versions[j] for r, j in rows]) if with_versions == {True} and rows else None
    return Rollout(prompts, prompt_index, completion_ids, completion_mask, completions, engine_logps, versions)


def _right(row: Tensor, width: int, value: int) -> Tensor:
    return torch.nn.functional.pad(row, (0, width - row.shape[0]), value=value)


def _left_stack(rows: list[Tensor], value: int) -> Tensor:
    width = max(row.shape[0] for row in rows)
    return torch.stack([torch.nn.functional.pad(row, (width - row.shape[0], 0), value=value) for row in rows])
