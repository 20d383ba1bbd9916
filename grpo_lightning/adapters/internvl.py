"""InternVL in the native transformers layout (``InternVLForConditionalGeneration``).

Checkpoints: ``OpenGVLab/InternVL3-1B-hf`` and the other ``-hf`` releases. The processor tiles each
image into 448-px crops (``pixel_values``: (tiles, 3, 448, 448)) and expands one ``<IMG_CONTEXT>`` run
per tile in the prompt; positions are ordinary 1-D RoPE positions, so the base class's left-padding
position ids apply. Projected image features can replace the pixels (``mm_encoder_outputs``), so images are
encoded once per prompt and sampling starts from a prompt cache shared by the G samples.

Resolution (dynamic tiling): an image becomes a grid of tiles whose aspect ratio is closest to its own, between
``min_patches`` and ``max_patches`` tiles, plus a thumbnail of the whole image when the grid has more than one.
Prompts of one batch may so hold different numbers of tiles; each prompt's tiles stay its own (``PromptBatch.visual``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from grpo_lightning.adapters.base import PromptBatch, VLMAdapter, resolution_range
from grpo_lightning.errors import ConfigError


class InternVLAdapter(VLMAdapter):
    model_types: ClassVar[tuple[str, ...]] = ("internvl",)
    visual_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)
    image_resolution_options: ClassVar[tuple[str, ...]] = ("crop_to_patches", "min_patches", "max_patches")

    def set_image_resolution(
        self, *, crop_to_patches: bool | None = None, min_patches: int | None = None, max_patches: int | None = None
    ) -> None:
        image_processor = self.processor.image_processor
        if crop_to_patches is False:
            if min_patches is not None or max_patches is not None:
                raise ConfigError(
                    "min_patches and max_patches bound the tile count of crop_to_patches: true, but crop_to_patches is "
                    "false (one tile per image); remove them, or set crop_to_patches: true."
                )
            # InternVLProcessor asks for tiling in every call (its class default overrides the image processor's own
            # crop_to_patches): a budget of one tile is what makes every image a single tile, in training and in the
            # exported processor alike.
            image_processor.crop_to_patches = False
            image_processor.min_patches = image_processor.max_patches = 1
            return
        low, high = resolution_range(
            ("min_patches", "max_patches"),
            (min_patches, max_patches),
            (image_processor.min_patches, image_processor.max_patches),
        )
        image_processor.crop_to_patches = True  # tile counts were asked for; the saved config says so too
        image_processor.min_patches, image_processor.max_patches = low, high

    def image_token_count(self, image_size: tuple[int, int]) -> int:
        # The processor writes <img> and </img> around the tiles' tokens; its count leaves those two out.
        return super().image_token_count(image_size) + 2

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
