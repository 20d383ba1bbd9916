"""Convert an InternVL checkpoint from the remote-code ``internvl_chat`` layout to the native transformers layout.

``python -m grpo_lightning.convert_internvl SRC DST [--dtype bfloat16] [--overwrite]``

Vintern-1B-v3.5 and the original InternVL2.5 / InternVL3 releases are published in the layout of OpenGVLab's own
code (``config.json`` with ``model_type: internvl_chat``, class ``InternVLChatModel``, loaded with
``trust_remote_code=True``). This trainer runs the native ``InternVLForConditionalGeneration`` of transformers (the
layout of the ``-hf`` releases). Both compute the same function; only names and packaging differ, so a checkpoint is
converted once, offline, and then trains with the same adapter as ``OpenGVLab/InternVL3-1B-hf``:

* weights: every tensor is renamed (the fused ViT ``attn.qkv`` is split into ``q_proj``/``k_proj``/``v_proj``);
  a tensor that no rule maps, or a native tensor that nothing fills, stops the conversion with the list of names;
* config: the InternViT config becomes an ``InternVLVisionConfig`` and ``llm_config`` the ``text_config``;
  ``select_layer`` becomes ``vision_feature_layer``, ``downsample_ratio`` carries over, the tile size is
  ``force_image_size`` (the stored position embeddings are resized to it, bicubically, as the original model does at
  every forward pass);
* tokenizer: the source files, with the named tokens the native processor reads (``start_image_token`` ``<img>``,
  ``end_image_token`` ``</img>``, ``context_image_token`` ``<IMG_CONTEXT>``, ``video_token`` ``<video>``) and a
  ChatML chat template that renders an image as ``<IMG_CONTEXT>`` when the source has none the processor can use;
* processor: 448-px tiles (``force_image_size``), ``max_dynamic_patch`` tiles plus a thumbnail (``max_patches``),
  ImageNet mean/std, and ``image_seq_length = (tile / patch_size) ** 2 * downsample_ratio ** 2`` image tokens per
  tile; generation stops at ``<|im_end|>``.

What is simplified, and why: only checkpoints whose language model is Qwen2 (``Qwen2ForCausalLM``: Vintern-1B-v3.5,
InternVL2.5-1B/4B, InternVL3-1B/2B/8B/14B/...) are converted; InternLM2, Llama or Phi-3 language models are refused
with a message (their ``-hf`` releases exist). The native model has no stochastic depth, so ``drop_path_rate`` is
dropped (it only acts in training). The original tokenizers have no ``<video>`` token; it is added after the last id
and the embedding matrices grow by zero rows, so the logits over the original vocabulary are unchanged and the new
token is suppressed in ``generation_config`` (the adapter suppresses every special token anyway).

Nothing here downloads weights by itself: SRC is a local folder, or a hub id already in the local cache or
fetchable when the hub is reachable (``HF_HUB_OFFLINE=1`` keeps it to the cache).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "INTERNVL_CHAT_TEMPLATE",
    "KEY_RULES",
    "NAMED_TOKENS",
    "REMOTE_CODE_ARCHITECTURE",
    "REMOTE_CODE_MODEL_TYPE",
    "ConversionError",
    "convert",
    "convert_state_dict",
    "image_seq_length",
    "is_remote_code_internvl",
    "load_remote_config",
    "main",
    "remote_code_message",
]

REMOTE_CODE_MODEL_TYPE = "internvl_chat"
REMOTE_CODE_ARCHITECTURE = "InternVLChatModel"
_SUPPORTED_LLM = "Qwen2ForCausalLM"

#: Named tokens of the native ``InternVLProcessor`` (tokenizer attribute -> token).
NAMED_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
_END_OF_TURN = "<|im_end|>"
_PAD_FALLBACK = "<|endoftext|>"

#: InternVL3 (-hf) style ChatML template, given to a converted tokenizer whose own template cannot render an image
#: item: an ``{"type": "image"}`` item renders ``<IMG_CONTEXT>\n``, which ``InternVLProcessor`` expands to ``<img>``
#: + ``<IMG_CONTEXT>`` * image_seq_length * tiles + ``</img>``.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Defaults of the original InternVisionConfig / InternVLChatConfig, used where a config.json leaves a field out.
_VISION_DEFAULTS: dict[str, Any] = {
    "num_channels": 3,
    "patch_size": 14,
    "image_size": 224,
    "qkv_bias": False,
    "hidden_size": 3200,
    "num_attention_heads": 25,
    "intermediate_size": 12800,
    "qk_normalization": True,
    "num_hidden_layers": 48,
    "hidden_act": "gelu",
    "norm_type": "rms_norm",
    "layer_norm_eps": 1e-6,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 0.1,
}
_CHAT_DEFAULTS: dict[str, Any] = {
    "select_layer": -1,
    "force_image_size": None,
    "downsample_ratio": 0.5,
    "dynamic_image_size": False,
    "use_thumbnail": False,
    "ps_version": "v1",
    "min_dynamic_patch": 1,
    "max_dynamic_patch": 6,
}
# llm_config entries that describe the remote-code runtime, not the language model.
_LLM_RUNTIME_KEYS = (
    "_name_or_path",
    "architectures",
    "auto_map",
    "attn_implementation",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "use_flash_attn",
    "use_bfloat16",
    "torch_dtype",
    "dtype",
    "moe_config",
    "transformers_version",
)
# The native InternVLVisionRMSNorm of q_norm/k_norm has a fixed epsilon.
_QK_NORM_EPS = 1e-6

_WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


class ConversionError(ValueError):
    """A checkpoint that cannot be converted, with what was wrong and what to do."""


# --------------------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------------------


def _config_dict(path: str | os.PathLike) -> dict[str, Any] | None:
    """``config.json`` of a local folder, or of a hub id found in the local cache (or fetched when online)."""
    local = Path(path)
    if local.is_dir():
        file = local / "config.json"
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(str(path), "config.json")).read_text(encoding="utf-8"))
    except Exception:  # not a hub id, not cached while offline, no such repo: not something we can tell apart
        return None


def _is_remote_code_config(config: Mapping[str, Any]) -> bool:
    return config.get("model_type") == REMOTE_CODE_MODEL_TYPE or REMOTE_CODE_ARCHITECTURE in (
        config.get("architectures") or ()
    )


def is_remote_code_internvl(path: str | os.PathLike) -> bool:
    """Whether ``path`` (a local folder or a hub id) holds an InternVL checkpoint in the remote-code layout.

    True when its ``config.json`` has ``model_type: internvl_chat`` or the ``InternVLChatModel`` architecture.
    A hub id is looked up in the local cache (or on the hub when it is reachable); a path whose config cannot be
    read gives False, so that the ordinary loading error is the one the user sees.
    """
    config = _config_dict(path)
    return config is not None and _is_remote_code_config(config)


def _suggested_destination(path: str | os.PathLike) -> str:
    name = Path(str(path).rstrip("/\\")).name or "internvl"
    if Path(path).is_dir():
        return str(Path(str(path).rstrip("/\\")).with_name(f"{name}-hf"))
    return f"checkpoints/{name}-hf"


def remote_code_message(path: str | os.PathLike) -> str:
    """The message for a user who points the trainer at a remote-code InternVL checkpoint: what it is, and the exact
    command that converts it."""
    destination = _suggested_destination(path)
    return (
        f"{path} is an InternVL checkpoint in the remote-code layout (model_type '{REMOTE_CODE_MODEL_TYPE}', class "
        f"{REMOTE_CODE_ARCHITECTURE}, as Vintern-1B-v3.5 and the original InternVL2.5/InternVL3 releases are "
        "published), which this trainer does not load. Convert it once to the native transformers layout:\n"
        f"    python -m grpo_lightning.convert_internvl {path} {destination}\n"
        f"then set model_name_or_path: {destination}. Checkpoints with a Qwen2 language model convert (Vintern-1B, "
        "InternVL2.5-1B/4B, InternVL3-1B/2B/8B/...); for the others use the official '-hf' release "
        "(e.g. OpenGVLab/InternVL3-9B-hf)."
    )


# --------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------


def load_remote_config(src: str | os.PathLike) -> dict[str, Any]:
    """Read and check the ``config.json`` of a remote-code InternVL checkpoint folder; returns it as a dict.

    Raises:
        ConversionError: no config, not the remote-code layout, a language model other than Qwen2, or a setting the
            native model does not implement (pixel shuffle 'v1', a downsample ratio whose inverse is no integer).
    """
    file = Path(src) / "config.json"
    if not file.is_file():
        raise ConversionError(f"{src} has no config.json; SRC must be the folder of an InternVL checkpoint.")
    config = json.loads(file.read_text(encoding="utf-8"))
    if not _is_remote_code_config(config):
        raise ConversionError(
            f"{file} has model_type {config.get('model_type')!r} and architectures {config.get('architectures')}, "
            f"not the remote-code InternVL layout (model_type '{REMOTE_CODE_MODEL_TYPE}'). A native 'internvl' "
            "checkpoint needs no conversion: point model_name_or_path at it directly."
        )
    for section in ("vision_config", "llm_config"):
        if not isinstance(config.get(section), dict):
            raise ConversionError(f"{file} has no '{section}' section; it is not a complete internvl_chat config.")
    llm = config["llm_config"]
    architecture = (llm.get("architectures") or [None])[0]
    if architecture != _SUPPORTED_LLM:
        raise ConversionError(
            f"{src} has a {architecture or llm.get('model_type')} language model; only {_SUPPORTED_LLM} (Qwen2: "
            "Vintern-1B-v3.5, InternVL2.5-1B/4B, InternVL3-1B/2B/8B/14B/38B/78B) can be converted. Use the "
            "model's official '-hf' release (transformers layout) instead, e.g. OpenGVLab/InternVL3-9B-hf."
        )
    chat = _chat_settings(config)
    if chat["ps_version"] != "v2":
        raise ConversionError(
            f"{file} uses pixel shuffle ps_version {chat['ps_version']!r}; the native model implements only 'v2' "
            "(the 'v1' shuffle of InternVL 1.5-era checkpoints transposes the feature map)."
        )
    ratio = float(chat["downsample_ratio"])
    if ratio <= 0 or not math.isclose(1 / ratio, round(1 / ratio)):
        raise ConversionError(
            f"{file} has downsample_ratio {ratio}; the native model needs 1 / downsample_ratio to be "
            "an integer (0.5 in every InternVL release)."
        )
    vision = {**_VISION_DEFAULTS, **config["vision_config"]}
    if vision["qk_normalization"] and not math.isclose(vision["layer_norm_eps"], _QK_NORM_EPS):
        raise ConversionError(
            f"{file} normalises queries and keys with epsilon {vision['layer_norm_eps']}; the native q_norm/k_norm "
            f"use {_QK_NORM_EPS}, so the converted model would compute something else."
        )
    return config


def _chat_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The InternVLChatConfig fields, with the original defaults where config.json leaves one out."""
    return {**_CHAT_DEFAULTS, **{k: v for k, v in config.items() if k in _CHAT_DEFAULTS and v is not None}}


def _tile_size(config: Mapping[str, Any]) -> int:
    return int(config.get("force_image_size") or {**_VISION_DEFAULTS, **config["vision_config"]}["image_size"])


def image_seq_length(config: Mapping[str, Any]) -> int:
    """Image tokens per tile: ``(tile / patch_size) ** 2 * downsample_ratio ** 2`` (InternVLChatModel's
    ``num_image_token``)."""
    patch = int({**_VISION_DEFAULTS, **config["vision_config"]}["patch_size"])
    ratio = float(_chat_settings(config)["downsample_ratio"])
    return int((_tile_size(config) // patch) ** 2 * ratio**2)


def _native_config(
    config: Mapping[str, Any], *, vocab_size: int, tied: bool, image_token_id: int, eos_token_id: int, pad_token_id
):
    from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

    vision = {**_VISION_DEFAULTS, **config["vision_config"]}
    chat = _chat_settings(config)
    tile = _tile_size(config)
    vision_config = InternVLVisionConfig(
        hidden_size=vision["hidden_size"],
        intermediate_size=vision["intermediate_size"],
        num_hidden_layers=vision["num_hidden_layers"],
        num_attention_heads=vision["num_attention_heads"],
        num_channels=vision["num_channels"],
        image_size=tile,
        patch_size=vision["patch_size"],
        hidden_act=vision["hidden_act"],
        norm_type=vision["norm_type"],
        layer_norm_eps=vision["layer_norm_eps"],
        attention_bias=bool(vision["qkv_bias"]),
        use_qk_norm=bool(vision["qk_normalization"]),
        attention_dropout=vision["attention_dropout"],
        projection_dropout=vision["dropout"],  # InternAttention's proj_drop
        hidden_dropout_prob=0.0,  # InternViT has no embedding or MLP dropout
        initializer_range=vision["initializer_range"],
        layer_scale_init_value=vision["initializer_factor"],
        use_absolute_position_embeddings=True,
        use_mean_pooling=True,  # no final layer norm, as in InternViT
    )
    llm = {k: v for k, v in config["llm_config"].items() if k not in _LLM_RUNTIME_KEYS}
    llm.update(
        vocab_size=vocab_size,
        tie_word_embeddings=tied,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
    )
    text_config = Qwen2Config(**llm)
    return InternVLConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        image_seq_length=image_seq_length(config),
        downsample_ratio=float(chat["downsample_ratio"]),
        projector_hidden_act="gelu",  # mlp1.2 is nn.GELU()
        vision_feature_layer=int(chat["select_layer"]),
        vision_feature_select_strategy="default",  # drop the class token, as extract_feature does
        tie_word_embeddings=tied,
    )


# --------------------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------------------

_LAYER = r"vision_model\.encoder\.layers\.(\d+)\."
_NATIVE_LAYER = r"model.vision_tower.encoder.layer.\1."

#: Remote-code name pattern (``re.fullmatch``) -> native ``InternVLForConditionalGeneration`` name. The fused
#: ``attn.qkv`` is handled apart: split in three along the output dimension (rows: q, then k, then v).
KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"vision_model\.embeddings\.class_embedding", "model.vision_tower.embeddings.cls_token"),
    (r"vision_model\.embeddings\.position_embedding", "model.vision_tower.embeddings.position_embeddings"),
    (
        r"vision_model\.embeddings\.patch_embedding\.(weight|bias)",
        r"model.vision_tower.embeddings.patch_embeddings.projection.\1",
    ),
    (_LAYER + r"attn\.proj\.(weight|bias)", _NATIVE_LAYER + r"attention.projection_layer.\2"),
    (_LAYER + r"attn\.(q|k)_norm\.weight", _NATIVE_LAYER + r"attention.\2_norm.weight"),
    (_LAYER + r"norm1\.(weight|bias)", _NATIVE_LAYER + r"layernorm_before.\2"),
    (_LAYER + r"norm2\.(weight|bias)", _NATIVE_LAYER + r"layernorm_after.\2"),
    (_LAYER + r"mlp\.(fc1|fc2)\.(weight|bias)", _NATIVE_LAYER + r"mlp.\2.\3"),
    (_LAYER + r"ls(1|2)", _NATIVE_LAYER + r"lambda_\2"),
    (r"mlp1\.0\.(weight|bias)", r"model.multi_modal_projector.layer_norm.\1"),
    (r"mlp1\.1\.(weight|bias)", r"model.multi_modal_projector.linear_1.\1"),
    (r"mlp1\.3\.(weight|bias)", r"model.multi_modal_projector.linear_2.\1"),
    (r"language_model\.model\.(.+)", r"model.language_model.\1"),
    (r"language_model\.lm_head\.weight", "lm_head.weight"),
)
_QKV = re.compile(_LAYER + r"attn\.qkv\.(weight|bias)")
_COMPILED_RULES = tuple((re.compile(pattern), replacement) for pattern, replacement in KEY_RULES)


def _listing(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


def convert_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename remote-code InternVL tensors to the native ``InternVLForConditionalGeneration`` names.

    The fused ViT projection ``attn.qkv`` (output rows: all query features, then key, then value) becomes
    ``attention.q_proj``/``k_proj``/``v_proj``; every other tensor keeps its values (see :data:`KEY_RULES`).

    Raises:
        ConversionError: listing every name that no rule maps (e.g. unmerged LoRA weights), so no weight is dropped.
    """
    out: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for name, tensor in state.items():
        qkv = _QKV.fullmatch(name)
        if qkv:
            if tensor.shape[0] % 3:
                raise ConversionError(f"{name} has {tensor.shape[0]} output rows, not a multiple of 3 (q, k, v).")
            prefix = _QKV.sub(_NATIVE_LAYER + "attention.", name).rsplit(".", 1)[0]
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0), strict=True):
                out[f"{prefix}.{part}.{qkv.group(2)}"] = chunk.contiguous()
            continue
        for pattern, replacement in _COMPILED_RULES:
            if pattern.fullmatch(name):
                out[pattern.sub(replacement, name)] = tensor
                break
        else:
            unmapped.append(name)
    if unmapped:
        raise ConversionError(
            f"{len(unmapped)} tensor(s) of the checkpoint have no place in the native InternVL model: "
            f"{_listing(sorted(unmapped))}. Merge adapters (LoRA) into the weights before converting; nothing is "
            "dropped silently."
        )
    return out


def _load_file(file: Path) -> dict[str, Tensor]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) torch.save file cannot be memory-mapped
        return torch.load(file, map_location="cpu", weights_only=True)


def _load_weights(src: Path) -> dict[str, Tensor]:
    for name in _WEIGHT_FILES:
        file = src / name
        if not file.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(file.read_text(encoding="utf-8"))["weight_map"].values()))
            state: dict[str, Tensor] = {}
            for shard in shards:
                if not (src / shard).is_file():
                    raise ConversionError(f"{file} lists the shard {shard}, which is not in {src}.")
                state.update(_load_file(src / shard))
            return state
        return _load_file(file)
    raise ConversionError(f"{src} has no weights: expected one of {', '.join(_WEIGHT_FILES)}.")


def _resize_position_embedding(position: Tensor, grid: int) -> Tensor:
    """(1, 1 + g*g, C) -> (1, 1 + grid*grid, C): the patch positions resized bicubically (as InternViT does at
    each forward pass when the tile size differs from the stored one), the class position kept."""
    stored = math.isqrt(position.shape[1] - 1)
    if stored * stored != position.shape[1] - 1:
        raise ConversionError(f"the position embedding has {position.shape[1] - 1} patch positions, not a square.")
    if stored == grid:
        return position
    patches = position[:, 1:].float().reshape(1, stored, stored, -1).permute(0, 3, 1, 2)
    patches = torch.nn.functional.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.flatten(2).transpose(1, 2).to(position.dtype)
    return torch.cat([position[:, :1], patches], dim=1)


def _grow_rows(weight: Tensor, rows: int) -> Tensor:
    if weight.shape[0] >= rows:
        return weight
    return torch.cat([weight, weight.new_zeros(rows - weight.shape[0], *weight.shape[1:])], dim=0)


# --------------------------------------------------------------------------------------------------------------
# Tokenizer and processor
# --------------------------------------------------------------------------------------------------------------


def _template_is_usable(tokenizer, template: str | None) -> bool:
    """Whether ``template`` renders a user turn with one image item as text holding one ``<IMG_CONTEXT>``."""
    if not isinstance(template, str):
        return False
    probe = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Xin chào"}]}]
    try:
        text = tokenizer.apply_chat_template(probe, chat_template=template, add_generation_prompt=True, tokenize=False)
    except Exception:  # a template written for string contents only fails on a list: not usable
        return False
    return isinstance(text, str) and text.count(NAMED_TOKENS["context_image_token"]) == 1 and "Xin chào" in text


def _load_tokenizer(src: Path):
    """The source tokenizer with the named InternVL tokens set (``<video>`` added if missing), its other extra
    special tokens kept, and a chat template the processor can use; and the ids of the tokens it added."""
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    # Not AutoTokenizer: it reads config.json, whose auto_map would make it ask to run the remote code.
    file = src / "tokenizer_config.json"
    tokenizer_config = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
    class_name = tokenizer_config.get("tokenizer_class") or "Qwen2Tokenizer"
    tokenizer_class = tokenizer_class_from_name(class_name)
    if tokenizer_class is None:
        raise ConversionError(
            f"{file} names the tokenizer class {class_name!r}, which transformers does not ship (remote code); "
            "the Qwen2-based InternVL checkpoints use Qwen2Tokenizer."
        )
    try:
        plain = tokenizer_class.from_pretrained(src)
    except Exception as error:
        raise ConversionError(f"could not load the tokenizer of {src} with {class_name}: {error}") from error
    for attribute in ("start_image_token", "end_image_token", "context_image_token"):
        token = NAMED_TOKENS[attribute]
        if token not in plain.get_vocab():
            raise ConversionError(f"the tokenizer of {src} has no {token} token; it is not an InternVL tokenizer.")
    if _END_OF_TURN not in plain.get_vocab():
        raise ConversionError(
            f"the tokenizer of {src} has no {_END_OF_TURN} token; only ChatML (Qwen2) InternVL "
            "checkpoints are supported."
        )
    extras = [str(t) for t in plain.extra_special_tokens]
    tokenizer = tokenizer_class.from_pretrained(src, extra_special_tokens=dict(NAMED_TOKENS))
    if extras:
        tokenizer.add_special_tokens({"extra_special_tokens": extras}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None and _PAD_FALLBACK in tokenizer.get_vocab():
        tokenizer.pad_token = _PAD_FALLBACK
    for key in ("auto_map", "is_local", "local_files_only"):  # loading details, not tokenizer facts
        tokenizer.init_kwargs.pop(key, None)
    if not _template_is_usable(tokenizer, tokenizer.chat_template):
        tokenizer.chat_template = INTERNVL_CHAT_TEMPLATE
    source_vocab = plain.get_vocab()
    return tokenizer, sorted(i for token, i in tokenizer.get_vocab().items() if token not in source_vocab)


def _image_mean_std(src: Path) -> tuple[list[float], list[float]]:
    from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    file = src / "preprocessor_config.json"
    if file.is_file():
        config = json.loads(file.read_text(encoding="utf-8"))
        if config.get("image_mean") and config.get("image_std"):
            return list(config["image_mean"]), list(config["image_std"])
    return list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)


def _processor(src: Path, config: Mapping[str, Any], tokenizer):
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    chat = _chat_settings(config)
    dynamic = bool(chat["dynamic_image_size"])
    mean, std = _image_mean_std(src)
    size = {"height": _tile_size(config), "width": _tile_size(config)}
    image_processor = GotOcr2ImageProcessor(
        size=size,
        crop_to_patches=dynamic,
        min_patches=int(chat["min_dynamic_patch"]) if dynamic else 1,
        max_patches=int(chat["max_dynamic_patch"]) if dynamic else 1,
        image_mean=mean,
        image_std=std,
        do_convert_rgb=True,
    )
    return InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size=size, image_mean=mean, image_std=std),
        image_seq_length=image_seq_length(config),
        chat_template=tokenizer.chat_template,
    )


# --------------------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------------------


def _resolve_source(src: str | os.PathLike) -> Path:
    if Path(src).is_dir():
        return Path(src)
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
        return Path(snapshot_download(str(src), allow_patterns=patterns))
    except Exception as error:
        raise ConversionError(
            f"{src} is not a local folder, and no hub checkpoint of that name could be found ({type(error).__name__}: "
            f"{error}). Give the folder that holds config.json and the weights."
        ) from error


def _prepare_destination(dst: Path, src: Path, overwrite: bool) -> None:
    if dst.resolve() == src.resolve():
        raise ConversionError(f"DST {dst} is the source folder; write the converted checkpoint elsewhere.")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        if not overwrite:
            raise ConversionError(f"{dst} exists and is not empty; choose a new folder or pass --overwrite.")
        if not (dst / "config.json").is_file():
            raise ConversionError(f"--overwrite only replaces a checkpoint folder, and {dst} has no config.json.")


def _torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ConversionError(f"dtype {dtype!r} is not a torch floating point type (float32, float16, bfloat16).")
    return value


_EMBED_KEY, _HEAD_KEY = "model.language_model.embed_tokens.weight", "lm_head.weight"
_POSITION_KEY = "model.vision_tower.embeddings.position_embeddings"


def _native_weights(
    src: Path, config: Mapping[str, Any], tokenizer, dtype: torch.dtype | None
) -> tuple[dict[str, Tensor], bool]:
    """The renamed weights, with the position embeddings resized to the tile grid and the word embeddings grown to
    the tokenizer (zero rows); and whether input and output embeddings are tied."""
    weights = convert_state_dict(_load_weights(src))
    if _EMBED_KEY not in weights:
        raise ConversionError(f"{src} has no language_model.model.embed_tokens.weight tensor.")
    original_rows = weights[_EMBED_KEY].shape[0]
    llm_ties = bool(config["llm_config"].get("tie_word_embeddings", False))
    if _HEAD_KEY not in weights and not llm_ties:
        raise ConversionError(f"{src} has no language_model.lm_head.weight and its llm_config does not tie them.")
    tied = _HEAD_KEY not in weights or (llm_ties and torch.equal(weights[_HEAD_KEY], weights[_EMBED_KEY]))
    if tied:
        weights.pop(_HEAD_KEY, None)
    vocab = tokenizer.get_vocab()
    for token in (NAMED_TOKENS["start_image_token"], NAMED_TOKENS["end_image_token"], _END_OF_TURN):
        if vocab[token] >= original_rows:
            raise ConversionError(
                f"the tokenizer of {src} gives {token} the id {vocab[token]}, but the model has only "
                f"{original_rows} embeddings: the tokenizer files do not belong to these weights."
            )
    for key in (_EMBED_KEY, _HEAD_KEY):
        if key in weights:
            weights[key] = _grow_rows(weights[key], len(tokenizer))
    patch = int({**_VISION_DEFAULTS, **config["vision_config"]}["patch_size"])
    if _POSITION_KEY in weights:
        weights[_POSITION_KEY] = _resize_position_embedding(weights[_POSITION_KEY], _tile_size(config) // patch)
    if dtype is not None:
        weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    return weights, tied


def _native_model(src: Path, config: Mapping[str, Any], tokenizer, weights: dict[str, Tensor], tied: bool, added_ids):
    """An ``InternVLForConditionalGeneration`` holding ``weights`` (built on the meta device: no initialisation),
    after checking that they fill it exactly."""
    from transformers import GenerationConfig, InternVLForConditionalGeneration

    vocab = tokenizer.get_vocab()
    native_config = _native_config(
        config,
        vocab_size=weights[_EMBED_KEY].shape[0],
        tied=tied,
        image_token_id=vocab[NAMED_TOKENS["context_image_token"]],
        eos_token_id=vocab[_END_OF_TURN],
        pad_token_id=tokenizer.pad_token_id,
    )
    native_config.dtype = weights[_EMBED_KEY].dtype
    try:
        with torch.device("meta"):  # names and shapes only: the weights are assigned below
            model = InternVLForConditionalGeneration(native_config)
    except ValueError as error:
        raise ConversionError(f"the config.json of {src} describes no valid InternVL model: {error}") from error
    expected = set(model.state_dict()) - ({_HEAD_KEY} if tied else set())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        parts = [f"missing {len(missing)}: {_listing(missing)}"] if missing else []
        parts += [f"not in the native model {len(unexpected)}: {_listing(unexpected)}"] if unexpected else []
        raise ConversionError(
            f"the weights of {src} do not match its config.json ({'; '.join(parts)}). Check that config.json "
            "belongs to these weights (qk_normalization, qkv_bias, norm_type, layer counts)."
        )
    try:
        model.load_state_dict(weights, strict=False, assign=True)
    except RuntimeError as error:  # shape mismatches
        raise ConversionError(f"the weights of {src} do not fit its config.json: {error}") from error
    if tied:
        model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=config["llm_config"].get("bos_token_id"),
        eos_token_id=vocab[_END_OF_TURN],
        pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=list(added_ids) or None,  # tokens the original model never had
    )
    return model


def _save(dst: Path, model, processor) -> None:
    """Write model and processor into a staging folder beside ``dst``, then move it into place: an interrupted
    conversion leaves no half-written checkpoint."""
    from transformers.utils import logging as hf_logging

    staging = dst.parent / f".{dst.name}.converting-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(staging, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if bars:
            hf_logging.enable_progress_bar()


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert the remote-code InternVL checkpoint ``src`` into a native one at ``dst`` (see the module docstring).

    Args:
        src: folder of the remote-code checkpoint (config.json, weights, tokenizer files), or a hub id.
        dst: folder to write the native checkpoint to (model, tokenizer, processor, generation config); it must not
            exist or be empty, unless ``overwrite``.
        dtype: dtype of the written weights (e.g. ``"bfloat16"``); None keeps the stored dtype.
        overwrite: replace an existing checkpoint folder at ``dst``.

    Returns:
        ``dst``.

    Raises:
        ConversionError: the checkpoint cannot be converted faithfully; the message says why and what to do.
    """
    src_dir, dst_dir = _resolve_source(src), Path(dst)
    target_dtype = _torch_dtype(dtype)
    _prepare_destination(dst_dir, src_dir, overwrite)
    config = load_remote_config(src_dir)
    tokenizer, added_ids = _load_tokenizer(src_dir)
    weights, tied = _native_weights(src_dir, config, tokenizer, target_dtype)
    model = _native_model(src_dir, config, tokenizer, weights, tied, added_ids)
    _save(dst_dir, model, _processor(src_dir, config, tokenizer))
    return dst_dir


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------


def _describe(dst: Path) -> str:
    config = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    processor = json.loads((dst / "processor_config.json").read_text(encoding="utf-8"))
    image = processor.get("image_processor", {})
    lines = [
        f"wrote a native InternVLForConditionalGeneration checkpoint to {dst}:",
        f"  model: vision {config['vision_config']['num_hidden_layers']} layers x "
        f"{config['vision_config']['hidden_size']}, language model {config['text_config']['num_hidden_layers']} "
        f"layers x {config['text_config']['hidden_size']}, vocabulary {config['text_config']['vocab_size']}, "
        f"dtype {config.get('dtype')}",
        f"  processor: {image.get('size', {}).get('height')}-px tiles, up to {image.get('max_patches')} per image, "
        f"{config['image_seq_length']} image tokens per tile",
    ]
    lines += [f"  {file.name} ({file.stat().st_size:,} bytes)" for file in sorted(dst.iterdir()) if file.is_file()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m grpo_lightning.convert_internvl SRC DST [--dtype ...] [--overwrite]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m grpo_lightning.convert_internvl",
        description="Convert an InternVL checkpoint in the remote-code 'internvl_chat' layout (Vintern-1B-v3.5, "
        "InternVL2.5/3 originals) into the native transformers layout that grpo_lightning trains.",
    )
    parser.add_argument("src", help="remote-code checkpoint folder (or hub id)")
    parser.add_argument("dst", help="folder to write the native checkpoint to")
    parser.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"), help="weights dtype (default: as stored)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint folder at DST")
    args = parser.parse_args(argv)
    try:
        dst = convert(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(_describe(dst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
