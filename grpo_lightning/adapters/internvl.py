"""InternVL in the native transformers layout (``InternVLForConditionalGeneration``).

Checkpoints: ``OpenGVLab/InternVL3-1B-hf`` and the other ``-hf`` releases. The processor tiles each
image into 448-px crops (``pixel_values``: (tiles, 3, 448, 448)) and expands one ``<IMG_CONTEXT>`` run
per tile in the prompt; positions are ordinary 1-D RoPE positions, so the base class's left-padding
position ids apply.
"""

from __future__ import annotations

from typing import ClassVar

from grpo_lightning.adapters.base import VLMAdapter


class InternVLAdapter(VLMAdapter):
    model_types: ClassVar[tuple[str, ...]] = ("internvl",)
    visual_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)
