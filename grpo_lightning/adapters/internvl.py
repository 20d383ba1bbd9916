"""InternVL in the native transformers layout (``InternVLForConditionalGeneration``).

Checkpoints: ``OpenGVLab/InternVL3-1B-hf`` and the other ``-hf`` releases. The processor tiles each
image into 448-px crops (``pixel_values``: (tiles, 3, 448, 448)) and expands one ``<IMG_CONTEXT>`` run
per tile in the prompt; positions are ordinary 1-D RoPE positions, so the base class's left-padding
position ids apply. Projected image features can replace the pixels (``mm_encoder_outputs``), so images are
encoded once per prompt and sampling starts from a prompt cache shared by the G samples.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from grpo_lightning.adapters.base import PromptBatch, VLMAdapter


class InternVLAdapter(VLMAdapter):
    model_types: ClassVar[tuple[str, ...]] = ("internvl",)
    visual_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)
    shares_image_features: ClassVar[bool] = True
    shares_prompt_cache: ClassVar[bool] = True

    def image_features(self, model: torch.nn.Module, prompts: PromptBatch, indices: list[int]) -> list[Any]:
        config = model.config
        features = model.get_image_features(
            pixel_values=prompts.visual_for(indices, self.vision_dtype(model))["pixel_values"],
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            return_dict=True,
        ).pooler_output  # (tiles of all prompts, tokens per tile, hidden)
        tiles = [prompts.visual[i]["pixel_values"].shape[0] for i in indices]
        return list(features.split(tiles))

    def feature_inputs(self, prompts: PromptBatch, features: dict[int, Any], prompt_index: list[int]) -> dict:
        per_sequence = torch.cat([features[p] for p in prompt_index])
        return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=per_sequence)}}
