"""Tests of grpo_demo: the tiny offline InternVL / Qwen2-VL checkpoints and the synthetic ViVQA-X
data. Everything is built into temporary folders (once per module for the shared builds); nothing is downloaded."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import re
import unicodedata
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import grpo_demo as da

NUM_TRAIN, NUM_VAL = 64, 16
MODELS = {"internvl": da.internvl_path, "qwen2vl": da.qwen2vl_path}
EXPECTED_PROMPT = {
    "internvl": "<|im_start|>user\n<IMG_CONTEXT>\nHình trong ảnh có màu gì?<|im_end|>\n<|im_start|>assistant\n",
    "qwen2vl": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hình trong ảnh có màu gì?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
}
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hình trong ảnh có màu gì?"}]}]
VIETNAMESE = [
    "Vì sao con mèo đang ngồi trên ghế?",
    "Hình tròn trong ảnh có màu đỏ, không phải màu xanh dương.",
    "Người phụ nữ ở bờ hồ đang đọc sách; ông cụ thì ngủ gật. Ừ, ổn!",
    "Tiếng Việt có dấu: ă â đ ê ô ơ ư, ẳ ẵ ặ ầ ẩ ẫ ậ ề ể ễ ệ ố ổ ỗ ộ ớ ở ỡ ợ ứ ừ ử ữ ự ỳ ỷ ỹ ỵ.",
    "<think>hình màu cam là hình vuông</think><answer>hình vuông</answer><explain>vì nó có bốn cạnh</explain>",
    "ĐÂY CÓ PHẢI LÀ HÌNH TAM GIÁC KHÔNG?  2 + 3 = 5\n\tkết thúc",
]


def _files(root: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob(pattern)) if p.is_file()}


def _state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "assets"
    meta = da.build_demo_assets(root, seed=0, num_train=NUM_TRAIN, num_val=NUM_VAL)
    assert meta["skipped"] is False
    return root


@pytest.fixture(scope="module")
def assets_again(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo_again")
    da.build_demo_assets(root, seed=0, num_train=NUM_TRAIN, num_val=NUM_VAL)
    return root


@pytest.fixture(scope="module")
def assets_seed1(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo_seed1")
    da.build_demo_assets(root, seed=1, num_train=NUM_TRAIN, num_val=NUM_VAL)
    return root


@pytest.fixture(scope="module")
def loaded(assets):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = {}
    for name, path_fn in MODELS.items():
        model = AutoModelForImageTextToText.from_pretrained(path_fn(assets)).eval()
        processor = AutoProcessor.from_pretrained(path_fn(assets))
        out[name] = (model, processor)
    return out


@pytest.fixture(scope="module")
def records(assets) -> dict[str, list[dict]]:
    return {s: json.loads(da.split_json_path(assets, s).read_text(encoding="utf-8")) for s in ("train", "val")}


@pytest.fixture(scope="module")
def scenes(assets) -> dict[str, dict]:
    return json.loads(da.scenes_path(assets).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------------------


def test_layout(assets):
    assert da.internvl_path(assets) == assets / "models" / "tiny-internvl"
    assert da.qwen2vl_path(assets) == assets / "models" / "tiny-qwen2vl"
    assert da.data_dir(assets) == assets / "data"
    assert da.split_json_path(assets, "train") == assets / "data" / "ViVQA-X_train.json"
    assert da.split_json_path(assets, "val") == assets / "data" / "ViVQA-X_val.json"
    assert da.image_dir(assets, "train") == assets / "data" / "train2014"
    assert da.image_dir(assets, "val") == assets / "data" / "val2014"
    with pytest.raises(ValueError):
        da.split_json_path(assets, "test")
    for path_fn in MODELS.values():
        d = path_fn(assets)
        for name in (
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "processor_config.json",
            "chat_template.jinja",
        ):
            assert (d / name).is_file(), d / name
    assert da.is_complete(assets)
    meta = json.loads((assets / ".complete").read_text())
    assert meta["seed"] == 0
    assert meta["data"]["num_train"] == NUM_TRAIN and meta["data"]["num_val"] == NUM_VAL
    assert not list(assets.glob(".staging-*")) and not list(assets.glob(".complete.tmp*"))
    assert sorted(p.name for p in assets.iterdir()) == [".complete", "data", "models"]


# --------------------------------------------------------------------------------------------------------------
# Models and processors
# --------------------------------------------------------------------------------------------------------------


def test_model_classes_and_configs(loaded):
    model, processor = loaded["internvl"]
    tok = processor.tokenizer
    assert type(model).__name__ == "InternVLForConditionalGeneration"
    assert model.config.model_type == "internvl" and model.config.text_config.model_type == "qwen2"
    assert model.config.vision_config.model_type == "internvl_vision"
    assert type(processor).__name__ == "InternVLProcessor"
    assert type(processor.image_processor).__name__ == "GotOcr2ImageProcessor"
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert (processor.start_image_token, processor.end_image_token, processor.image_token) == (
        "<img>",
        "</img>",
        "<IMG_CONTEXT>",
    )
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<IMG_CONTEXT>") == processor.image_token_id
    vc = model.config.vision_config
    per_tile = (vc.image_size[0] // vc.patch_size[0]) ** 2 * model.config.downsample_ratio**2
    assert processor.image_seq_length == model.config.image_seq_length == int(per_tile) == 16
    assert model.config.text_config.num_hidden_layers == 2 and vc.num_hidden_layers == 2

    model, processor = loaded["qwen2vl"]
    tok = processor.tokenizer
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration" and model.config.model_type == "qwen2_vl"
    assert type(processor).__name__ == "Qwen2VLProcessor"
    assert type(tok).__name__ == "Qwen2Tokenizer"
    for attr, token in [
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
    ]:
        assert getattr(model.config, attr) == tok.convert_tokens_to_ids(token), attr
    assert processor.image_token == "<|image_pad|>" and processor.image_token_id == model.config.image_token_id
    assert model.config.vision_config.hidden_size == model.config.text_config.hidden_size
    assert model.config.text_config.num_hidden_layers == 2 and model.config.vision_config.depth == 2

    for name, (model, processor) in loaded.items():
        tok = processor.tokenizer
        n_params = sum(p.numel() for p in model.parameters())
        assert 50_000 < n_params < 1_000_000, (name, n_params)
        assert model.config.text_config.vocab_size == len(tok)
        gen = model.generation_config
        assert gen.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
        assert gen.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>") == tok.pad_token_id
        assert gen.eos_token_id != gen.pad_token_id


@pytest.mark.parametrize("name", list(MODELS))
def test_chat_template_renders(loaded, name):
    _, processor = loaded[name]
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert prompt == EXPECTED_PROMPT[name]
    no_gen = processor.apply_chat_template(MESSAGES, add_generation_prompt=False, tokenize=False)
    assert not no_gen.endswith("<|im_start|>assistant\n") and prompt.startswith(no_gen)
    # The tokenizer carries the same template (for text-only use).
    assert processor.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) == prompt
    # A full conversation with a system prompt and a string assistant answer.
    conversation = [
        {"role": "system", "content": "Bạn là trợ lý."},
        *MESSAGES,
        {"role": "assistant", "content": "<answer>đỏ</answer>"},
    ]
    rendered = processor.apply_chat_template(conversation, tokenize=False)
    assert rendered.startswith("<|im_start|>system\nBạn là trợ lý.<|im_end|>\n")
    assert rendered.endswith("<|im_start|>assistant\n<answer>đỏ</answer><|im_end|>\n")
    assert "You are a helpful assistant." not in rendered


def _expected_image_tokens(name, model, processor, inputs) -> int:
    if name == "internvl":  # pixel_values is (tiles, 3, H, W), tiles and thumbnail together
        return model.config.image_seq_length * inputs["pixel_values"].shape[0]
    merge = model.config.vision_config.spatial_merge_size
    return int(inputs["image_grid_thw"].prod(-1).sum()) // merge**2


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("size", [(64, 64), (117, 80)])
def test_processor_forward_generate(loaded, name, size):
    model, processor = loaded[name]
    tok = processor.tokenizer
    image = Image.new("RGB", size, (250, 250, 250))
    image.paste((220, 30, 30), (10, 10, 40, 40))
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")

    if name == "internvl":
        assert set(inputs) == {"input_ids", "attention_mask", "pixel_values"}
        vc = model.config.vision_config
        # dynamic tiling: a square picture is one 64-px tile; a 117x80 one a 2x2 grid and a thumbnail
        tiles = {(64, 64): 1, (117, 80): 5}[size]
        assert tuple(inputs["pixel_values"].shape) == (tiles, 3, *vc.image_size)
    else:
        assert set(inputs) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"}
        grid = inputs["image_grid_thw"]
        assert grid.shape == (1, 3) and int(grid[0, 0]) == 1
        vc = model.config.vision_config
        assert tuple(inputs["pixel_values"].shape) == (int(grid.prod()), 3 * vc.temporal_patch_size * vc.patch_size**2)
        is_image = inputs["input_ids"] == model.config.image_token_id
        assert torch.equal(inputs["mm_token_type_ids"] != 0, is_image)
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == _expected_image_tokens(name, model, processor, inputs)
    expected = {"internvl": {(64, 64): 16, (117, 80): 5 * 16}, "qwen2vl": {(64, 64): 16, (117, 80): 12}}
    assert n_image_tokens == expected[name][size]
    # Text around the image placeholder survives tokenization.
    text = tok.decode(inputs["input_ids"][0], skip_special_tokens=True)
    assert "Hình trong ảnh có màu gì?" in text

    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape == (1, inputs["input_ids"].shape[1], len(tok))
    assert torch.isfinite(out.logits).all()

    torch.manual_seed(0)
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=True)
    n_prompt = inputs["input_ids"].shape[1]
    assert generated.shape[0] == 1 and n_prompt < generated.shape[1] <= n_prompt + 8
    assert torch.equal(generated[0, :n_prompt], inputs["input_ids"][0])
    assert isinstance(tok.decode(generated[0, n_prompt:], skip_special_tokens=True), str)


@pytest.mark.parametrize("name", list(MODELS))
def test_batched_padded_forward(loaded, name):
    model, processor = loaded[name]
    images = [Image.new("RGB", (64, 64), (30, 70, 220)), Image.new("RGB", (80, 128), (240, 200, 20))]
    question = "Có bao nhiêu hình trong bức ảnh này?"
    long_messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompts = [
        processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in (MESSAGES, long_messages)
    ]
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True, padding_side="left")
    assert (inputs["attention_mask"][:, -1] == 1).all() and (inputs["attention_mask"][0] == 0).any()
    counts = (inputs["input_ids"] == model.config.image_token_id).sum(-1)
    if name == "internvl":
        # 1 tile, and a 1x2 grid with its thumbnail for the tall picture
        assert counts.tolist() == [16, 3 * 16] and inputs["pixel_values"].shape[0] == 1 + 3
    else:
        assert counts.tolist() == (inputs["image_grid_thw"].prod(-1) // 4).tolist()
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=True)
    assert generated.shape[0] == 2 and generated.shape[1] > inputs["input_ids"].shape[1]


# --------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_tokenizer_roundtrip_and_tags(loaded, name):
    tok = loaded[name][1].tokenizer
    assert 900 <= len(tok) <= 1000
    for text in VIETNAMESE:
        ids = tok(text, add_special_tokens=True)["input_ids"]
        assert tok.decode(ids) == text
        assert tok.decode(ids, skip_special_tokens=True) == text
    # NFD input is normalised to NFC (what the dataset uses).
    nfd = unicodedata.normalize("NFD", VIETNAMESE[0])
    assert nfd != VIETNAMESE[0] and tok.decode(tok(nfd)["input_ids"]) == VIETNAMESE[0]
    # Compression: the task vocabulary was learnt (far fewer tokens than UTF-8 bytes).
    assert len(tok("Hình tròn trong ảnh có màu đỏ")["input_ids"]) <= 8

    tag_ids = []
    for tag in da.ANSWER_TAGS:
        ids = tok(tag, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (tag, ids)
        assert tok.convert_ids_to_tokens(ids[0]) == tag
        tag_ids.append(ids[0])
    assert len(set(tag_ids)) == 6 and not set(tag_ids) & set(tok.all_special_ids)
    # Inside text the tags are still single tokens, and skip_special_tokens keeps them but drops <|im_end|>.
    text = "<think>ừ</think><answer>có</answer><explain>vì có hình tròn</explain>"
    ids = tok(text + "<|im_end|>")["input_ids"]
    assert sum(i in tag_ids for i in ids) == 6
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert special in tok.all_special_tokens
        assert len(tok(special)["input_ids"]) == 1


def test_tokenizers_share_bpe(loaded):
    vocab_i = loaded["internvl"][1].tokenizer.get_vocab()
    vocab_q = loaded["qwen2vl"][1].tokenizer.get_vocab()
    # Same training function and corpus: the BPE part (ids below the first special token) of the tokenizer with
    # more special tokens is an id-preserving prefix of the other (merges are learnt in the same order).
    n_bpe = min(vocab_i["<|endoftext|>"], vocab_q["<|endoftext|>"])
    assert n_bpe > 900
    assert {t: i for t, i in vocab_i.items() if i < n_bpe} == {t: i for t, i in vocab_q.items() if i < n_bpe}
    for vocab, specials in ((vocab_i, da.INTERNVL_SPECIAL_TOKENS.values()), (vocab_q, da.QWEN2VL_SPECIAL_TOKENS)):
        first_special = vocab["<|endoftext|>"]
        assert all(vocab[t] >= first_special for t in (*specials, "<|im_start|>", "<|im_end|>"))
        assert [vocab[t] for t in da.ANSWER_TAGS] == list(range(len(vocab) - 6, len(vocab)))


def test_train_tokenizer_deterministic():
    corpus = da.default_corpus(seed=3)
    a = da.train_tokenizer(corpus, vocab_size=600)
    b = da.train_tokenizer(list(reversed(corpus)), vocab_size=600)
    assert len(a) == 600
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    with pytest.raises(ValueError):
        da.train_tokenizer(corpus, vocab_size=200)
    with pytest.raises(ValueError):
        da.train_tokenizer(corpus, eos_token="<eos>")


# --------------------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------------------


def test_dataset_schema(records, assets):
    assert len(records["train"]) == NUM_TRAIN and len(records["val"]) == NUM_VAL
    question_ids = set()
    for split, coco in (("train", "train2014"), ("val", "val2014")):
        for r in records[split]:
            assert list(r) == list(da.VIVQAX_KEYS)
            assert all(isinstance(r[k], str) and r[k] for k in da.VIVQAX_KEYS if k != "explanation")
            assert isinstance(r["explanation"], list) and all(isinstance(e, str) and e for e in r["explanation"])
            assert re.fullmatch(r"[1-9]\d*", r["image_id"])
            assert r["image_name"] == f"COCO_{coco}_{int(r['image_id']):012d}.jpg"
            assert re.fullmatch(re.escape(r["image_id"]) + r"\d{3}", r["question_id"])
            assert r["answer_type"] in {"yes/no", "number", "other"}
            assert r["question_type"] in {"what color is the", "what is the", "is there a", "is this a", "how many"}
            assert r["question"].endswith("?") and r["question"][0].isupper()
            for s in (r["question"], r["answer"], *r["explanation"]):
                assert unicodedata.normalize("NFC", s) == s
            if split == "val":
                assert len(r["explanation"]) == 3 and len(set(r["explanation"])) == 3
            else:
                assert len(r["explanation"]) in (1, 2) and len(set(r["explanation"])) == len(r["explanation"])
            assert r["question_id"] not in question_ids
            question_ids.add(r["question_id"])
    assert any(len(r["explanation"]) == 2 for r in records["train"])
    train_ids = {r["image_id"] for r in records["train"]}
    assert not train_ids & {r["image_id"] for r in records["val"]}
    all_records = records["train"] + records["val"]
    assert {r["answer_type"] for r in all_records} == {"yes/no", "number", "other"}
    assert {"có", "không"} <= {r["answer"] for r in all_records}
    assert any(ch in "".join(r["question"] for r in all_records) for ch in "ảđơư")
    # The JSON is written like the published files: UTF-8, not ASCII-escaped, 2-space indent.
    raw = da.split_json_path(assets, "val").read_text(encoding="utf-8")
    assert raw.startswith('[\n  {\n    "question": ') and "\\u" not in raw


def _oracle(question: str, scene: dict) -> str:
    """Answer a generated question from the scene description alone."""
    shapes = scene["shapes"]
    names = {s["kind"]: da.SHAPES[s["kind"]] for s in shapes}
    by_name = {da.SHAPES[s["kind"]]: s for s in shapes}
    by_color = {s["color"]: s for s in shapes}
    if question == "Có bao nhiêu hình trong ảnh?":
        return str(len(shapes))
    if question == "Hình trong ảnh có màu gì?":
        (s,) = shapes
        return s["color"]
    if question == "Hình trong ảnh là hình gì?":
        (s,) = shapes
        return names[s["kind"]]
    if m := re.fullmatch(r"Hình màu (.+) trong ảnh là hình gì\?", question):
        return da.SHAPES[by_color[m[1]]["kind"]]
    if m := re.fullmatch(r"Trong ảnh có hình nào màu (.+) không\?", question):
        return "có" if m[1] in by_color else "không"
    if m := re.fullmatch(r"Trong ảnh có (hình .+) không\?", question):
        return "có" if m[1] in by_name else "không"
    if m := re.fullmatch(r"Đây có phải là (hình .+) không\?", question):
        (s,) = shapes
        return "đúng" if names[s["kind"]] == m[1] else "không"
    if m := re.fullmatch(r"(Hình .+) trong ảnh có màu gì\?", question):
        return by_name[m[1].lower()]["color"]
    raise AssertionError(f"unexpected question {question!r}")


def test_answers_match_scenes(records, scenes):
    referenced = {r["image_name"] for split in records.values() for r in split}
    assert set(scenes) == referenced
    for r in records["train"] + records["val"]:
        scene = scenes[r["image_name"]]
        assert 1 <= len(scene["shapes"]) <= 3
        assert r["answer"] == _oracle(r["question"], scene), r
        if r["answer_type"] == "number":
            assert r["answer"] == str(len(scene["shapes"]))
        if r["answer_type"] == "other":  # colour / shape answers are stated in every explanation
            assert all(r["answer"] in e for e in r["explanation"]), r
        for e in r["explanation"]:  # every colour mentioned is one of the picture's colours
            for color in da.COLORS:
                if f"màu {color}" in e and f"không có hình nào màu {color}" not in e and "không có màu" not in e:
                    assert color in {s["color"] for s in scene["shapes"]}, (e, scene)


def test_images_match_scenes(records, scenes, assets):
    for split in ("train", "val"):
        folder = da.image_dir(assets, split)
        names = {r["image_name"] for r in records[split]}
        assert {p.name for p in folder.iterdir()} == names
        for name in names:
            scene = scenes[name]
            with Image.open(folder / name) as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                assert im.size == (scene["width"], scene["height"])
                assert 64 <= im.width <= 128 and 64 <= im.height <= 128
                im.load()
                px = im.load()
                assert _close(px[0, 0], scene["background"]), (name, px[0, 0])
                for s in scene["shapes"]:
                    assert _close(px[tuple(s["center"])], da.COLORS[s["color"]]), (name, s)
                    x0, y0, x1, y1 = s["bbox"]
                    assert 0 <= x0 < x1 < scene["width"] and 0 <= y0 < y1 < scene["height"]
                    assert x1 - x0 >= 13 and y1 - y0 >= 13
            # shapes do not overlap
            boxes = [s["bbox"] for s in scene["shapes"]]
            for i, a in enumerate(boxes):
                for b in boxes[i + 1 :]:
                    assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


def _close(rgb, expected, tol=40) -> bool:
    return all(abs(int(c) - int(e)) <= tol for c, e in zip(rgb, expected, strict=True))


# --------------------------------------------------------------------------------------------------------------
# Determinism and the .complete marker
# --------------------------------------------------------------------------------------------------------------


def test_same_seed_is_identical(assets, assets_again):
    for pattern in ("*.json", "*.jinja", "*.jpg"):
        a, b = _files(assets, pattern), _files(assets_again, pattern)
        assert a.keys() == b.keys() and a, pattern
        assert a == b, pattern
    assert (assets / ".complete").read_bytes() == (assets_again / ".complete").read_bytes()
    for path_fn in MODELS.values():
        sd_a, sd_b = _state_dict(path_fn(assets)), _state_dict(path_fn(assets_again))
        assert sd_a.keys() == sd_b.keys()
        assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_different_seed_differs(assets, assets_seed1):
    for split in ("train", "val"):
        assert da.split_json_path(assets, split).read_bytes() != da.split_json_path(assets_seed1, split).read_bytes()
    for path_fn in MODELS.values():
        sd_a, sd_b = _state_dict(path_fn(assets)), _state_dict(path_fn(assets_seed1))
        assert sd_a.keys() == sd_b.keys()
        assert not all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_complete_marker_skip_and_force(assets_seed1, capsys):
    weights = da.internvl_path(assets_seed1) / "model.safetensors"
    before = weights.stat().st_mtime_ns
    data_before = _files(assets_seed1 / "data", "*.json")

    assert da.main(["--out", str(assets_seed1), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "up to date" in out
    assert weights.stat().st_mtime_ns == before

    extra = assets_seed1 / "keep-me.txt"  # files of others under --out survive a rebuild
    extra.write_text("x")
    assert da.main(["--out", str(assets_seed1), "--seed", "1", "--force", "--num-val", str(NUM_VAL)]) == 0
    out = capsys.readouterr().out
    assert str(da.internvl_path(assets_seed1)) in out and str(da.qwen2vl_path(assets_seed1)) in out
    assert str(da.internvl_cold_start_path(assets_seed1)) in out
    assert "parameters" in out and "vocab 1000" in out
    assert f"{NUM_TRAIN} samples" in out and f"{NUM_VAL} samples" in out
    assert weights.stat().st_mtime_ns != before
    assert _files(assets_seed1 / "data", "*.json") == data_before
    assert extra.read_text() == "x" and da.is_complete(assets_seed1)
    assert not list(assets_seed1.glob(".staging-*"))


def test_interrupted_build_leaves_no_marker(tmp_path, monkeypatch):
    root = tmp_path / "out"
    (root / "models").mkdir(parents=True)
    (root / ".complete").write_text("{}")  # a stale marker is removed before rebuilding

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("grpo_demo.build.build_tiny_qwen2vl", boom)
    with pytest.raises(KeyboardInterrupt):
        da.build_demo_assets(root, num_train=4, num_val=2, force=True)
    assert not da.is_complete(root)
    assert not list(root.glob(".staging-*"))
    assert not da.internvl_path(root).exists() and not da.data_dir(root).exists()

    # Without a marker, a plain (non --force) build does rebuild.
    monkeypatch.undo()
    meta = da.build_demo_assets(root, num_train=4, num_val=2)
    assert meta["skipped"] is False and da.is_complete(root)
    assert meta["data"]["num_train"] == 4 and meta["data"]["num_val"] == 2
    assert len(json.loads(da.split_json_path(root, "val").read_text())) == 2
    assert da.build_demo_assets(root, num_train=4, num_val=2)["skipped"] is True


# --------------------------------------------------------------------------------------------------------------
# Builders with other sizes
# --------------------------------------------------------------------------------------------------------------


def test_builder_size_parameters(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    corpus = da.default_corpus(seed=0)
    rng_state = torch.random.get_rng_state()
    path = da.build_tiny_internvl(
        tmp_path / "ivl",
        seed=5,
        corpus=corpus,
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_patches=4,
        vocab_size=800,
    )
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the global RNG is untouched
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert processor.image_seq_length == model.config.image_seq_length == 4
    assert len(processor.tokenizer) == model.config.text_config.vocab_size == 800
    # A wide picture is cut into 2 tiles + a thumbnail when max_patches > 1.
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[Image.new("RGB", (64, 32), (1, 2, 3))], text=[prompt], return_tensors="pt")
    assert inputs["pixel_values"].shape == (3, 3, 32, 32)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 3 * 4
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()

    path = da.build_tiny_qwen2vl(
        tmp_path / "qvl",
        seed=5,
        corpus=corpus,
        hidden_size=96,
        num_attention_heads=4,
        patch_size=4,
        min_pixels=16 * 16,
        max_pixels=32 * 32,
    )
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert model.config.text_config.rope_parameters["mrope_section"] == [3, 4, 5]
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[Image.new("RGB", (64, 64), (1, 2, 3))], text=[prompt], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 16
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_the_cold_start_examples_are_well_formed_with_their_content_drawn_at_random():
    from grpo_demo.cold_start import SCENE_SEED_OFFSET
    from grpo_lightning.task import is_well_formed, parse_completion

    examples = da.format_examples(seed=0, num_examples=64)
    assert len(examples) == 64 and all(is_well_formed(e["completion"]) for e in examples)
    answers = [parse_completion(e["completion"]).answer for e in examples]
    assert len(set(answers)) >= 8  # drawn over the distinct answers, not only the most common ones
    # none of its pictures is one of the demo dataset's
    splits, _ = da.make_dataset(seed=0, num_train=NUM_TRAIN, num_val=NUM_VAL)
    demo_questions = {(r["image_name"], r["question"]) for split in splits.values() for r in split}
    cold_splits, _ = da.make_dataset(seed=SCENE_SEED_OFFSET, num_train=64, num_val=0)
    assert not demo_questions & {(r["image_name"], r["question"]) for r in cold_splits["train"]}


def test_the_cold_start_model_writes_the_format_and_the_random_one_does_not(assets):
    """The model `configs/demo.yaml` trains: greedy on the demo's validation questions it writes the strict format
    (measured: every one of 16), and so do most of its samples at temperature 1 (measured: 0.64); the random
    model it started from, none."""
    from transformers import AutoModelForImageTextToText

    from grpo_lightning.adapters import load_adapter
    from grpo_lightning.data import read_samples
    from grpo_lightning.task import DEFAULT_PROMPT_TEMPLATE, is_well_formed, render_prompt

    samples, _ = read_samples(da.split_json_path(assets, "val"))
    images = [Image.open(da.image_dir(assets, "val") / s.image).convert("RGB") for s in samples]
    prompts = [render_prompt(DEFAULT_PROMPT_TEMPLATE, s.question) for s in samples]
    shares = {}
    for name, path in (("random", da.internvl_path(assets)), ("cold start", da.internvl_cold_start_path(assets))):
        adapter, _ = load_adapter(str(path))
        model = AutoModelForImageTextToText.from_pretrained(str(path)).eval()
        batch = adapter.prepare_prompts(images, prompts)
        for mode, repeats, sampling in (("greedy", 1, {"do_sample": False}), ("sampled", 4, {"do_sample": True})):
            index = list(range(len(samples))) * repeats
            torch.manual_seed(0)
            with torch.no_grad():
                ids = model.generate(
                    **batch.token_inputs(index), **batch.visual_for(index), max_new_tokens=32, **sampling
                )[:, batch.input_ids.shape[1] :]
            texts = adapter.tokenizer.batch_decode(ids, skip_special_tokens=True)
            shares[name, mode] = sum(is_well_formed(text) for text in texts) / len(texts)
    assert shares["random", "greedy"] == shares["random", "sampled"] == 0.0, shares
    assert shares["cold start", "greedy"] >= 0.75 and shares["cold start", "sampled"] >= 0.3, shares
