"""The demo's random-weight models: builders of tiny (or, given a shape, bigger) InternVL and Qwen2-VL checkpoints
saved with their processors, the tiny open_clip config of the ``explanation`` reward, and every model shape the
demo, the benchmarks and the GPU check build, in one place."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from grpo_demo.tokenizer import (
    CHATML_TOKENS,
    INTERNVL_CHAT_TEMPLATE,
    INTERNVL_SPECIAL_TOKENS,
    QWEN2VL_CHAT_TEMPLATE,
    QWEN2VL_SPECIAL_TOKENS,
    default_corpus,
    train_tokenizer,
)

# --------------------------------------------------------------------------------------------------------------
# Shapes: keyword arguments of the builders below
# --------------------------------------------------------------------------------------------------------------

#: InternVL3-1B's dimensions (OpenGVLab/InternVL3-1B-hf config.json) as ``build_tiny_internvl`` arguments: a
#: Qwen2.5-0.5B-shaped language model (hidden 896, 24 layers, 14 heads / 2 KV heads, MLP 4864, vocabulary 151,674)
#: and an InternViT-300M-shaped vision tower (hidden 1024, 24 layers, 16 heads, MLP 4096) on 448-px tiles of
#: 14-px patches, 256 image tokens per tile. 802M parameters with random weights: the GPU checks' model.
INTERNVL3_1B_SHAPE: dict[str, Any] = {
    "pad_vocab_to": 151_674,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vision_hidden_size": 1024,
    "vision_intermediate_size": 4096,
    "vision_num_layers": 24,
    "vision_num_heads": 16,
    "image_size": 448,
    "patch_size": 14,
    "downsample_ratio": 0.5,
    "max_patches": 1,
    "max_position_embeddings": 32_768,
}

#: The CPU benchmarks' InternVL (``build_tiny_internvl`` arguments): random weights, InternVL3-1B's proportions shrunk
#: to a 2-core CPU (43.5M parameters, 11.3M of them in the vision tower). A 448-px tile of 14-px patches is 1,024
#: vision tokens and 256 image tokens per prompt after the 0.5 pixel shuffle, as in InternVL3-1B, so the vision tower
#: and the prefill cost what they cost there: one tile through the vision tower costs about twice the language model's
#: prefill of its prompt (about three times in InternVL3-1B), and the LM head costs about 0.4 of the language model
#: per token (as with InternVL3-1B's 151,674-token vocabulary).
CPU_MODEL_SHAPE: dict[str, Any] = {
    "vocab_size": 1000,
    "pad_vocab_to": 16384,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vision_hidden_size": 384,
    "vision_intermediate_size": 1536,
    "vision_num_layers": 6,
    "vision_num_heads": 6,
    "image_size": 448,
    "patch_size": 14,
    "downsample_ratio": 0.5,
    "max_patches": 1,
}

#: Qwen2-VL at the scale of ``CPU_MODEL_SHAPE`` (``build_tiny_qwen2vl`` arguments): 448 x 448 pixels of 14-px
#: patches (32 x 32 patches, 256 tokens after the 2 x 2 merge), vision 6 layers x 384, language model 6 layers x 512.
QWEN2VL_CPU_SHAPE: dict[str, Any] = {
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vision_embed_dim": 384,
    "vision_num_layers": 6,
    "vision_num_heads": 6,
    "vision_mlp_ratio": 4,
    "patch_size": 14,
    "merge_size": 2,
    "min_pixels": 448 * 448,
    "max_pixels": 448 * 448,
}

#: A ~0.4M-parameter open_clip model (most of it the 49,408 x 8 token embedding of open_clip's built-in
#: tokenizer, which needs no download), for the ``explanation`` reward's CLIPScore offline. Give the file's path
#: as ``clip_model`` and ``clip_pretrained: random``.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "patch_size": 16, "head_width": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 8, "heads": 2, "layers": 1},
}


def write_tiny_clip_config(path: str | os.PathLike) -> Path:
    """Write :data:`TINY_CLIP_CONFIG` as JSON at ``path`` (a valid ``clip_model``) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(TINY_CLIP_CONFIG), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------------------


def _generation_config(tokenizer):
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=64,
    )


def _random_model(model_class, config, tokenizer, seed: int, dtype: str | None = None):
    """``model_class(config)`` in eval mode, its random weights drawn from ``seed`` (the global RNG is left as it
    was), cast to ``dtype`` when given, with the demo's generation settings."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    model.generation_config = _generation_config(tokenizer)
    return model


def _language_model_config(
    tokenizer,
    rope_parameters: dict[str, Any],
    hidden_size: int,
    intermediate_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    num_key_value_heads: int,
    max_position_embeddings: int,
) -> dict[str, Any]:
    """The Qwen2 language model's config (both families): its sizes plus the tokenizer's vocabulary and ids."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "max_position_embeddings": max_position_embeddings,
        "rope_parameters": rope_parameters,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.pad_token_id,
    }


def _save(model, processor, out_dir: Path) -> Path:
    from transformers.utils import logging as hf_logging

    out_dir.mkdir(parents=True, exist_ok=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return out_dir


def _internvl_image_seq_length(image_size: int, patch_size: int, downsample_ratio: float) -> int:
    grid = image_size // patch_size
    if image_size % patch_size or (grid * downsample_ratio) != int(grid * downsample_ratio):
        raise ValueError("image_size must be a multiple of patch_size, with a grid divisible by 1/downsample_ratio")
    return int(grid * downsample_ratio) ** 2


def _internvl_tokenizer(corpus: Iterable[str] | None, seed: int, vocab_size: int, pad_vocab_to: int | None):
    tokenizer = train_tokenizer(
        default_corpus(seed=seed) if corpus is None else corpus,
        special_tokens=CHATML_TOKENS,
        model_specific_special_tokens=INTERNVL_SPECIAL_TOKENS,
        vocab_size=vocab_size,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    if pad_vocab_to is not None and pad_vocab_to > len(tokenizer):
        tokenizer.add_tokens([f"<|filler_{i}|>" for i in range(pad_vocab_to - len(tokenizer))])
    return tokenizer


def _internvl_processor(tokenizer, image_size: int, max_patches: int, image_seq_length: int):
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    size = {"height": image_size, "width": image_size}
    return InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(
            size=size, crop_to_patches=max_patches > 1, min_patches=1, max_patches=max_patches
        ),
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size=size),
        image_seq_length=image_seq_length,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )


def _internvl_config(
    tokenizer, text_config: dict[str, Any], vision_config, image_seq_length: int, downsample_ratio: float
):
    """The ``InternVLConfig`` of a Qwen2 language model (``text_config``, as :func:`_language_model_config` gives it)
    behind ``vision_config``'s vision tower, with tied word embeddings."""
    from transformers import InternVLConfig, Qwen2Config

    return InternVLConfig(
        vision_config=vision_config,
        text_config=Qwen2Config(**text_config, tie_word_embeddings=True),
        image_token_id=tokenizer.convert_tokens_to_ids(INTERNVL_SPECIAL_TOKENS["context_image_token"]),
        image_seq_length=image_seq_length,
        downsample_ratio=downsample_ratio,
        tie_word_embeddings=True,
    )


def build_tiny_internvl(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1000,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_attention_heads: int = 2,
    num_key_value_heads: int = 1,
    vision_hidden_size: int = 32,
    vision_intermediate_size: int = 64,
    vision_num_layers: int = 2,
    vision_num_heads: int = 2,
    image_size: int = 64,
    patch_size: int = 8,
    downsample_ratio: float = 0.5,
    max_patches: int = 4,
    max_position_embeddings: int = 4096,
    pad_vocab_to: int | None = None,
    dtype: str = "float32",
) -> Path:
    """Build and save (model + processor) a random-weight ``InternVLForConditionalGeneration`` at ``out_dir``.

    ``image_size`` is the tile side in pixels; each tile gives ``(image_size // patch_size) ** 2 *
    downsample_ratio ** 2`` image tokens (the processor's ``image_seq_length``). ``max_patches`` is the image
    processor's tile budget: an image gets the grid of 1 to ``max_patches`` tiles closest to its aspect ratio, plus a
    thumbnail when that grid has more than one (1 = no multi-tile cropping: every image is one tile). ``pad_vocab_to``
    grows the vocabulary with filler tokens to a real checkpoint's size (151,674 for InternVL3-1B), so that
    embedding, logits and sampling cost what they cost there; ``dtype`` is the saved weights' dtype. The language
    model's default heads are 32 wide (2 heads of the 64 hidden, 1 KV head), the narrowest that vLLM's CPU attention
    runs, so the demo model also samples with the ``vllm`` rollout engine.
    Returns ``out_dir``.
    """
    from transformers import InternVLForConditionalGeneration, InternVLVisionConfig

    image_seq_length = _internvl_image_seq_length(image_size, patch_size, downsample_ratio)
    tokenizer = _internvl_tokenizer(corpus, seed, vocab_size, pad_vocab_to)
    sizes = (hidden_size, intermediate_size, num_layers, num_attention_heads, num_key_value_heads)
    text_config = _language_model_config(
        tokenizer, {"rope_type": "default", "rope_theta": 1e6}, *sizes, max_position_embeddings
    )
    vision_config = InternVLVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=vision_intermediate_size,
        num_hidden_layers=vision_num_layers,
        num_attention_heads=vision_num_heads,
        image_size=image_size,
        patch_size=patch_size,
    )
    config = _internvl_config(tokenizer, text_config, vision_config, image_seq_length, downsample_ratio)
    model = _random_model(InternVLForConditionalGeneration, config, tokenizer, seed, dtype)
    processor = _internvl_processor(tokenizer, image_size, max_patches, image_seq_length)
    return _save(model, processor, Path(out_dir))


def _mrope_section(hidden_size: int, num_attention_heads: int) -> list[int]:
    """M-RoPE splits the rotary half-dimension into (temporal, height, width) sections."""
    head_dim = hidden_size // num_attention_heads
    if hidden_size % num_attention_heads or head_dim % 2:
        raise ValueError("hidden_size / num_attention_heads must be an even integer")
    half = head_dim // 2
    t_sec = half // 4
    h_sec = (half - t_sec) // 2
    return [t_sec, h_sec, half - t_sec - h_sec]


def _qwen2vl_vision_config(
    qwen2_5: bool,
    depth: int,
    num_heads: int,
    embed_dim: int,
    mlp_ratio: int,
    *,
    out_size: int,
    window_size: int,
    patch_size: int,
    merge_size: int,
    temporal_patch_size: int,
) -> dict[str, Any]:
    """The vision tower's config: ``depth`` layers of width ``embed_dim``, merged patches projected to ``out_size``."""
    patch = {"patch_size": patch_size, "spatial_merge_size": merge_size, "temporal_patch_size": temporal_patch_size}
    vision_config = {"depth": depth, "num_heads": num_heads, **patch}
    if qwen2_5:
        return vision_config | {
            "hidden_size": embed_dim,
            "intermediate_size": embed_dim * mlp_ratio,
            "out_hidden_size": out_size,
            "window_size": window_size,
            "fullatt_block_indexes": [depth - 1],
        }
    return vision_config | {"embed_dim": embed_dim, "hidden_size": out_size, "mlp_ratio": mlp_ratio}


def _qwen2vl_tokenizer(corpus: Iterable[str] | None, seed: int, vocab_size: int):
    return train_tokenizer(
        default_corpus(seed=seed) if corpus is None else corpus,
        special_tokens=(*CHATML_TOKENS, *QWEN2VL_SPECIAL_TOKENS),
        vocab_size=vocab_size,
        chat_template=QWEN2VL_CHAT_TEMPLATE,
    )


def _qwen2vl_config(qwen2_5: bool, tokenizer, text_config: dict[str, Any], vision_config: dict[str, Any]):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2VL_SPECIAL_TOKENS}
    return (Qwen2_5_VLConfig if qwen2_5 else Qwen2VLConfig)(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def _qwen2vl_processor(tokenizer, qwen2_5: bool, min_pixels: int, max_pixels: int, **patch_kwargs: int):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    return (Qwen2_5_VLProcessor if qwen2_5 else Qwen2VLProcessor)(
        image_processor=Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, **patch_kwargs),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(min_pixels=min_pixels, max_pixels=max_pixels * 4, **patch_kwargs),
        chat_template=QWEN2VL_CHAT_TEMPLATE,
    )


def build_tiny_qwen2vl(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1000,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_attention_heads: int = 2,
    num_key_value_heads: int = 1,
    vision_embed_dim: int = 32,
    vision_num_layers: int = 2,
    vision_num_heads: int = 2,
    vision_mlp_ratio: int = 2,
    patch_size: int = 8,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
    min_pixels: int = 32 * 32,
    max_pixels: int = 64 * 64,
    max_position_embeddings: int = 4096,
    family: str = "qwen2_vl",
    window_size: int = 32,
) -> Path:
    """Build and save (model + processor) a random-weight ``Qwen2VLForConditionalGeneration`` at ``out_dir``, or
    with ``family="qwen2_5_vl"`` a ``Qwen2_5_VLForConditionalGeneration`` (its vision tower attends within windows
    of ``window_size`` pixels, every layer but the last).

    Images are resized (aspect kept) to a multiple of ``patch_size * merge_size`` pixels with an area between
    ``min_pixels`` and ``max_pixels``; each gives ``grid_h * grid_w / merge_size ** 2`` ``<|image_pad|>`` tokens
    (16 for a 64x64 image with the defaults). The language model's default heads are 32 wide, as in
    ``build_tiny_internvl``, for vLLM's CPU attention. Returns ``out_dir``.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    if family not in ("qwen2_vl", "qwen2_5_vl"):
        raise ValueError(f"family must be qwen2_vl or qwen2_5_vl, not {family!r}")
    qwen2_5 = family == "qwen2_5_vl"
    tokenizer = _qwen2vl_tokenizer(corpus, seed, vocab_size)
    rope = {
        "rope_type": "default",
        "rope_theta": 1e6,
        "mrope_section": _mrope_section(hidden_size, num_attention_heads),
    }
    sizes = (hidden_size, intermediate_size, num_layers, num_attention_heads, num_key_value_heads)
    text_config = _language_model_config(tokenizer, rope, *sizes, max_position_embeddings)
    patch = {"patch_size": patch_size, "merge_size": merge_size, "temporal_patch_size": temporal_patch_size}
    vision = (vision_num_layers, vision_num_heads, vision_embed_dim, vision_mlp_ratio)
    vision_config = _qwen2vl_vision_config(qwen2_5, *vision, out_size=hidden_size, window_size=window_size, **patch)
    config = _qwen2vl_config(qwen2_5, tokenizer, text_config, vision_config)
    model_class = Qwen2_5_VLForConditionalGeneration if qwen2_5 else Qwen2VLForConditionalGeneration
    model = _random_model(model_class, config, tokenizer, seed)
    processor = _qwen2vl_processor(tokenizer, qwen2_5, min_pixels, max_pixels, **patch)
    return _save(model, processor, Path(out_dir))
