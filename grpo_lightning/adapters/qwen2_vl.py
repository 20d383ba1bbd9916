"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``).

The processor flattens each image into patches (``pixel_values``: (patches, C*T*P*P)) described by
``image_grid_thw`` (images, 3). Positions are 3-D multimodal RoPE that the model derives itself from
``input_ids``, ``mm_token_type_ids`` (one per token: image or text), ``image_grid_thw`` and the attention
mask, so no position ids are passed.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from grpo_lightning.adapters.base import PromptBatch, VLMAdapter


class Qwen2VLAdapter(VLMAdapter):
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_vl", "qwen2_5_vl")
    visual_keys: ClassVar[tuple[str, ...]] = ("pixel_values", "image_grid_thw")
    vision_tower_path: ClassVar[str] = "model.visual"
    # Marks which prompt tokens are image tokens, for the multimodal RoPE (transformers >= 5).
    token_aligned_keys: ClassVar[tuple[str, ...]] = ("mm_token_type_ids",)

    # Image features replace pixels in log-prob passes; sampling keeps the plain path, because the multimodal
    # RoPE offsets the model stores while prefilling are per batch row and would not follow a copied cache.
    shares_image_features: ClassVar[bool] = True

    def position_kwargs(self, attention_mask: Tensor) -> dict[str, Tensor]:
        return {}

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
