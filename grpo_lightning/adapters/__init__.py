"""Model adapters, chosen from the checkpoint config's ``model_type``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from grpo_lightning.adapters.base import PromptBatch, VLMAdapter
from grpo_lightning.adapters.internvl import InternVLAdapter
from grpo_lightning.adapters.qwen2_vl import Qwen2VLAdapter
from grpo_lightning.errors import ConfigError

ADAPTERS: dict[str, type[VLMAdapter]] = {
    model_type: adapter for adapter in (InternVLAdapter, Qwen2VLAdapter) for model_type in adapter.model_types
}


def adapter_class_for(model_type: str) -> type[VLMAdapter]:
    """The adapter class for a config ``model_type``; a clear error lists the supported ones."""
    try:
        return ADAPTERS[model_type]
    except KeyError:
        supported = ", ".join(sorted(ADAPTERS))
        raise ConfigError(
            f"Model type {model_type!r} is not supported. Supported model types: {supported}. "
            "For InternVL checkpoints in the remote-code layout (model_type 'internvl_chat': Vintern-1B-v3.5, the "
            "original InternVL2.5/3 releases), convert once with `python -m grpo_lightning.convert_internvl SRC DST` "
            "and train DST, or use a '-hf' checkpoint such as OpenGVLab/InternVL3-1B-hf."
        ) from None


def check_checkpoint_layout(model_name_or_path: str) -> None:
    """Refuse, with what to do, a model that cannot load: a missing folder, a hub id that cannot be reached, a
    remote-code InternVL checkpoint (which needs the converter).

    Called before ``AutoConfig``, whose messages for these cases are about repo ids or remote code.

    Raises:
        ConfigError: naming ``model.model_name_or_path`` and what to do.
    """
    from grpo_lightning.convert_internvl import is_remote_code_internvl, remote_code_message

    check_model_exists(model_name_or_path)
    if is_remote_code_internvl(model_name_or_path):
        raise ConfigError(remote_code_message(model_name_or_path))


def check_model_exists(name: str) -> None:
    """A ConfigError unless ``name`` is a checkpoint folder, or a hub id that can be loaded.

    A name that looks like a path (absolute, starting with ``./``, ``../`` or ``~``, or with a ``/`` that no hub id
    ``org/name`` has) must be an existing folder with a ``config.json``. A hub id must be in the local Hugging Face
    cache when the hub is off (``HF_HUB_OFFLINE=1``); online, the hub itself answers.
    """
    path = Path(name)
    if path.exists():
        if not path.is_dir():
            raise ConfigError(
                f"model.model_name_or_path {name!r} is a file, not a model folder; point it at the folder that holds "
                "the checkpoint's config.json and weights."
            )
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model.model_name_or_path {name!r}: the folder has no config.json; point it at the folder of a "
                "Hugging Face checkpoint (config.json, the weights and the processor files)."
            )
        return
    if path.is_absolute() or name.startswith(("./", "../", "~")) or not _is_hub_id(name):
        tilde = " (a leading ~ is not expanded here: write the full path)" if name.startswith("~") else ""
        raise ConfigError(
            f"model.model_name_or_path {name!r}: no such model folder{tilde}; check the path (a relative path starts "
            f"from {Path.cwd()}), or give a hub id such as OpenGVLab/InternVL3-1B-hf."
        )
    if _hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ConfigError(
                f"model.model_name_or_path {name!r}: no such local folder, and the hub id is not in the Hugging Face "
                f"cache, which is all there is with HF_HUB_OFFLINE=1; download it where the hub is reachable "
                f"(`hf download {name}`), or point at a local checkpoint folder."
            )


def _is_hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or any(
        os.environ.get(var, "").upper() in ("1", "ON", "YES", "TRUE")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
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
