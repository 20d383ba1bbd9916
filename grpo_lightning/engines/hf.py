"""The default engine: the policy samples its own rollouts with the adapter's ``generate`` (shared image and prompt
encoding, KV cache), in eval mode, ``sampling.generation_batch_size`` sequences at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from grpo_lightning.adapters import PromptBatch, VLMAdapter
from grpo_lightning.engines.base import RolloutEngine, SampledCompletions, right_pad

if TYPE_CHECKING:  # the config checks its options against the engines' registries: no import back at run time
    from grpo_lightning.config import SamplingConfig, VLLMConfig

#: The ``model.vllm`` options of the engines' mismatch correction, which mean nothing when the policy samples itself.
CORRECTION_OPTIONS = ("importance_sampling_cap", "importance_sampling_min", "off_policy_mask_threshold")


class HFEngine(RolloutEngine):
    """The policy samples its own rollouts.

    Args:
        ignored: the ``model.vllm`` correction options that are set (:data:`CORRECTION_OPTIONS`), which this engine
            has no use for (warned of when a fit starts), by name.
    """

    name = "hf"

    def __init__(self, ignored: dict[str, float] | None = None):
        self.ignored = dict(ignored or {})

    @classmethod
    def from_options(cls, vllm: VLLMConfig) -> HFEngine:
        options = {name: getattr(vllm, name) for name in CORRECTION_OPTIONS}
        return cls(ignored={name: value for name, value in options.items() if value is not None})

    def check_fit(self, strategy: Any, sampling: SamplingConfig) -> None:
        for name, value in self.ignored.items():
            rank_zero_warn(
                f"model.vllm.{name} ({value}) is ignored with model.rollout_engine hf: the policy samples its own "
                "rollouts, so there is no engines' mismatch to correct."
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
