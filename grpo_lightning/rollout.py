"""The rollout: what one step samples, handed from the sampling stage to scoring and the policy update."""

from __future__ import annotations

from dataclasses import dataclass

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
    """

    prompts: PromptBatch
    prompt_index: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    completions: list[str]
