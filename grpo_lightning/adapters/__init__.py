"""Model adapters, chosen from the checkpoint config's ``model_type``."""

from __future__ import annotations

from typing import Any

from grpo_lightning.adapters.base import PromptBatch, VLMAdapter
from grpo_lightning.adapters.checkpoint_layout import check_checkpoint_layout, check_model_exists
from grpo_lightning.adapters.internvl import InternVLAdapter
from grpo_lightning.adapters.qwen2_vl import Qwen2VLAdapter
from grpo_lightning.errors import ConfigError
from grpo_lightning.registry import Registry

#: The adapter of each checkpoint config ``model_type``.
ADAPTERS: Registry[type[VLMAdapter]] = Registry("model type")
for _adapter in (InternVLAdapter, Qwen2VLAdapter):
    for _model_type in _adapter.model_types:
        ADAPTERS.register(_model_type, _adapter)


def adapter_class_for(model_type: str) -> type[VLMAdapter]:
    """The adapter class for a config ``model_type``; a clear error lists the supported ones."""
    if model_type in ADAPTERS:
        return ADAPTERS[model_type]
    supported = ", ".join(sorted(ADAPTERS))
    raise ConfigError(
        f"Model type {model_type!r} is not supported. Supported model types: {supported}. "
        "For InternVL checkpoints in the remote-code layout (model_type 'internvl_chat': Vintern-1B-v3.5, the "
        "original InternVL2.5/3 releases), convert once with `python -m grpo_lightning.convert_internvl SRC DST` "
        "and train DST, or use a '-hf' checkpoint such as OpenGVLab/InternVL3-1B-hf."
    )


def build_adapter(model_type: str, processor: Any) -> VLMAdapter:
    return adapter_class_for(model_type)(processor)


def load_adapter(model_name_or_path: str, **image_options: Any) -> tuple[VLMAdapter, Any]:
    """The adapter of a checkpoint, its processor set to the given image resolution, and the checkpoint's config;
    the weights are not read (the processor and config files take a second).

    Args:
        model_name_or_path: a local folder or hub id (as ``GRPOModule``'s).
        image_options: ``configure_image_resolution``'s options (``ImageConfig`` as a dict).

    Raises:
        ConfigError: a checkpoint that cannot load (``check_checkpoint_layout``) or a resolution option it refuses.
    """
    from transformers import AutoConfig, AutoProcessor

    check_checkpoint_layout(model_name_or_path)  # before AutoConfig, which would prompt to run remote code
    config = AutoConfig.from_pretrained(model_name_or_path)
    adapter = build_adapter(config.model_type, AutoProcessor.from_pretrained(model_name_or_path))
    adapter.configure_image_resolution(**image_options)
    return adapter, config


__all__ = [
    "ADAPTERS",
    "PromptBatch",
    "VLMAdapter",
    "adapter_class_for",
    "build_adapter",
    "check_checkpoint_layout",
    "check_model_exists",
    "load_adapter",
]
