"""Model adapters, chosen from the checkpoint config's ``model_type``."""

from __future__ import annotations

from typing import Any

from grpo_lightning.adapters.base import PromptBatch, Rollout, VLMAdapter
from grpo_lightning.adapters.internvl import InternVLAdapter
from grpo_lightning.adapters.qwen2_vl import Qwen2VLAdapter

ADAPTERS: dict[str, type[VLMAdapter]] = {
    model_type: adapter for adapter in (InternVLAdapter, Qwen2VLAdapter) for model_type in adapter.model_types
}


def adapter_class_for(model_type: str) -> type[VLMAdapter]:
    """The adapter class for a config ``model_type``; a clear error lists the supported ones."""
    try:
        return ADAPTERS[model_type]
    except KeyError:
        supported = ", ".join(sorted(ADAPTERS))
        raise ValueError(
            f"Model type {model_type!r} is not supported. Supported model types: {supported}. "
            "For InternVL checkpoints in the remote-code layout (model_type 'internvl_chat': Vintern-1B-v3.5, the "
            "original InternVL2.5/3 releases), convert once with `python -m grpo_lightning.convert_internvl SRC DST` "
            "and train DST, or use a '-hf' checkpoint such as OpenGVLab/InternVL3-1B-hf."
        ) from None


def check_checkpoint_layout(model_name_or_path: str) -> None:
    """Raise a ValueError that points to the converter when the checkpoint is a remote-code InternVL one."""
    from grpo_lightning.convert_internvl import is_remote_code_internvl, remote_code_message

    if is_remote_code_internvl(model_name_or_path):
        raise ValueError(remote_code_message(model_name_or_path))


def build_adapter(model_type: str, processor: Any) -> VLMAdapter:
    return adapter_class_for(model_type)(processor)


__all__ = [
    "ADAPTERS",
    "PromptBatch",
    "Rollout",
    "VLMAdapter",
    "adapter_class_for",
    "build_adapter",
    "check_checkpoint_layout",
]
