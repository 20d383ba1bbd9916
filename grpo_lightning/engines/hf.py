"""The default engine: the policy samples its own rollouts with the adapter's ``generate`` (shared image and prompt
encoding, KV cache), in eval mode, ``sampling.generation_batch_size`` sequences at a time."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from grpo_lightning.adapters import PromptBatch, VLMAdapter
from grpo_lightning.config import SamplingConfig, VLLMConfig
from grpo_lightning.engines.base import RolloutEngine, SampledCompletions, right_pad


class HFEngine(RolloutEngine):
    """The policy samples its own rollouts.

    Args:
        ignored_cap: ``model.vllm.importance_sampling_cap`` as configured, which this engine has no use for (warned
            of when a fit starts).
    """

    name = "hf"

    def __init__(self, ignored_cap: float | None = None):
        self.ignored_cap = ignored_cap

    @classmethod
    def from_options(cls, vllm: VLLMConfig) -> HFEngine:
        return cls(ignored_cap=vllm.importance_sampling_cap)

    def check_fit(self, strategy: Any, sampling: SamplingConfig) -> None:
        if self.ignored_cap is not None:
            rank_zero_warn(
                f"model.vllm.importance_sampling_cap ({self.ignored_cap}) is ignored with model.rollout_engine hf: the "
                "policy samples its own rollouts, so there is no engines' mismatch to correct."
            )

    def sample(
        self,
        model: torch.nn.Module,
        adapter: VLMAdapter,
        prompts: PromptBatch,
        images: list[Any],
        prompt_index: list[int],
        sampling: SamplingConfig,
        do_sample: bool,
    ) -> SampledCompletions:
        chunk = sampling.generation_batch_size or len(prompt_index)
        was_training = model.training
        model.eval()
        try:
            pieces = [
                adapter.generate(
                    model,
                    prompts,
                    prompt_index[i : i + chunk],
                    max_new_tokens=sampling.max_completion_length,
                    min_new_tokens=sampling.min_completion_length,
                    do_sample=do_sample,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    top_k=sampling.top_k,
                )
                for i in range(0, len(prompt_index), chunk)
            ]
        finally:
            model.train(was_training)
        return SampledCompletions(right_pad(pieces, adapter.tokenizer.pad_token_id))


__all__ = ["HFEngine"]
