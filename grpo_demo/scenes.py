"""The synthetic ViVQA-X data: pictures of coloured shapes, Vietnamese questions about them, true answers and
explanations, written in the exact ViVQA-X schema and COCO layout (deterministic from a seed)."""

from __future__ import annotations

import json
import math
import os
import random
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grpo_demo.layout import SCENES_FILE, SPLIT_IMAGE_DIRS
from grpo_lightning.task import ANSWER_TAG, EXPLAIN_TAG, tagged

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


#: One question about a scene: (question, answer, >= 3 explanation paraphrases, question_type, answer_type).
Question = tuple[str, str, list[str], str, str]


def _color_question(scene: Scene, rng: random.Random) -> Question:
    """What colour one shape is."""
    shapes = scene.shapes
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


def _shape_question(scene: Scene, rng: random.Random) -> Question:
    """Which shape has a given colour."""
    shapes = scene.shapes
    s = rng.choice(shapes)
    question = "Hình trong ảnh là hình gì?" if len(shapes) == 1 else f"Hình màu {s.color} trong ảnh là hình gì?"
    expl = [
        f"hình màu {s.color} trong ảnh là một {s.name}",
        f"trong ảnh có một {s.name} màu {s.color}",
        f"hình có màu {s.color} là {s.name}",
        f"bức ảnh cho thấy một {s.name} được tô màu {s.color}",
    ]
    return question, s.name, expl, "what is the", "other"


def _has_shape_question(scene: Scene, rng: random.Random) -> Question:
    """Whether a given shape kind is in the picture."""
    shapes = scene.shapes
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


def _has_color_question(scene: Scene, rng: random.Random) -> Question:
    """Whether a shape of a given colour is in the picture."""
    shapes = scene.shapes
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


def _is_this_question(scene: Scene, rng: random.Random) -> Question:
    """Whether the picture's one shape is a given kind (single-shape pictures only; "yes" is "đúng" as in ViVQA-X)."""
    (s,) = scene.shapes
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


def _count_question(scene: Scene, rng: random.Random) -> Question:
    """How many shapes the picture holds."""
    shapes = scene.shapes
    n = len(shapes)
    question = "Có bao nhiêu hình trong ảnh?"
    expl = [
        f"trong ảnh có {_NUMBER_WORDS[n]} hình: {_describe(shapes)}",
        f"bức ảnh gồm {_describe(shapes)}",
        f"có thể đếm được {_NUMBER_WORDS[n]} hình trong ảnh",
        f"các hình trong ảnh là {_describe(shapes)}",
    ]
    return question, str(n), expl, "how many", "number"


#: Question kind -> its writer; the order is the order a picture's kinds are drawn from.
_QUESTIONS = {
    "color": _color_question,
    "shape": _shape_question,
    "has_shape": _has_shape_question,
    "has_color": _has_color_question,
    "count": _count_question,
    "is_this": _is_this_question,
}


def _question(kind: str, scene: Scene, rng: random.Random) -> Question:
    """One question of ``kind`` about ``scene``."""
    if kind not in _QUESTIONS:
        raise ValueError(f"unknown question kind {kind!r}")
    return _QUESTIONS[kind](scene, rng)


_QUESTION_KINDS = tuple(_QUESTIONS)


def _split_records(
    split: str, num: int, rng: random.Random, image_ids: list[int]
) -> tuple[list[dict[str, Any]], dict[str, Scene]]:
    records: list[dict[str, Any]] = []
    scenes: dict[str, Scene] = {}
    coco = f"COCO_{SPLIT_IMAGE_DIRS[split]}"
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


def question_templates() -> list[str]:
    """Every question template with every colour, shape and number, answer and explanations tagged: the task's
    whole vocabulary, for the tokenizer's corpus."""
    texts = []
    template_rng = random.Random(1234)
    for kind in SHAPES:
        for color in COLORS:
            scene = Scene(64, 64, _BACKGROUNDS[0], (SceneShape(kind, color, (0, 0, 1, 1), (0, 0)),))
            for q_kind in _QUESTION_KINDS:
                question, answer, expl, _, _ = _question(q_kind, scene, template_rng)
                texts.append(f"{question} {tagged(ANSWER_TAG, answer)} {tagged(EXPLAIN_TAG, ' '.join(expl))}")
    texts.extend(f"{n} {word}" for n, word in _NUMBER_WORDS.items())
    return texts


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
        folder = out / SPLIT_IMAGE_DIRS[split]
        folder.mkdir(parents=True, exist_ok=True)
        for name in dict.fromkeys(r["image_name"] for r in records):
            render_scene(scenes[name]).save(folder / name, format="JPEG", quality=95, subsampling=0)
        _dump_json(records, out / f"ViVQA-X_{split}.json")
    _dump_json({name: scene.to_json() for name, scene in scenes.items()}, out / SCENES_FILE)
    return splits
