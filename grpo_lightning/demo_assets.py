"""Tiny, fully offline demo assets: two random-weight vision-language models and a synthetic ViVQA-X dataset.

``python -m grpo_lightning.demo_assets --out DIR [--seed 0] [--num-train 64] [--num-val 16] [--force]``
builds, deterministically (same seed -> byte-identical JSON files and identical weights), in a few seconds on a
laptop CPU and without any network access:

``DIR/models/tiny-internvl/``
    A native transformers ``InternVLForConditionalGeneration`` (model_type ``internvl``, the classes of
    ``OpenGVLab/InternVL3-1B-hf``: an ``InternVLVisionConfig`` ViT + a Qwen2 language model) with random weights,
    2 layers each and hidden sizes of 32-64, 64x64-pixel tiles split into 8x8 patches (16 image tokens per tile
    after the 0.5 pixel shuffle), saved beside its ``InternVLProcessor`` (``GotOcr2ImageProcessor`` with dynamic
    tiling as InternVL3 does it, up to 4 tiles plus a thumbnail: the demo's 64-128 px pictures get 1, 3 or 5 tiles
    by size and aspect ratio; the tokenizer below; an InternVL3-style ChatML chat template).
``DIR/models/tiny-qwen2vl/``
    The same for ``Qwen2VLForConditionalGeneration`` (model_type ``qwen2_vl``) with a ``Qwen2VLProcessor`` whose
    ``min_pixels``/``max_pixels`` keep every image at a few dozen patches, and the Qwen2-VL chat template.
``DIR/data/``
    ``ViVQA-X_train.json`` / ``ViVQA-X_val.json`` in the exact ViVQA-X schema (a JSON list of records, all values
    strings except ``explanation``, a list of strings), with COCO-style image names whose JPEG files are in
    ``train2014/`` and ``val2014/``: coloured circles, squares and triangles on a plain background, with Vietnamese
    questions (colour, shape, yes/no, count), true answers and explanations (train: 1, sometimes 2; val: exactly 3
    paraphrases). ``demo_scenes.json`` records what each picture contains, so answers can be checked.
``DIR/.complete``
    Written last; an interrupted build leaves no marker, and a build whose marker exists is skipped unless
    ``--force``.

The tokenizer of both models is a byte-level BPE (about 1000 tokens, Qwen2 pre-tokenization, NFC, so any
Vietnamese text round-trips exactly) trained here with the ``tokenizers`` library on the synthetic dataset text and
the answer-format prompt, with the real special tokens of each model family, and with the answer-format tags
(:data:`grpo_lightning.task.TAG_TOKENS`) as single, non-special added tokens (they survive
``decode(..., skip_special_tokens=True)``).

Why: the test suite and ``make demo`` must run offline, in seconds, on a CPU, yet exercise exactly the code paths
(``AutoModelForImageTextToText`` / ``AutoProcessor``, chat templates, image placeholder expansion, ``generate``) of
the real checkpoints. The models are untrained and produce random text; real users point the configs at hub
checkpoints (``OpenGVLab/InternVL3-1B-hf``, ``Qwen/Qwen2-VL-2B-Instruct``) and the real ViVQA-X data. The builders
take keyword size parameters so that a benchmark can build a bigger random model (e.g. 448-pixel tiles, ~50M
parameters) with the same code.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grpo_lightning import quiet_deepspeed_without_cuda
from grpo_lightning.task import (
    ANSWER_TAG,
    DEFAULT_PROMPT_TEMPLATE,
    EXPLAIN_TAG,
    TAG_TOKENS,
    THINK_TAG,
    format_solution,
    render_prompt,
    tagged,
)

__all__ = [
    "ANSWER_TAGS",
    "COLORS",
    "COMPLETE_MARKER",
    "INTERNVL_CHAT_TEMPLATE",
    "INTERNVL_SPECIAL_TOKENS",
    "QWEN2VL_CHAT_TEMPLATE",
    "QWEN2VL_SPECIAL_TOKENS",
    "SHAPES",
    "VIVQAX_KEYS",
    "Scene",
    "SceneShape",
    "build_demo_assets",
    "build_tiny_internvl",
    "build_tiny_qwen2vl",
    "data_dir",
    "default_corpus",
    "image_dir",
    "internvl_path",
    "is_complete",
    "main",
    "make_dataset",
    "qwen2vl_path",
    "render_scene",
    "scenes_path",
    "split_json_path",
    "train_tokenizer",
    "write_dataset",
]

# --------------------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------------------

COMPLETE_MARKER = ".complete"
INTERNVL_SUBDIR = "models/tiny-internvl"
QWEN2VL_SUBDIR = "models/tiny-qwen2vl"
CLIP_CONFIG_FILE = "models/tiny-clip.json"

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


def clip_config_path(root: str | os.PathLike) -> Path:
    """The tiny CLIP config of the demo assets (``DIR/models/tiny-clip.json``)."""
    return Path(root) / CLIP_CONFIG_FILE


DATA_SUBDIR = "data"
SCENES_FILE = "demo_scenes.json"
_SPLIT_IMAGE_DIR = {"train": "train2014", "val": "val2014"}


def internvl_path(root: str | os.PathLike) -> Path:
    """``root/models/tiny-internvl``: the tiny InternVL checkpoint (model + processor)."""
    return Path(root) / INTERNVL_SUBDIR


def qwen2vl_path(root: str | os.PathLike) -> Path:
    """``root/models/tiny-qwen2vl``: the tiny Qwen2-VL checkpoint (model + processor)."""
    return Path(root) / QWEN2VL_SUBDIR


def data_dir(root: str | os.PathLike) -> Path:
    """``root/data``: the synthetic ViVQA-X dataset (JSON files + COCO-style image folders)."""
    return Path(root) / DATA_SUBDIR


def split_json_path(root: str | os.PathLike, split: str) -> Path:
    """``root/data/ViVQA-X_{split}.json`` for ``split`` in ``train``/``val``."""
    _check_split(split)
    return data_dir(root) / f"ViVQA-X_{split}.json"


def image_dir(root: str | os.PathLike, split: str) -> Path:
    """``root/data/train2014`` or ``root/data/val2014`` (the COCO layout)."""
    _check_split(split)
    return data_dir(root) / _SPLIT_IMAGE_DIR[split]


def scenes_path(root: str | os.PathLike) -> Path:
    """``root/data/demo_scenes.json``: image name -> what the picture contains (for checking answers)."""
    return data_dir(root) / SCENES_FILE


def is_complete(root: str | os.PathLike) -> bool:
    """Whether a finished build is present at ``root`` (its ``.complete`` marker exists)."""
    return (Path(root) / COMPLETE_MARKER).is_file()


def _check_split(split: str) -> None:
    if split not in _SPLIT_IMAGE_DIR:
        raise ValueError(f"split must be one of {sorted(_SPLIT_IMAGE_DIR)}, got {split!r}")


# --------------------------------------------------------------------------------------------------------------
# Synthetic ViVQA-X data
# --------------------------------------------------------------------------------------------------------------

VIVQAX_KEYS = (
    "question",
    "image_id",
    "image_name",
    "explanation",
    "answer",
    "question_id",
    "question_type",
    "answer_type",
)

#: Vietnamese colour name -> RGB used to paint it.
COLORS: dict[str, tuple[int, int, int]] = {
    "đỏ": (220, 30, 30),
    "xanh lá": (30, 160, 50),
    "xanh dương": (30, 70, 220),
    "vàng": (240, 200, 20),
    "tím": (140, 50, 180),
    "cam": (245, 125, 20),
}

#: Shape kind -> Vietnamese name.
SHAPES: dict[str, str] = {"circle": "hình tròn", "square": "hình vuông", "triangle": "hình tam giác"}

_BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((250, 250, 250), (232, 232, 232), (245, 238, 222), (225, 236, 245))
_NUMBER_WORDS = {1: "một", 2: "hai", 3: "ba"}

#: The six answer-format tags, each a single (non-special) token of the demo tokenizers.
ANSWER_TAGS = TAG_TOKENS


@dataclass(frozen=True)
class SceneShape:
    """One painted shape: its kind (``circle``/``square``/``triangle``), Vietnamese colour name, bounding box
    ``(x0, y0, x1, y1)`` in pixels, and a pixel ``center`` that lies well inside it."""

    kind: str
    color: str
    bbox: tuple[int, int, int, int]
    center: tuple[int, int]

    @property
    def name(self) -> str:
        return SHAPES[self.kind]


@dataclass(frozen=True)
class Scene:
    """One synthetic picture: size, background and 1-3 shapes (distinct kinds and distinct colours)."""

    width: int
    height: int
    background: tuple[int, int, int]
    shapes: tuple[SceneShape, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _random_scene(rng: random.Random) -> Scene:
    width, height = rng.randint(64, 128), rng.randint(64, 128)
    n = rng.choices((1, 2, 3), weights=(3, 4, 3))[0]
    kinds = rng.sample(sorted(SHAPES), n)
    colors = rng.sample(list(COLORS), n)
    background = rng.choice(_BACKGROUNDS)
    col_w = width // n
    shapes = []
    for i, (kind, color) in enumerate(zip(kinds, colors, strict=True)):
        max_side = min(col_w, height) - 6
        side = rng.randint(max(14, max_side * 2 // 3), max_side)
        x0 = i * col_w + rng.randint(3, col_w - side - 3)
        y0 = rng.randint(3, height - side - 3)
        x1, y1 = x0 + side - 1, y0 + side - 1
        cx = (x0 + x1) // 2
        cy = (y0 + 2 * y1) // 3 if kind == "triangle" else (y0 + y1) // 2
        shapes.append(SceneShape(kind, color, (x0, y0, x1, y1), (cx, cy)))
    return Scene(width, height, background, tuple(shapes))


def render_scene(scene: Scene):
    """Paint ``scene`` as a PIL RGB image."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (scene.width, scene.height), scene.background)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        x0, y0, x1, y1 = shape.bbox
        fill = COLORS[shape.color]
        if shape.kind == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape.kind == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    return image


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _describe(shapes: Sequence[SceneShape]) -> str:
    parts = [f"một {s.name} màu {s.color}" for s in shapes]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " và " + parts[-1]


def _question(kind: str, scene: Scene, rng: random.Random) -> tuple[str, str, list[str], str, str]:
    """One question about ``scene``: (question, answer, >= 3 explanation paraphrases, question_type, answer_type)."""
    shapes = scene.shapes
    if kind == "color":
        s = rng.choice(shapes)
        subject = "Hình" if len(shapes) == 1 else _cap(s.name)
        question = f"{subject} trong ảnh có màu gì?"
        expl = [
            f"{s.name} trong ảnh có màu {s.color}",
            f"{s.name} được tô màu {s.color}",
            f"trong bức ảnh, {s.name} là hình màu {s.color}",
            f"có thể thấy {s.name} có màu {s.color}",
        ]
        return question, s.color, expl, "what color is the", "other"
    if kind == "shape":
        s = rng.choice(shapes)
        question = "Hình trong ảnh là hình gì?" if len(shapes) == 1 else f"Hình màu {s.color} trong ảnh là hình gì?"
        expl = [
            f"hình màu {s.color} trong ảnh là một {s.name}",
            f"trong ảnh có một {s.name} màu {s.color}",
            f"hình có màu {s.color} là {s.name}",
            f"bức ảnh cho thấy một {s.name} được tô màu {s.color}",
        ]
        return question, s.name, expl, "what is the", "other"
    if kind == "has_shape":
        target = rng.choice(sorted(SHAPES))
        question = f"Trong ảnh có {SHAPES[target]} không?"
        present = [s for s in shapes if s.kind == target]
        if present:
            s = present[0]
            expl = [
                f"trong ảnh có một {s.name} màu {s.color}",
                f"có một {s.name} màu {s.color} trong bức ảnh",
                f"bức ảnh có {s.name} được tô màu {s.color}",
            ]
            return question, "có", expl, "is there a", "yes/no"
        expl = [
            f"trong ảnh chỉ có {_describe(shapes)}",
            f"bức ảnh không có {SHAPES[target]} nào mà chỉ có {_describe(shapes)}",
            f"các hình trong ảnh là {_describe(shapes)}",
        ]
        return question, "không", expl, "is there a", "yes/no"
    if kind == "has_color":
        target = rng.choice(list(COLORS))
        question = f"Trong ảnh có hình nào màu {target} không?"
        present = [s for s in shapes if s.color == target]
        if present:
            s = present[0]
            expl = [
                f"{s.name} trong ảnh có màu {s.color}",
                f"trong ảnh có một {s.name} màu {s.color}",
                f"bức ảnh có một hình màu {s.color} là {s.name}",
            ]
            return question, "có", expl, "is there a", "yes/no"
        expl = [
            f"trong ảnh không có hình nào màu {target}, chỉ có {_describe(shapes)}",
            f"bức ảnh chỉ có {_describe(shapes)}",
            f"các hình trong ảnh là {_describe(shapes)}, không có màu {target}",
        ]
        return question, "không", expl, "is there a", "yes/no"
    if kind == "is_this":  # single-shape pictures only; "yes" is "đúng" as in ViVQA-X
        (s,) = shapes
        target = rng.choice(sorted(SHAPES))
        question = f"Đây có phải là {SHAPES[target]} không?"
        if target == s.kind:
            expl = [
                f"hình trong ảnh là một {s.name} màu {s.color}",
                f"bức ảnh có một {s.name} màu {s.color}",
                f"đây là một {s.name} được tô màu {s.color}",
            ]
            return question, "đúng", expl, "is this a", "yes/no"
        expl = [
            f"hình trong ảnh là {s.name}, không phải {SHAPES[target]}",
            f"đây là một {s.name} màu {s.color}",
            f"bức ảnh chỉ có một {s.name} màu {s.color}",
        ]
        return question, "không", expl, "is this a", "yes/no"
    if kind == "count":
        n = len(shapes)
        question = "Có bao nhiêu hình trong ảnh?"
        expl = [
            f"trong ảnh có {_NUMBER_WORDS[n]} hình: {_describe(shapes)}",
            f"bức ảnh gồm {_describe(shapes)}",
            f"có thể đếm được {_NUMBER_WORDS[n]} hình trong ảnh",
            f"các hình trong ảnh là {_describe(shapes)}",
        ]
        return question, str(n), expl, "how many", "number"
    raise ValueError(f"unknown question kind {kind!r}")


_QUESTION_KINDS = ("color", "shape", "has_shape", "has_color", "count", "is_this")


def _split_records(
    split: str, num: int, rng: random.Random, image_ids: list[int]
) -> tuple[list[dict[str, Any]], dict[str, Scene]]:
    records: list[dict[str, Any]] = []
    scenes: dict[str, Scene] = {}
    coco = f"COCO_{_SPLIT_IMAGE_DIR[split]}"
    for image_id in image_ids:
        if len(records) >= num:
            break
        scene = _random_scene(rng)
        image_name = f"{coco}_{image_id:012d}.jpg"
        scenes[image_name] = scene
        kinds = [k for k in _QUESTION_KINDS if k != "is_this" or len(scene.shapes) == 1]
        for q_index, kind in enumerate(rng.sample(kinds, min(2, num - len(records)))):
            question, answer, expl, question_type, answer_type = _question(kind, scene, rng)
            if split == "val":
                explanation = rng.sample(expl, 3)
            else:
                explanation = rng.sample(expl, 2 if rng.random() < 0.2 else 1)
            records.append(
                {
                    "question": unicodedata.normalize("NFC", question),
                    "image_id": str(image_id),
                    "image_name": image_name,
                    "explanation": [unicodedata.normalize("NFC", e) for e in explanation],
                    "answer": unicodedata.normalize("NFC", answer),
                    "question_id": f"{image_id}{q_index:03d}",
                    "question_type": question_type,
                    "answer_type": answer_type,
                }
            )
    return records, scenes


def make_dataset(
    *, seed: int = 0, num_train: int = 64, num_val: int = 16
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Scene]]:
    """Generate (deterministically from ``seed``) the records of both splits and the scenes they ask about.

    Returns ``({"train": records, "val": records}, {image_name: Scene})``. Each picture gets up to two questions of
    different kinds, so ``num_train`` records use ``ceil(num_train / 2)`` train pictures.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError("num_train and num_val must be >= 0")
    rng = random.Random(seed)
    n_images = {"train": math.ceil(num_train / 2), "val": math.ceil(num_val / 2)}
    ids = rng.sample(range(1, 581_930), n_images["train"] + n_images["val"])  # COCO-like ids, disjoint splits
    train_records, train_scenes = _split_records("train", num_train, rng, ids[: n_images["train"]])
    val_records, val_scenes = _split_records("val", num_val, rng, ids[n_images["train"] :])
    return {"train": train_records, "val": val_records}, {**train_scenes, **val_scenes}


def _dump_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def write_dataset(
    out_dir: str | os.PathLike, *, seed: int = 0, num_train: int = 64, num_val: int = 16
) -> dict[str, list[dict[str, Any]]]:
    """Write ``ViVQA-X_{train,val}.json``, the JPEG pictures in ``train2014/``/``val2014/`` and
    ``demo_scenes.json`` into ``out_dir`` (the ``data`` folder of the layout); returns the records."""
    out = Path(out_dir)
    splits, scenes = make_dataset(seed=seed, num_train=num_train, num_val=num_val)
    for split, records in splits.items():
        folder = out / _SPLIT_IMAGE_DIR[split]
        folder.mkdir(parents=True, exist_ok=True)
        for name in dict.fromkeys(r["image_name"] for r in records):
            render_scene(scenes[name]).save(folder / name, format="JPEG", quality=95, subsampling=0)
        _dump_json(records, out / f"ViVQA-X_{split}.json")
    _dump_json({name: scene.to_json() for name, scene in scenes.items()}, out / SCENES_FILE)
    return splits


# --------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------

#: Special tokens of the InternVL3 tokenizer that this transformers version's ``InternVLProcessor`` reads
#: (``tokenizer.start_image_token`` / ``end_image_token`` / ``context_image_token`` / ``video_token``).
INTERNVL_SPECIAL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
#: Extra special tokens of the Qwen2-VL tokenizer (``Qwen2VLProcessor`` falls back to ``<|image_pad|>`` and
#: ``<|video_pad|>`` when the tokenizer has no ``image_token``/``video_token`` attribute).
QWEN2VL_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
_CHATML_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

#: InternVL3 (-hf) style ChatML template: an ``{"type": "image"}`` item renders ``<IMG_CONTEXT>\n``, which
#: ``InternVLProcessor`` expands to ``<img>`` + ``<IMG_CONTEXT>`` * image_seq_length * tiles + ``</img>``.
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

#: The chat template of ``Qwen/Qwen2-VL-2B-Instruct`` (default system prompt, ``<|vision_start|><|image_pad|>
#: <|vision_end|>`` per image, which ``Qwen2VLProcessor`` expands to one ``<|image_pad|>`` per merged patch).
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_GENERIC_VI_TEXT = (
    "Vì sao con mèo đang ngồi trên ghế? Con mèo đang ngồi trên ghế vì nó muốn nghỉ ngơi.",
    "Người đàn ông đang làm gì? Anh ấy đang chơi quần vợt trên sân.",
    "Đây có phải là một phòng bếp không? Đúng, có tủ lạnh, bếp và bồn rửa.",
    "Những người này đang ở đâu? Họ đang ở trên bãi biển gần nước.",
    "Thời tiết như thế nào? Trời nắng và bầu trời trong xanh.",
    "Chiếc xe buýt màu gì? Chiếc xe buýt có màu đỏ và trắng.",
    "Con chó đang đuổi theo cái gì? Con chó đang đuổi theo một quả bóng.",
    "Người phụ nữ đang cầm gì trong tay? Cô ấy đang cầm một chiếc ô.",
    "Có bao nhiêu người trong ảnh? Có ba người đang đứng cạnh nhau.",
    "Món ăn này là gì? Đây là một chiếc bánh pizza với nhiều phô mai.",
    "Đứa trẻ đang chơi môn thể thao nào? Cậu bé đang chơi bóng chày.",
    "Tại sao mặt đất lại trắng? Vì mặt đất được bao phủ bởi tuyết.",
    "Căn phòng này là phòng gì? Đây là phòng tắm vì có bồn cầu và vòi sen.",
    "Con vật nào đang ăn cỏ? Những con bò đang ăn cỏ trên cánh đồng.",
    "Chiếc máy bay đang bay hay đang đậu? Nó đang đậu ở sân bay.",
    "Cô gái đang ăn gì? Cô ấy đang ăn một chiếc bánh mì kẹp thịt.",
    "Vận động viên trượt tuyết mặc áo khoác màu đen và đội mũ bảo hiểm.",
    "Con ngựa đang kéo một chiếc xe gỗ trên con đường đất.",
    "Hai con hươu cao cổ đứng cạnh cây trong vườn thú.",
    "Người lướt sóng đang cưỡi trên một con sóng lớn ngoài biển.",
    "Chiếc đồng hồ trên tháp chỉ gần mười hai giờ trưa.",
    "Trên bàn có một chiếc máy tính xách tay, một con chuột và một cốc cà phê.",
    "Đèn giao thông đang chuyển sang màu xanh nên xe cộ được phép đi.",
    "Con voi đang phun nước lên lưng để làm mát cơ thể.",
    "Cậu bé đang thả diều trên bãi cỏ vào một ngày nhiều gió.",
    "Chiếc thuyền nhỏ neo đậu bên bờ sông yên tĩnh.",
    "Người đầu bếp đang cắt rau củ trong nhà bếp của nhà hàng.",
    "Chú gấu bông được đặt trên giường cạnh chiếc gối.",
    "Những chiếc xe máy đỗ thành hàng dài trên vỉa hè.",
    "Bà cụ đang đọc sách trên chiếc ghế dài trong công viên.",
    "Đĩa thức ăn có cơm, thịt gà, rau xanh và một lát chanh.",
    "Người chơi quần vợt vung vợt để đánh quả bóng màu vàng.",
    "Chiếc tàu hỏa đang chạy qua cây cầu bắc ngang dòng sông.",
    "Đàn chim bồ câu đang tìm thức ăn trên quảng trường.",
    "Có một chiếc bánh sinh nhật với nhiều ngọn nến đang cháy.",
    "Người đàn ông mặc vest và thắt cà vạt đang nói chuyện điện thoại.",
    "Con mèo đang nằm ngủ trên bàn phím của máy tính.",
    "Tấm biển dừng lại màu đỏ được đặt ở góc đường.",
    "Những quả chuối chín vàng được bày bán ở chợ.",
    "Cầu thủ bóng đá đang chạy theo quả bóng trên sân cỏ.",
    "Chiếc tủ lạnh được dán nhiều tờ giấy ghi chú và ảnh.",
    "Người phụ nữ đang dắt chó đi dạo dọc bờ hồ.",
    "Bầu trời nhiều mây và có vẻ như trời sắp mưa.",
    "Cô bé mặc váy hồng đang cầm một cây kem.",
    "Hai người đang chơi trò chơi điện tử trong phòng khách.",
    "Chiếc bình hoa trên bàn có hoa hồng màu đỏ và trắng.",
    "Có nhiều chiếc ô tô đang chờ đèn đỏ ở ngã tư.",
    "Anh ấy đang trượt ván trên một đoạn đường dốc.",
    "Ngọn núi phía xa được bao phủ bởi tuyết trắng.",
    "Con bò đang đứng giữa đường làm xe cộ phải dừng lại.",
    "Ổ bánh mì được cắt thành nhiều lát trên thớt gỗ.",
    "Chiếc điện thoại di động nằm cạnh cuốn sổ và cây bút.",
    "Vì sao người đàn ông đội mũ? Vì trời nắng và nóng.",
    "Tại sao đường phố lại ướt? Vì trời vừa mới mưa xong.",
    "Làm sao biết đây là mùa đông? Vì mọi người mặc áo ấm và có tuyết.",
    "You are a helpful assistant.",
)


def default_corpus(records: Iterable[dict[str, Any]] | None = None, *, seed: int = 0) -> list[str]:
    """The tokenizer training corpus: the synthetic dataset text (``records``, or the default dataset of ``seed``),
    every question/answer/explanation template, the answer-format prompt and example tagged completions, and a few
    generic Vietnamese VQA sentences. All NFC."""
    if records is None:
        splits, _ = make_dataset(seed=seed)
        records = [r for split in ("train", "val") for r in splits[split]]
    texts: list[str] = []
    for r in records:
        explanation = r["explanation"][0]
        texts.append(render_prompt(DEFAULT_PROMPT_TEMPLATE, r["question"]))
        texts.append(
            tagged(THINK_TAG, f"{r['question']} {' '.join(r['explanation'])}")
            + format_solution(r["answer"], explanation)
        )
        texts.extend(r["explanation"])
    # Every template with every colour / shape / number, so each word of the task is in the corpus.
    template_rng = random.Random(1234)
    for kind in SHAPES:
        for color in COLORS:
            scene = Scene(64, 64, _BACKGROUNDS[0], (SceneShape(kind, color, (0, 0, 1, 1), (0, 0)),))
            for q_kind in _QUESTION_KINDS:
                question, answer, expl, _, _ = _question(q_kind, scene, template_rng)
                texts.append(f"{question} {tagged(ANSWER_TAG, answer)} {tagged(EXPLAIN_TAG, ' '.join(expl))}")
    texts.extend(f"{n} {word}" for n, word in _NUMBER_WORDS.items())
    texts.extend(_GENERIC_VI_TEXT)
    texts.append(DEFAULT_PROMPT_TEMPLATE)
    return [unicodedata.normalize("NFC", t) for t in texts]


def train_tokenizer(
    corpus: Iterable[str],
    *,
    special_tokens: Sequence[str] = _CHATML_TOKENS,
    model_specific_special_tokens: dict[str, str] | None = None,
    eos_token: str = "<|im_end|>",
    pad_token: str = "<|endoftext|>",
    added_tokens: Sequence[str] = ANSWER_TAGS,
    vocab_size: int = 1000,
    chat_template: str | None = None,
    model_max_length: int = 4096,
):
    """Train a byte-level BPE on ``corpus`` and wrap it as a transformers ``Qwen2Tokenizer`` (the tokenizers-backed
    fast tokenizer of Qwen2 / InternVL3 / Qwen2-VL, so it reloads identically with ``AutoTokenizer``).

    The pipeline is Qwen2's (NFC normalizer, Qwen2 split regex, byte-level), so every NFC string round-trips
    exactly. Ids: the BPE tokens first (``0..``), then ``special_tokens`` in order, then the values of
    ``model_specific_special_tokens`` (named special tokens that processors read as tokenizer attributes, e.g.
    InternVL's ``context_image_token``), then the non-special ``added_tokens`` (each a single token that
    ``decode(..., skip_special_tokens=True)`` keeps). ``eos_token`` and ``pad_token`` (also the unk token, as in
    Qwen2) must be among ``special_tokens``; the others are registered as ``extra_special_tokens``. ``vocab_size``
    is the total; it is an upper bound: a small corpus runs out of merges earlier. Deterministic: the same corpus
    gives the same vocabulary and merges.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    named = dict(model_specific_special_tokens or {})
    specials = list(dict.fromkeys([*special_tokens, *named.values()]))
    for required in (eos_token, pad_token):
        if required not in special_tokens:
            raise ValueError(f"{required!r} must be one of special_tokens {list(special_tokens)}")
    extras = [t for t in special_tokens if t != pad_token and t not in named.values()]
    n_bpe = vocab_size - len(specials) - len(added_tokens)
    if n_bpe < 256:
        raise ValueError(f"vocab_size={vocab_size} leaves fewer than the 256 byte tokens for BPE")

    bpe = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=n_bpe,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    # A sorted, de-duplicated corpus fixes the input; the specials and tags are matched whole before
    # pre-tokenization, so they are removed from the BPE corpus.
    texts = sorted({unicodedata.normalize("NFC", t) for t in corpus})
    for token in (*specials, *added_tokens):
        texts = [t.replace(token, " ") for t in texts]
    bpe.train_from_iterator(texts, trainer=trainer)

    model_json = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(sorted(model_json["vocab"].items(), key=lambda kv: kv[1]))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    for token in (*specials, *added_tokens):
        vocab[token] = len(vocab)

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=pad_token,
        bos_token=None,
        eos_token=eos_token,
        pad_token=pad_token,
        extra_special_tokens=named or extras,
        chat_template=chat_template,
        model_max_length=model_max_length,
    )
    if named and extras:
        tokenizer.add_special_tokens({"extra_special_tokens": extras}, replace_extra_special_tokens=False)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in added_tokens])
    if len(tokenizer) != len(vocab) or any(tokenizer.convert_tokens_to_ids(t) != i for t, i in vocab.items()):
        raise RuntimeError("the wrapped tokenizer does not reproduce the trained vocabulary")
    return tokenizer


# --------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------


def _generation_config(tokenizer):
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=64,
    )


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


def build_tiny_internvl(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1000,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
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
    embedding, logits and sampling cost what they cost there; ``dtype`` is the saved weights' dtype.
    Returns ``out_dir``.
    """
    import torch
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        InternVLVisionConfig,
        Qwen2Config,
    )

    grid = image_size // patch_size
    if image_size % patch_size or (grid * downsample_ratio) != int(grid * downsample_ratio):
        raise ValueError("image_size must be a multiple of patch_size, with a grid divisible by 1/downsample_ratio")
    image_seq_length = int(grid * downsample_ratio) ** 2

    tokenizer = train_tokenizer(
        default_corpus(seed=seed) if corpus is None else corpus,
        special_tokens=_CHATML_TOKENS,
        model_specific_special_tokens=INTERNVL_SPECIAL_TOKENS,
        vocab_size=vocab_size,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    if pad_vocab_to is not None and pad_vocab_to > len(tokenizer):
        tokenizer.add_tokens([f"<|filler_{i}|>" for i in range(pad_vocab_to - len(tokenizer))])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (*_CHATML_TOKENS, *INTERNVL_SPECIAL_TOKENS.values())}
    text_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    vision_config = InternVLVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=vision_intermediate_size,
        num_hidden_layers=vision_num_layers,
        num_attention_heads=vision_num_heads,
        image_size=image_size,
        patch_size=patch_size,
    )
    config = InternVLConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=ids["<IMG_CONTEXT>"],
        image_seq_length=image_seq_length,
        downsample_ratio=downsample_ratio,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InternVLForConditionalGeneration(config).eval().to(getattr(torch, dtype))
    model.generation_config = _generation_config(tokenizer)

    size = {"height": image_size, "width": image_size}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(
            size=size, crop_to_patches=max_patches > 1, min_patches=1, max_patches=max_patches
        ),
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size=size),
        image_seq_length=image_seq_length,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    return _save(model, processor, Path(out_dir))


def build_tiny_qwen2vl(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1000,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
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
    (16 for a 64x64 image with the defaults). Returns ``out_dir``.
    """
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    if family not in ("qwen2_vl", "qwen2_5_vl"):
        raise ValueError(f"family must be qwen2_vl or qwen2_5_vl, not {family!r}")
    qwen2_5 = family == "qwen2_5_vl"

    head_dim = hidden_size // num_attention_heads
    if hidden_size % num_attention_heads or head_dim % 2:
        raise ValueError("hidden_size / num_attention_heads must be an even integer")
    half = head_dim // 2  # M-RoPE splits the rotary half-dimension into (temporal, height, width) sections
    t_sec = half // 4
    h_sec = (half - t_sec) // 2
    mrope_section = [t_sec, h_sec, half - t_sec - h_sec]

    tokenizer = train_tokenizer(
        default_corpus(seed=seed) if corpus is None else corpus,
        special_tokens=(*_CHATML_TOKENS, *QWEN2VL_SPECIAL_TOKENS),
        vocab_size=vocab_size,
        chat_template=QWEN2VL_CHAT_TEMPLATE,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (*_CHATML_TOKENS, *QWEN2VL_SPECIAL_TOKENS)}
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "max_position_embeddings": max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope_section},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "depth": vision_num_layers,
        "num_heads": vision_num_heads,
        "patch_size": patch_size,
        "spatial_merge_size": merge_size,
        "temporal_patch_size": temporal_patch_size,
    }
    if qwen2_5:
        vision_config |= {
            "hidden_size": vision_embed_dim,
            "intermediate_size": vision_embed_dim * vision_mlp_ratio,
            "out_hidden_size": hidden_size,
            "window_size": window_size,
            "fullatt_block_indexes": [vision_num_layers - 1],
        }
    else:
        vision_config |= {"embed_dim": vision_embed_dim, "hidden_size": hidden_size, "mlp_ratio": vision_mlp_ratio}
    config = (Qwen2_5_VLConfig if qwen2_5 else Qwen2VLConfig)(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (Qwen2_5_VLForConditionalGeneration if qwen2_5 else Qwen2VLForConditionalGeneration)(config).eval()
    model.generation_config = _generation_config(tokenizer)

    patch_kwargs = {"patch_size": patch_size, "merge_size": merge_size, "temporal_patch_size": temporal_patch_size}
    processor = (Qwen2_5_VLProcessor if qwen2_5 else Qwen2VLProcessor)(
        image_processor=Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, **patch_kwargs),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(min_pixels=min_pixels, max_pixels=max_pixels * 4, **patch_kwargs),
        chat_template=QWEN2VL_CHAT_TEMPLATE,
    )
    return _save(model, processor, Path(out_dir))


# --------------------------------------------------------------------------------------------------------------
# Whole build
# --------------------------------------------------------------------------------------------------------------


def _summary(root: Path, meta: dict[str, Any]) -> str:
    lines = [f"demo assets in {root} (seed {meta['seed']}, built in {meta['build_seconds']:.1f} s)"]
    for key in ("internvl", "qwen2vl"):
        m = meta["models"][key]
        lines.append(f"  {root / m['path']}: {m['class']}, {m['parameters']:,} parameters, vocab {m['vocab_size']}")
    d = meta["data"]
    for split in ("train", "val"):
        lines.append(
            f"  {root / d[f'{split}_json']}: {d[f'num_{split}']} samples, "
            f"{d[f'num_{split}_images']} images in {root / d[f'{split}_images']}"
        )
    return "\n".join(lines)


def build_demo_assets(
    out: str | os.PathLike,
    *,
    seed: int = 0,
    num_train: int = 64,
    num_val: int = 16,
    force: bool = False,
) -> dict[str, Any]:
    """Build everything under ``out`` (see the module docstring) and return a summary dict.

    If ``out/.complete`` exists and not ``force``, nothing is rebuilt and the summary stored in the marker is returned
    with ``"skipped": True``. Otherwise the marker is removed first, the models and data are built in a staging
    folder inside ``out``, moved into place, and the marker is written last (atomically), so an interrupted build
    never leaves a marker. Only ``models/tiny-internvl``, ``models/tiny-qwen2vl`` and ``data`` are replaced; other
    files under ``out`` are left alone. The returned dict is the marker's content plus ``skipped`` and, for a build,
    ``build_seconds``.
    """
    root = Path(out)
    marker = root / COMPLETE_MARKER
    if marker.is_file() and not force:
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        return {**meta, "skipped": True}

    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    for stale in root.glob(".staging-*"):  # left by a killed build
        shutil.rmtree(stale, ignore_errors=True)
    staging = root / f".staging-{os.getpid()}"
    try:
        splits = write_dataset(staging / DATA_SUBDIR, seed=seed, num_train=num_train, num_val=num_val)
        corpus = default_corpus([r for split in ("train", "val") for r in splits[split]])
        build_tiny_internvl(staging / INTERNVL_SUBDIR, seed=seed, corpus=corpus)
        build_tiny_qwen2vl(staging / QWEN2VL_SUBDIR, seed=seed, corpus=corpus)
        write_tiny_clip_config(staging / CLIP_CONFIG_FILE)
        for sub in (INTERNVL_SUBDIR, QWEN2VL_SUBDIR, CLIP_CONFIG_FILE, DATA_SUBDIR):
            target = root / sub
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                os.replace(target, staging / f"old-{sub.replace('/', '-')}")
            os.replace(staging / sub, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    # The marker holds only deterministic content (relative paths, no timings): two builds with the same seed are
    # byte-identical, marker included.
    meta = {
        "seed": seed,
        "models": {"internvl": _model_meta(root, INTERNVL_SUBDIR), "qwen2vl": _model_meta(root, QWEN2VL_SUBDIR)},
        "data": {
            "train_json": str(split_json_path(root, "train").relative_to(root)),
            "val_json": str(split_json_path(root, "val").relative_to(root)),
            "train_images": str(image_dir(root, "train").relative_to(root)),
            "val_images": str(image_dir(root, "val").relative_to(root)),
            "num_train": len(splits["train"]),
            "num_val": len(splits["val"]),
            "num_train_images": len({r["image_name"] for r in splits["train"]}),
            "num_val_images": len({r["image_name"] for r in splits["val"]}),
        },
    }
    tmp_marker = root / f"{COMPLETE_MARKER}.tmp-{os.getpid()}"
    tmp_marker.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_marker, marker)
    return {**meta, "skipped": False, "build_seconds": round(time.perf_counter() - start, 2)}


def _model_meta(root: Path, sub: str) -> dict[str, Any]:
    path = root / sub
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    from safetensors import safe_open

    n_params = 0
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                n_params += math.prod(f.get_slice(key).get_shape())
    return {
        "path": sub,
        "class": config["architectures"][0],
        "model_type": config["model_type"],
        "parameters": n_params,
        "vocab_size": config["text_config"]["vocab_size"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grpo_lightning.demo_assets",
        description="Build tiny offline demo models (InternVL, Qwen2-VL) and a synthetic ViVQA-X dataset.",
    )
    parser.add_argument("--out", required=True, help="output folder, e.g. assets/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=64, help="number of train samples (questions)")
    parser.add_argument("--num-val", type=int, default=16, help="number of val samples (questions)")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT/.complete exists")
    args = parser.parse_args(argv)

    quiet_deepspeed_without_cuda()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    meta = build_demo_assets(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val, force=args.force)
    if meta["skipped"]:
        print(f"{args.out} is up to date ({COMPLETE_MARKER} exists); use --force to rebuild")
        built = (meta.get("seed"), meta.get("data", {}).get("num_train"), meta.get("data", {}).get("num_val"))
        if built != (args.seed, args.num_train, args.num_val):
            print(f"note: it was built with (seed, num_train, num_val) = {built}", file=sys.stderr)
        return 0
    print(_summary(Path(args.out), meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
