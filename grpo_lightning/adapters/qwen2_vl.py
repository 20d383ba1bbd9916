"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``).

The processor flattens each image into patches (``pixel_values``: (patches, C*T*P*P)) described by
``image_grid_thw`` (images, 3). Positions are 3-D multimodal RoPE that the model derives itself from
``input_ids``, ``mm_token_type_ids`` (one per token: image or text), ``image_grid_thw`` and the attention
mask, so no position ids are passed, except after a shared prompt cache: there every token is text and its
position is its text position plus its prompt's RoPE offset (``rope_deltas``), which the model computes while
prefilling the distinct prompts and which ``prefill`` hands on to the prompt's G sequences.

Resolution: each image is resized, aspect kept, to a multiple of ``patch_size * merge_size`` pixels (28 for the
released checkpoints) per side with an area between ``min_pixels`` and ``max_pixels``; every 28x28 pixels become one
image token.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import transformers
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from grpo_lightning.adapters.base import PromptBatch, VLMAdapter, resolution_range
from grpo_lightning.errors import ConfigError


class Qwen2VLAdapter(VLMAdapter):
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_vl", "qwen2_5_vl")
    visual_keys: ClassVar[tuple[str, ...]] = ("pixel_values", "image_grid_thw")
    vision_tower_path: ClassVar[str] = "model.visual"
    image_feature_paths: ClassVar[tuple[str, ...]] = ("model.visual",)  # its patch merger projects too
    # Marks which prompt tokens are image tokens, for the multimodal RoPE (transformers >= 5).
    token_aligned_keys: ClassVar[tuple[str, ...]] = ("mm_token_type_ids",)
    image_resolution_options: ClassVar[tuple[str, ...]] = ("min_pixels", "max_pixels")

    def set_image_resolution(self, *, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        from transformers.image_utils import SizeDict

        image_processor = self.processor.image_processor
        low, high = resolution_range(
            ("min_pixels", "max_pixels"),
            (min_pixels, max_pixels),
            (image_processor.size["shortest_edge"], image_processor.size["longest_edge"]),
        )
        token_side = image_processor.patch_size * image_processor.merge_size
        if high < token_side**2:
            raise ConfigError(
                f"max_pixels ({high}) is below one image token of this model ({token_side}x{token_side} = "
                f"{token_side**2} pixels); raise it."
            )
        # The image processor's `size` holds both bounds (min_pixels / max_pixels are their older names).
        image_processor.size = SizeDict(shortest_edge=low, longest_edge=high)

    def position_kwargs(self, attention_mask: Tensor) -> dict[str, Tensor]:
        return {}

    def share_prefill_state(self, model: torch.nn.Module, rows: Tensor, num_prompts: int) -> None:
        """The model's RoPE offsets follow the copied cache: prefilling the distinct prompts leaves one offset per
        prompt on the model, which generation (and ``continuation_positions``) then reads per sequence."""
        state = _rope_state(model)
        if state.rope_deltas is None or state.rope_deltas.shape[0] != num_prompts:
            raise RuntimeError(
                f"{type(state).__name__} did not leave one RoPE offset per prompt after the prefill (rope_deltas: "
                f"{None if state.rope_deltas is None else tuple(state.rope_deltas.shape)}, {num_prompts} prompts): "
                f"transformers {transformers.__version__} stores them differently than this adapter expects; install "
                "transformers 5.24 (`pip install transformers==5.24.0`), the version it is tested with."
            )
        state.rope_deltas = state.rope_deltas[rows.to(state.rope_deltas.device)]

    def continuation_positions(self, model: torch.nn.Module, attention_mask: Tensor, start: int) -> dict[str, Tensor]:
        # Text tokens only: the same position on the three RoPE axes, the text position plus the prompt's offset
        # (get_rope_index's offset is relative to the count of unpadded tokens, as the text position here is).
        text = (attention_mask.long().cumsum(-1) - 1)[:, start:]
        positions = text + _rope_state(model).rope_deltas.to(text.device)
        return {"position_ids": positions.unsqueeze(0).expand(3, -1, -1)}

    def image_features(self, model: torch.nn.Module, prompts: PromptBatch, indices: list[int]) -> list[Any]:
        visual = prompts.visual_for(indices, self.vision_dtype(model))
        features = model.get_image_features(visual["pixel_values"], visual["image_grid_thw"], return_dict=True)
        return list(features.pooler_output)  # one (tokens, hidden) tensor per image

    def feature_inputs(self, prompts: PromptBatch, features: dict[int, Any], prompt_index: list[int]) -> dict:
        return {
            "mm_encoder_outputs": {
                "image": BaseModelOutputWithPooling(pooler_output=[features[p] for p in prompt_index])
            },
            "image_grid_thw": torch.cat([prompts.visual[p]["image_grid_thw"] for p in prompt_index]),
        }


def _rope_state(model: torch.nn.Module) -> torch.nn.Module:
    """The submodule that keeps the multimodal RoPE offsets (``Qwen2VLModel``), also inside a PEFT wrapper."""
    for module in model.modules():
        if hasattr(module, "rope_deltas") and hasattr(module, "get_rope_index"):
            return module
    raise RuntimeError(f"{type(model).__name__} has no submodule with rope_deltas: not a Qwen2-VL model?")
