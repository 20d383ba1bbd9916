"""CLIPScore of (image, text) pairs with an open_clip model, loaded once per process.

CLIPScore (Hessel et al., "CLIPScore: A Reference-free Evaluation Metric for Image Captioning", EMNLP 2021,
arXiv:2104.08718) is ``w * max(cos(E_image, E_text), 0)`` with w = 2.5, which stretches the cosines CLIP
models produce for matching pairs (about 0.2 to 0.4) towards [0, 1]. As a reward in [0, 1] we use
``max(cos, 0)`` itself, i.e. CLIPScore / 2.5: bounded by 1 for every model, with no clipping at the top.

The model is any open_clip model: a name from ``open_clip.list_models()`` (the default,
``xlm-roberta-base-ViT-B-32``, has a multilingual text tower, since the explanations are Vietnamese), an
``hf-hub:`` or ``local-dir:`` name, or the path of a model-config JSON file (registered under its file stem;
this is how tests build a tiny random-weight model offline).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from grpo_lightning.errors import ConfigError, UserError
from grpo_lightning.images import load_rgb

#: Hessel et al.'s rescaling weight w in CLIPScore = w * max(cos, 0).
CLIPSCORE_WEIGHT = 2.5
#: ``clip_pretrained`` value that builds the model with random weights (tests and benchmarks only).
RANDOM_WEIGHTS = "random"


def clip_score(
    image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, weight: float = CLIPSCORE_WEIGHT
) -> torch.Tensor:
    """Hessel et al.'s CLIPScore of aligned pairs: ``weight * max(cos(image_i, text_i), 0)``.

    Args:
        image_embeddings: (N, D) image embeddings, not necessarily normalised.
        text_embeddings: (N, D) text embeddings, not necessarily normalised.
        weight: w; 1.0 gives ``max(cos, 0)`` in [0, 1], the explanation reward's scale.

    Returns:
        (N,) scores in [0, weight].
    """
    cosine = torch.nn.functional.cosine_similarity(image_embeddings, text_embeddings, dim=-1)
    return weight * cosine.clamp(min=0.0)


class ClipLoadError(UserError, RuntimeError):
    """The CLIP model's weights or tokenizer cannot be loaded (offline with an empty cache, a missing checkpoint file);
    the message says how to make them available."""


@dataclass
class ClipModel:
    """A loaded open_clip model with its image preprocessing and tokenizer, ready for inference on ``device``."""

    model: torch.nn.Module
    preprocess: Any
    tokenizer: Any
    device: torch.device

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image], batch_size: int) -> torch.Tensor:
        """(N, D) float32 image embeddings, ``batch_size`` images per forward pass."""
        pieces = []
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([self.preprocess(image) for image in images[start : start + batch_size]])
            pieces.append(self.model.encode_image(pixels.to(self.device)).float())
        return torch.cat(pieces)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str], batch_size: int) -> torch.Tensor:
        """(N, D) float32 text embeddings, ``batch_size`` texts per forward pass."""
        pieces = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size]))
            pieces.append(self.model.encode_text(tokens.to(self.device)).float())
        return torch.cat(pieces)


def resolve_device(device: str | None) -> torch.device:
    """``device``, or when None the current CUDA device if there is one (each DDP rank's own GPU), else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def load_clip_model(model_name: str, pretrained: str | None, device: str | torch.device) -> ClipModel:
    """The open_clip model ``model_name`` with weights ``pretrained`` on ``device``, loaded once per process.

    Args:
        model_name: an open_clip model name, ``hf-hub:``/``local-dir:`` name, or a model-config JSON path.
        pretrained: an open_clip pretrained tag (e.g. ``laion5b_s13b_b90k``), a local checkpoint path,
            :data:`RANDOM_WEIGHTS`, or None for the model's first published tag.
        device: where the model runs.

    Raises:
        ClipLoadError: the weights or the tokenizer cannot be loaded (e.g. offline with an empty cache); the
            message says how to make them available.
        ConfigError: ``model_name`` names a model-config file that does not exist, or a model without published
            weights while ``pretrained`` is None.
    """
    return _load_clip_model(model_name, pretrained, str(torch.device(device)))


@functools.cache
def _load_clip_model(model_name: str, pretrained: str | None, device: str) -> ClipModel:
    import open_clip  # deferred: importing open_clip costs a second, and CIDEr-only runs never need it

    name = _register_config_file(model_name, open_clip)
    weights = _resolve_pretrained(name, pretrained, open_clip)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights, device=device)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as err:
        published = open_clip.list_pretrained_tags_by_model(name)
        raise ClipLoadError(_load_error(model_name, weights, err, published)) from err
    model.eval().requires_grad_(False)
    return ClipModel(model, preprocess, tokenizer, torch.device(device))


def _register_config_file(model_name: str, open_clip: Any) -> str:
    if model_name.endswith(".json"):
        path = Path(model_name)
        if not path.is_file():
            raise ConfigError(
                f"clip_model {model_name!r}: no such open_clip model-config file; set "
                "model.rewards.kwargs.explanation.clip_model to an existing file or an open_clip model name."
            )
        if path.stem not in open_clip.list_models():
            open_clip.add_model_config(path)
        return path.stem
    return model_name


def _resolve_pretrained(name: str, pretrained: str | None, open_clip: Any) -> str | None:
    if pretrained == RANDOM_WEIGHTS or name.startswith(("hf-hub:", "local-dir:")):
        return None  # random weights, or weights that come with the schema
    if pretrained is not None:
        return pretrained
    tags = open_clip.list_pretrained_tags_by_model(name)
    if not tags:
        raise ConfigError(
            f"clip_model {name!r} has no published open_clip weights; set "
            "model.rewards.kwargs.explanation.clip_pretrained to a checkpoint file "
            f"(or {RANDOM_WEIGHTS!r} for random weights, whose scores are noise: tests only)."
        )
    return tags[0]


def _load_error(model_name: str, weights: str | None, err: Exception, published: Sequence[str]) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    if weights and (os.sep in weights or weights.endswith((".pt", ".bin", ".safetensors"))):
        where = "the file does not exist" if not os.path.isfile(weights) else "the file could not be loaded"
    elif weights and weights not in published:
        tags = ", ".join(published) if published else "none"
        where = f"it is neither a file nor one of the model's published open_clip tags ({tags})"
    elif offline:
        where = "HF_HUB_OFFLINE is set and they are not in the local cache"
    else:
        where = "they could not be fetched"
    pretrained_argument = f", pretrained='{weights}'" if weights else ""
    return (
        f"explanation reward: cannot load the CLIP model {model_name!r} with weights {weights!r}: {where} "
        f"({type(err).__name__}: {err}). To fix it, either (1) download them once on a machine with Hugging Face "
        'Hub access: python -c "import open_clip; '
        f"open_clip.create_model_and_transforms('{model_name}'{pretrained_argument}); "
        f"open_clip.get_tokenizer('{model_name}')\" and copy the cache (~/.cache/huggingface) here; or (2) set "
        "model.rewards.kwargs.explanation.clip_pretrained to a local checkpoint file (a multilingual text tower also "
        "needs its Hugging Face tokenizer in the cache); or (3) set model.rewards.kwargs.explanation.clip_weight: 0 to "
        "score explanations with CIDEr-D alone."
    )


def open_images(paths: Sequence[str], ids: Sequence[Any] | None = None) -> list[Image.Image]:
    """The images at ``paths`` as :func:`~grpo_lightning.images.load_rgb` reads them, the pictures the policy saw.

    A missing or unreadable file is reported with its sample id.
    """
    images = []
    for index, path in enumerate(paths):
        try:
            images.append(load_rgb(path))
        except (OSError, ValueError) as err:
            sample = ids[index] if ids is not None else f"#{index}"
            message = f"explanation reward: cannot open image {path} of sample id {sample} ({err})."
            raise FileNotFoundError(message) from err
    return images
