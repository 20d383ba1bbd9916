"""The default engine: the policy samples its own rollouts with the adapter's ``generate`` (shared image and prompt
encoding, KV cache), in eval mode, ``sampling.generation_batch_size`` sequences at a time."""

from __future__ import annotations

from typing import Any

import torch

from grpo_lightning.adapters import PromptBatch, VLMAdapter
from grpo_lightning.config import SamplingConfig
from grpo_lightning.engines.base import RolloutEngine, SampledCompletions, right_pad


class HFEngine(RolloutEngine):
    name = "hf"

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
