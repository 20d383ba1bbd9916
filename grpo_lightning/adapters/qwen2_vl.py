"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``).

The processor flattens each image into patches (``pixel_values``: (patches, C*T*P*P)) described by
``image_grid_thw`` (images, 3). Positions are 3-D multimodal RoPE that the model derives itself from
``input_ids``, ``mm_token_type_ids`` (one per token: image or text), ``image_grid_thw`` and the attention
mask, so no position ids are passed.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from grpo_lightning.adapters.base import VLMAdapter


class Qwen2VLAdapter(VLMAdapter):
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_vl", "qwen2_5_vl")
    visual_keys: ClassVar[tuple[str, ...]] = ("pixel_values", "image_grid_thw")
    vision_tower_path: ClassVar[str] = "model.visual"
    # Marks which prompt tokens are image tokens, for the multimodal RoPE (transformers >= 5).
    token_aligned_keys: ClassVar[tuple[str, ...]] = ("mm_token_type_ids",)

    def position_kwargs(self, attention_mask: Tensor) -> dict[str, Tensor]:
        return {}
