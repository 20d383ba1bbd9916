"""The offline demo: two random-weight vision-language models (one of them also after a format-only warm-up) and a
synthetic ViVQA-X dataset, in a package of its own beside ``grpo_lightning`` (which never imports it).

``python -m grpo_demo --out DIR [--seed 0] [--num-train 64] [--num-val 48] [--force]``
builds, deterministically (same seed -> byte-identical JSON files and identical weights), in about 15 seconds on a
laptop CPU and without any network access:

``DIR/models/tiny-internvl/``
    A native transformers ``InternVLForConditionalGeneration`` (model_type ``internvl``, the classes of
    ``OpenGVLab/InternVL3-1B-hf``: an ``InternVLVisionConfig`` ViT + a Qwen2 language model) with random weights,
    2 layers each and hidden sizes of 32-64, 64x64-pixel tiles split into 8x8 patches (16 image tokens per tile
    after the 0.5 pixel shuffle), saved beside its ``InternVLProcessor`` (``GotOcr2ImageProcessor`` with dynamic
    tiling as InternVL3 does it, up to 4 tiles plus a thumbnail: the demo's 64-128 px pictures get 1, 3 or 5 tiles
    by size and aspect ratio; the tokenizer below; an InternVL3-style ChatML chat template).
``DIR/models/tiny-internvl-cold-start/``
    The same InternVL after a short supervised warm-up (:mod:`grpo_demo.cold_start`, about 10 s on 2 cores) on
    tagged completions whose answers and explanations are drawn at random: it writes the three tags in order and
    stops, and knows nothing of the pictures. ``configs/demo.yaml`` trains it, so that the format, accuracy and
    explanation scores have somewhere to rise from in 100 steps.
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
(``grpo_lightning.task.TAG_TOKENS``) as single, non-special added tokens (they survive
``decode(..., skip_special_tokens=True)``).

Why: the test suite and ``make demo`` must run offline, in seconds, on a CPU, yet exercise exactly the code paths
(``AutoModelForImageTextToText`` / ``AutoProcessor``, chat templates, image placeholder expansion, ``generate``) of
the real checkpoints. The random models produce random text, the warmed-up one formatted guesses; real users point
the configs at hub checkpoints (``OpenGVLab/InternVL3-1B-hf``, ``Qwen/Qwen2-VL-2B-Instruct``) and the real ViVQA-X
data. The builders take keyword size parameters so that a benchmark can build a bigger random model (e.g.
448-pixel tiles, ~50M parameters) with the same code; every such shape is in :mod:`grpo_demo.models`.

Modules: ``layout`` (where each file lives), ``scenes`` (pictures, questions, the dataset), ``tokenizer`` (BPE
training, special tokens, chat templates), ``models`` (builders and shapes), ``cold_start`` (the format-only
warm-up), ``build`` (the whole build and its command line). The names below are the ones the tests, benchmarks and
scripts use.
"""

from grpo_demo.build import DEMO_NUM_TRAIN, DEMO_NUM_VAL, build_demo_assets, main
from grpo_demo.cold_start import ColdStart, cold_start, format_examples
from grpo_demo.layout import (
    COMPLETE_MARKER,
    INTERNVL_COLD_START_SUBDIR,
    INTERNVL_SUBDIR,
    QWEN2VL_SUBDIR,
    clip_config_path,
    data_dir,
    image_dir,
    internvl_cold_start_path,
    internvl_path,
    is_complete,
    qwen2vl_path,
    scenes_path,
    split_json_path,
)
from grpo_demo.models import (
    CPU_MODEL_SHAPE,
    INTERNVL3_1B_SHAPE,
    QWEN2VL_CPU_SHAPE,
    build_tiny_internvl,
    build_tiny_qwen2vl,
    write_tiny_clip_config,
)
from grpo_demo.scenes import COLORS, SHAPES, VIVQAX_KEYS, Scene, SceneShape, make_dataset, render_scene, write_dataset
from grpo_demo.tokenizer import (
    ANSWER_TAGS,
    INTERNVL_CHAT_TEMPLATE,
    INTERNVL_SPECIAL_TOKENS,
    QWEN2VL_CHAT_TEMPLATE,
    QWEN2VL_SPECIAL_TOKENS,
    default_corpus,
    train_tokenizer,
)

__all__ = [
    "DEMO_NUM_TRAIN",
    "DEMO_NUM_VAL",
    "ColdStart",
    "ANSWER_TAGS",
    "COLORS",
    "COMPLETE_MARKER",
    "CPU_MODEL_SHAPE",
    "INTERNVL3_1B_SHAPE",
    "INTERNVL_CHAT_TEMPLATE",
    "INTERNVL_SPECIAL_TOKENS",
    "INTERNVL_COLD_START_SUBDIR",
    "INTERNVL_SUBDIR",
    "QWEN2VL_CHAT_TEMPLATE",
    "QWEN2VL_CPU_SHAPE",
    "QWEN2VL_SPECIAL_TOKENS",
    "QWEN2VL_SUBDIR",
    "SHAPES",
    "VIVQAX_KEYS",
    "Scene",
    "SceneShape",
    "build_demo_assets",
    "build_tiny_internvl",
    "build_tiny_qwen2vl",
    "cold_start",
    "clip_config_path",
    "data_dir",
    "default_corpus",
    "format_examples",
    "image_dir",
    "internvl_cold_start_path",
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
    "write_tiny_clip_config",
]
