"""Checks that a model name can load, made before ``AutoConfig`` so that the user reads what to do: a local folder
that is missing or holds no ``config.json``, a hub id that is neither reachable nor cached, a remote-code InternVL
checkpoint (which needs the converter). AutoConfig's own messages for these cases are about repo ids or remote code.
"""

from __future__ import annotations

import os
from pathlib import Path

from grpo_lightning.errors import ConfigError


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
