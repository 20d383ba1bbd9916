"""Tests of grpo_lightning.convert_internvl: remote-code ``internvl_chat`` checkpoints -> native InternVL.

Each test writes its own tiny checkpoint in the remote-code layout (config.json with ``llm_config``/``vision_config``,
random weights under the ``vision_model.*``/``mlp1.*``/``language_model.*`` names, a Qwen2-style tokenizer with
``<img>``, ``</img>``, ``<IMG_CONTEXT>`` and a chat template for string contents only). The original remote code is
not available offline and is not copied here, so :func:`reference_logits` is an independent minimal forward pass
of InternVLChatModel written from its published description: InternViT (patch convolution, class token, position
embedding resized bicubically to the tile grid, pre-norm blocks with a fused qkv projection, optional q/k RMSNorm,
layer scale), the class token dropped, the 'v2' pixel shuffle written as 2x2 block gathering, the ``mlp1``
projector, the ``<IMG_CONTEXT>`` embeddings replaced, then Qwen2 (transformers' ``Qwen2ForCausalLM`` on the
``language_model.*`` weights). The converted native model must give the same logits. Nothing is downloaded.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

import grpo_demo as da
from grpo_lightning.convert_internvl import (
    INTERNVL_CHAT_TEMPLATE,
    ConversionError,
    convert,
    is_remote_code_internvl,
    main,
    remote_code_message,
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>")
#: A chat template in the style of the original releases: string contents only, a default system message.
STRING_ONLY_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nBạn là một trợ lý AI.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PROMPT = "Hình trong ảnh có màu gì?"
PATCH, TILE, VISION_HIDDEN, VISION_HEADS, LLM_HIDDEN = 8, 64, 32, 2, 64

#: Two vision variants: InternViT-300M-like (InternVL2.5/3-1B, Vintern-1B) and InternViT-6B-like; the second also
#: picks an earlier layer, stores 32-px position embeddings for 64-px tiles, ties the word embeddings and shards.
VARIANTS = {
    "vit300m": {
        "vision": {"norm_type": "layer_norm", "qkv_bias": True, "qk_normalization": False, "image_size": TILE},
        "chat": {"select_layer": -1, "dynamic_image_size": True, "use_thumbnail": True, "max_dynamic_patch": 4},
        "tied": False,
        "weights": "safetensors",
    },
    "vit6b": {
        "vision": {"norm_type": "rms_norm", "qkv_bias": False, "qk_normalization": True, "image_size": 32},
        "chat": {"select_layer": -2, "dynamic_image_size": False, "use_thumbnail": False, "max_dynamic_patch": 6},
        "tied": True,
        "weights": "sharded",
    },
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def source_tokenizer():
    """The tokenizer of the remote-code checkpoints: no named image tokens, no <video>, a string-only template."""
    return da.train_tokenizer(
        da.default_corpus(seed=0), special_tokens=SPECIAL_TOKENS, vocab_size=600, chat_template=STRING_ONLY_TEMPLATE
    )


# --------------------------------------------------------------------------------------------------------------
# Writing a remote-code checkpoint
# --------------------------------------------------------------------------------------------------------------


def remote_config(variant: str, vocab_size: int, context_id: int, **overrides) -> dict:
    spec = VARIANTS[variant]
    llm_config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": LLM_HIDDEN,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": {"factor": 2.0, "rope_type": "dynamic", "type": "dynamic"},
        "layer_types": ["full_attention", "full_attention"],
        "max_window_layers": 70,
        "sliding_window": None,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "tie_word_embeddings": spec["tied"],
        "torch_dtype": "float32",
        "use_bfloat16": False,
        "attn_implementation": "eager",
        "moe_config": None,
    }
    vision_config = {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "hidden_size": VISION_HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": VISION_HEADS,
        "num_channels": 3,
        "patch_size": PATCH,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "drop_path_rate": 0.1,
        "initializer_factor": 0.1,
        "initializer_range": 0.02,
        "use_flash_attn": False,
        **spec["vision"],
    }
    config = {
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
        },
        "model_type": "internvl_chat",
        "downsample_ratio": 0.5,
        "force_image_size": TILE,
        "ps_version": "v2",
        "template": "internvl2_5",
        "min_dynamic_patch": 1,
        "img_context_token_id": context_id,
        "llm_config": llm_config,
        "vision_config": vision_config,
        **spec["chat"],
    }
    config.update(overrides)
    return config


def random_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the remote-code names, at sizes that make every mapping mistake visible."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2, offset=0.0):
        return torch.randn(*shape, generator=gen) * scale + offset

    v = config["vision_config"]
    d, inter, grid = v["hidden_size"], v["intermediate_size"], v["image_size"] // v["patch_size"]
    w = {
        "vision_model.embeddings.class_embedding": rand(1, 1, d, scale=1.0),
        "vision_model.embeddings.position_embedding": rand(1, grid * grid + 1, d, scale=1.0),
        "vision_model.embeddings.patch_embedding.weight": rand(d, 3, PATCH, PATCH, scale=0.1),
        "vision_model.embeddings.patch_embedding.bias": rand(d, scale=0.1),
    }
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        w[p + "attn.qkv.weight"] = rand(3 * d, d)
        if v["qkv_bias"]:
            w[p + "attn.qkv.bias"] = rand(3 * d, scale=0.1)
        if v["qk_normalization"]:
            w[p + "attn.q_norm.weight"] = rand(d, scale=0.1, offset=1.0)
            w[p + "attn.k_norm.weight"] = rand(d, scale=0.1, offset=1.0)
        w[p + "attn.proj.weight"], w[p + "attn.proj.bias"] = rand(d, d), rand(d, scale=0.1)
        for norm in ("norm1", "norm2"):
            w[f"{p}{norm}.weight"] = rand(d, scale=0.1, offset=1.0)
            if v["norm_type"] == "layer_norm":
                w[f"{p}{norm}.bias"] = rand(d, scale=0.1)
        w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"] = rand(inter, d), rand(inter, scale=0.1)
        w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"] = rand(d, inter, scale=0.15), rand(d, scale=0.1)
        w[p + "ls1"], w[p + "ls2"] = rand(d, scale=0.2, offset=0.5), rand(d, scale=0.2, offset=0.5)
    shuffled, hidden = d * 4, config["llm_config"]["hidden_size"]
    w["mlp1.0.weight"], w["mlp1.0.bias"] = rand(shuffled, scale=0.1, offset=1.0), rand(shuffled, scale=0.1)
    w["mlp1.1.weight"], w["mlp1.1.bias"] = rand(hidden, shuffled, scale=0.1), rand(hidden, scale=0.1)
    w["mlp1.3.weight"], w["mlp1.3.bias"] = rand(hidden, hidden, scale=0.15), rand(hidden, scale=0.1)
    with torch.device("meta"):
        lm = Qwen2ForCausalLM(Qwen2Config(**llm_kwargs(config)))
    for name, tensor in lm.state_dict().items():
        if name == "lm_head.weight" and config["llm_config"]["tie_word_embeddings"]:
            continue
        is_norm = name.endswith("norm.weight")
        w[f"language_model.{name}"] = rand(*tensor.shape, scale=0.1, offset=1.0 if is_norm else 0.0)
    return w


def llm_kwargs(config: dict) -> dict:
    drop = ("architectures", "torch_dtype", "use_bfloat16", "attn_implementation", "moe_config")
    return {k: v for k, v in config["llm_config"].items() if k not in drop}


def write_remote_checkpoint(root: Path, tokenizer, variant: str = "vit300m", *, weights_format=None, **overrides):
    """Write a remote-code checkpoint (config, weights, tokenizer) at ``root``; returns (config, weights)."""
    root.mkdir(parents=True, exist_ok=True)
    config = remote_config(variant, len(tokenizer), tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), **overrides)
    weights = random_weights(config)
    (root / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tokenizer.save_pretrained(root)
    fmt = weights_format or VARIANTS[variant]["weights"]
    if fmt == "safetensors":
        save_file(weights, str(root / "model.safetensors"))
    elif fmt == "sharded":
        names = sorted(weights)
        shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        for file, keys in shards.items():
            save_file({k: weights[k] for k in keys}, str(root / file))
        index = {"metadata": {}, "weight_map": {k: file for file, keys in shards.items() for k in keys}}
        (root / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    else:
        torch.save(weights, root / "pytorch_model.bin")
    return config, weights


# --------------------------------------------------------------------------------------------------------------
# Independent reference forward of the remote-code InternVLChatModel
# --------------------------------------------------------------------------------------------------------------


def _norm(x, w, prefix, kind, eps):
    if kind == "layer_norm":
        return F.layer_norm(x, x.shape[-1:], w[prefix + ".weight"], w[prefix + ".bias"], eps)
    return w[prefix + ".weight"] * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def reference_vision_features(w: dict, config: dict, pixel_values: torch.Tensor) -> torch.Tensor:
    """(tiles, 3, H, W) -> (tiles, image tokens, LLM hidden): InternViT, pixel shuffle v2 and mlp1."""
    v = config["vision_config"]
    kind, eps, heads = v["norm_type"], v["layer_norm_eps"], v["num_attention_heads"]
    pre = "vision_model.embeddings."
    x = F.conv2d(pixel_values, w[pre + "patch_embedding.weight"], w[pre + "patch_embedding.bias"], stride=PATCH)
    tiles, d, rows, cols = x.shape
    x = torch.cat([w[pre + "class_embedding"].expand(tiles, 1, d), x.flatten(2).transpose(1, 2)], dim=1)
    stored = v["image_size"] // PATCH
    pos = w[pre + "position_embedding"]
    grid = pos[:, 1:].reshape(1, stored, stored, d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
    x = x + torch.cat([pos[:, :1], grid.reshape(1, d, rows * cols).transpose(1, 2)], dim=1)
    hidden_states = [x]
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        h = _norm(x, w, p + "norm1", kind, eps)
        q, k, val = F.linear(h, w[p + "attn.qkv.weight"], w.get(p + "attn.qkv.bias")).split(d, dim=-1)
        if v["qk_normalization"]:  # over all heads at once, before the split into heads
            q, k = _norm(q, w, p + "attn.q_norm", "rms_norm", eps), _norm(k, w, p + "attn.k_norm", "rms_norm", eps)
        q, k, val = (t.reshape(tiles, -1, heads, d // heads).transpose(1, 2) for t in (q, k, val))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // heads)
        attended = (scores.softmax(-1) @ val).transpose(1, 2).reshape(tiles, -1, d)
        x = x + F.linear(attended, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"]) * w[p + "ls1"]
        h = _norm(x, w, p + "norm2", kind, eps)
        h = F.linear(F.gelu(F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"])), w[p + "mlp.fc2.weight"])
        x = x + (h + w[p + "mlp.fc2.bias"]) * w[p + "ls2"]
        hidden_states.append(x)
    features = hidden_states[config["select_layer"]][:, 1:].reshape(tiles, rows, cols, d)
    # Pixel shuffle 'v2' with ratio 0.5: output (r, c) holds the 2x2 block at rows 2r..2r+1, columns 2c..2c+1, in
    # the order (2r, 2c), (2r, 2c+1), (2r+1, 2c), (2r+1, 2c+1).
    blocks = [features[:, dr::2, dc::2] for dr in (0, 1) for dc in (0, 1)]
    shuffled = torch.cat(blocks, dim=-1).reshape(tiles, (rows // 2) * (cols // 2), 4 * d)
    h = F.layer_norm(shuffled, shuffled.shape[-1:], w["mlp1.0.weight"], w["mlp1.0.bias"], 1e-5)
    h = F.gelu(F.linear(h, w["mlp1.1.weight"], w["mlp1.1.bias"]))
    return F.linear(h, w["mlp1.3.weight"], w["mlp1.3.bias"])


def reference_logits(w: dict, config: dict, pixel_values, input_ids, context_id: int) -> torch.Tensor:
    """Logits (1, T, vocab) of the remote-code model on one prompt."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    lm = Qwen2ForCausalLM(Qwen2Config(**llm_kwargs(config))).eval()
    missing, unexpected = lm.load_state_dict(
        {k.removeprefix("language_model."): t for k, t in w.items() if k.startswith("language_model.")}, strict=False
    )
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    if config["llm_config"]["tie_word_embeddings"]:
        assert torch.equal(lm.lm_head.weight, w["language_model.model.embed_tokens.weight"])
    with torch.no_grad():
        embeds = lm.get_input_embeddings()(input_ids).clone()
        vision = reference_vision_features(w, config, pixel_values)
        embeds[input_ids == context_id] = vision.reshape(-1, vision.shape[-1])
        return lm(inputs_embeds=embeds).logits


def reference_tile_count(width: int, height: int, max_num: int, use_thumbnail: bool, tile: int = TILE) -> int:
    """Tiles of InternVL's dynamic preprocessing: the closest aspect ratio of at most ``max_num`` tiles (ties go to
    more tiles when the image is large enough), plus a thumbnail when there is more than one tile."""
    ratios = sorted(
        {(i, j) for i in range(1, max_num + 1) for j in range(1, max_num + 1) if i * j <= max_num},
        key=lambda r: r[0] * r[1],
    )
    best, best_diff = (1, 1), float("inf")
    for cols, rows in ratios:
        diff = abs(width / height - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    blocks = best[0] * best[1]
    return blocks + (1 if use_thumbnail and blocks != 1 else 0)


# --------------------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_converted_model_matches_the_remote_code_forward(tmp_path, source_tokenizer, variant):
    config, weights = write_remote_checkpoint(tmp_path / "remote", source_tokenizer, variant)
    dst = convert(tmp_path / "remote", tmp_path / "native")
    processor = AutoProcessor.from_pretrained(dst)
    model = AutoModelForImageTextToText.from_pretrained(dst, dtype=torch.float32).eval()
    assert type(model).__name__ == "InternVLForConditionalGeneration"

    image = Image.new("RGB", (128, 64), (200, 40, 40))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == f"<|im_start|>user\n<IMG_CONTEXT>\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    tiles = inputs["pixel_values"].shape[0]
    chat = VARIANTS[variant]["chat"]
    expected_tiles = reference_tile_count(128, 64, chat["max_dynamic_patch"], chat["use_thumbnail"])
    if not chat["dynamic_image_size"]:
        expected_tiles = 1
    assert inputs["pixel_values"].shape[1:] == (3, TILE, TILE)
    assert tiles == expected_tiles
    context_id = source_tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    num_image_token = int((TILE // PATCH) ** 2 * 0.5**2)  # InternVLChatModel.num_image_token
    assert int((inputs["input_ids"] == context_id).sum()) == tiles * num_image_token

    expected = reference_logits(weights, config, inputs["pixel_values"], inputs["input_ids"], context_id)
    with torch.no_grad():
        logits = model(**inputs).logits
    vocab = len(source_tokenizer)
    assert logits.shape[-1] == vocab + 1  # <video> was added
    assert torch.equal(logits[..., vocab:], torch.zeros_like(logits[..., vocab:]))
    max_diff = (logits[..., :vocab] - expected).abs().max().item()
    assert expected.abs().max() > 1.0  # non-trivial logits
    print(f"\n{variant}: max abs logit difference {max_diff:.3e}, max |logit| {expected.abs().max():.2f}")
    assert max_diff < 1e-5, f"max abs logit difference {max_diff}"


def test_processor_tiles_images_like_dynamic_preprocessing(tmp_path, source_tokenizer):
    write_remote_checkpoint(tmp_path / "remote", source_tokenizer)  # dynamic, up to 4 tiles, thumbnail
    processor = AutoProcessor.from_pretrained(convert(tmp_path / "remote", tmp_path / "native"))
    context_id = source_tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    for width, height in [(64, 64), (128, 64), (64, 128), (200, 60), (50, 210), (300, 290), (129, 100)]:
        inputs = processor(text=["<IMG_CONTEXT>"], images=[Image.new("RGB", (width, height))], return_tensors="pt")
        tiles = reference_tile_count(width, height, max_num=4, use_thumbnail=True)
        assert inputs["pixel_values"].shape[0] == tiles, (width, height)
        assert int((inputs["input_ids"] == context_id).sum()) == tiles * 16, (width, height)


def test_converted_checkpoint_trains_with_the_internvl_adapter(tmp_path, source_tokenizer):
    from grpo_lightning.adapters import build_adapter

    write_remote_checkpoint(tmp_path / "remote", source_tokenizer)
    dst = convert(tmp_path / "remote", tmp_path / "native")
    config = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "internvl" and config["vision_feature_layer"] == -1
    assert config["image_seq_length"] == 16 and config["downsample_ratio"] == 0.5
    assert config["text_config"]["rope_parameters"]["rope_type"] == "dynamic"
    tokenizer_config = json.loads((dst / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert "local_files_only" not in tokenizer_config and "auto_map" not in tokenizer_config
    processor = AutoProcessor.from_pretrained(dst)
    tokenizer = processor.tokenizer
    assert (tokenizer.start_image_token, tokenizer.end_image_token) == ("<img>", "</img>")
    assert (tokenizer.context_image_token, tokenizer.video_token) == ("<IMG_CONTEXT>", "<video>")
    assert tokenizer.convert_tokens_to_ids("<video>") == len(source_tokenizer)
    assert "<|im_start|>" in tokenizer.all_special_tokens  # the source's other special tokens stay special
    image_processor = processor.image_processor
    assert image_processor.image_mean == pytest.approx([0.485, 0.456, 0.406])
    assert image_processor.image_std == pytest.approx([0.229, 0.224, 0.225])
    assert (image_processor.crop_to_patches, image_processor.max_patches) == (True, 4)

    model = AutoModelForImageTextToText.from_pretrained(dst, dtype=torch.float32).eval()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.eos_token_id == im_end
    assert model.generation_config.suppress_tokens == [len(source_tokenizer)]

    adapter = build_adapter(config["model_type"], processor)
    prompts = adapter.prepare_prompts([Image.new("RGB", (96, 64), (30, 70, 220))], [PROMPT])
    completions = adapter.generate(model, prompts, [0, 0], max_new_tokens=3, do_sample=True, temperature=1.0)
    assert completions.shape[0] == 2 and 1 <= completions.shape[1] <= 3
    mask = torch.ones_like(completions)
    logps, _ = adapter.completion_logps(model, prompts, [0, 0], completions, mask)
    assert torch.isfinite(logps).all() and (logps < 0).all()


def test_cli_writes_a_checkpoint_and_refuses_to_overwrite(tmp_path, source_tokenizer, capsys):
    src, dst = tmp_path / "Vintern-1B-v3_5", tmp_path / "Vintern-1B-v3_5-hf"
    _, weights = write_remote_checkpoint(src, source_tokenizer, weights_format="bin")
    assert main([str(src), str(dst), "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert str(dst) in out and "model.safetensors" in out and "16 image tokens per tile" in out
    model = AutoModelForImageTextToText.from_pretrained(dst)
    assert model.dtype == torch.bfloat16
    layer = model.model.vision_tower.encoder.layer[1]
    qkv = weights["vision_model.encoder.layers.1.attn.qkv.weight"].to(torch.bfloat16)
    assert torch.equal(layer.attention.k_proj.weight, qkv[VISION_HIDDEN : 2 * VISION_HIDDEN])
    assert torch.equal(layer.lambda_2, weights["vision_model.encoder.layers.1.ls2"].to(torch.bfloat16))

    assert main([str(src), str(dst)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main([str(src), str(dst), "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("extra", r"1 tensor\(s\).*vision_model\.encoder\.layers\.0\.attn\.qkv\.lora_A\.weight.*Merge adapters"),
        ("missing", r"missing 1: model\.multi_modal_projector\.linear_1\.bias"),
    ],
)
def test_unmapped_or_missing_weights_stop_the_conversion(tmp_path, source_tokenizer, edit, message):
    src = tmp_path / "remote"
    _, weights = write_remote_checkpoint(src, source_tokenizer)
    if edit == "extra":
        weights["vision_model.encoder.layers.0.attn.qkv.lora_A.weight"] = torch.zeros(4, VISION_HIDDEN)
    else:
        del weights["mlp1.1.bias"]
    save_file(weights, str(src / "model.safetensors"))
    with pytest.raises(ConversionError, match=message):
        convert(src, tmp_path / "native")
    assert not (tmp_path / "native").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"llm_config": {"architectures": ["InternLM2ForCausalLM"]}},
            r"InternLM2ForCausalLM language model; only Qwen2ForCausalLM .* official '-hf' release",
        ),
        ({"ps_version": "v1"}, r"ps_version 'v1'.*only 'v2'"),
    ],
)
def test_unsupported_checkpoints_are_refused_with_a_reason(tmp_path, source_tokenizer, overrides, message):
    src = tmp_path / "remote"
    src.mkdir()
    config = remote_config("vit300m", len(source_tokenizer), 0)
    for key, value in overrides.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (src / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ConversionError, match=message):
        convert(src, tmp_path / "native")


def test_layout_detection_and_the_message_to_the_user(tmp_path, source_tokenizer, assets):
    remote = tmp_path / "Vintern-1B-v3_5"
    write_remote_checkpoint(remote, source_tokenizer)
    native = da.internvl_path(assets)
    assert is_remote_code_internvl(remote) is True
    assert is_remote_code_internvl(str(remote)) is True
    assert is_remote_code_internvl(native) is False
    assert is_remote_code_internvl(tmp_path / "no-such-model") is False
    assert is_remote_code_internvl("5CD-AI/Vintern-1B-v3_5-not-in-cache") is False

    message = remote_code_message(remote)
    assert f"python -m grpo_lightning.convert_internvl {remote} {tmp_path / 'Vintern-1B-v3_5-hf'}" in message
    assert "internvl_chat" in message and "model_name_or_path" in message
    assert "checkpoints/Vintern-1B-v3_5-hf" in remote_code_message("5CD-AI/Vintern-1B-v3_5")
    with pytest.raises(ConversionError, match="needs no conversion"):
        convert(native, tmp_path / "out")


def test_a_source_chat_template_that_renders_images_is_kept(tmp_path):
    template = INTERNVL_CHAT_TEMPLATE.replace(
        "{% for message in messages %}",
        "{{ '<|im_start|>system\\nBạn là Vintern.<|im_end|>\\n' }}{% for message in messages %}",
        1,
    )
    tokenizer = da.train_tokenizer(
        da.default_corpus(seed=0), special_tokens=SPECIAL_TOKENS, vocab_size=600, chat_template=template
    )
    write_remote_checkpoint(tmp_path / "remote", tokenizer)
    processor = AutoProcessor.from_pretrained(convert(tmp_path / "remote", tmp_path / "native"))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nBạn là Vintern.<|im_end|>\n<|im_start|>user\n<IMG_CONTEXT>\n")


def test_a_source_that_is_neither_a_folder_nor_a_cached_hub_checkpoint(tmp_path):
    with pytest.raises(ConversionError, match="is not a local folder"):
        convert("5CD-AI/Vintern-1B-v3_5-not-in-cache", tmp_path / "native")


def test_training_a_remote_code_checkpoint_points_to_the_converter(tmp_path, source_tokenizer):
    """The module refuses the remote-code layout up front, with the exact command, instead of a loader error."""
    from grpo_lightning.config import SamplingConfig
    from grpo_lightning.module import GRPOModule

    remote = tmp_path / "InternVL3-1B"
    write_remote_checkpoint(remote, source_tokenizer)
    module = GRPOModule(model_name_or_path=str(remote), sampling=SamplingConfig(num_generations=2))
    with pytest.raises(ValueError) as error:
        module.configure_model()
    assert str(error.value) == remote_code_message(remote)
    assert f"python -m grpo_lightning.convert_internvl {remote} {tmp_path / 'InternVL3-1B-hf'}" in str(error.value)
