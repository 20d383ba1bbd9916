"""Prompts that leave no room for a completion in the model's context are found before the weights load.

The fast count (text through the chat template, image tokens from the image's size) must be the processor's own count
on real pixels, for every family and resolution; the data module refuses, or leaves out, the samples over the limit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

import grpo_demo
from grpo_lightning.adapters import load_adapter
from grpo_lightning.config import ImageConfig, SamplingConfig
from grpo_lightning.data import DataValidationError, ViVQAXDataModule
from grpo_lightning.export import export_model
from grpo_lightning.images import loaded_size
from grpo_lightning.module import GRPOModule
from grpo_lightning.prompt_length import PromptLengthCheck, check_prompt_lengths
from tests.helpers import FAMILY_SUBDIRS, ROOT, recorded_training_steps, run_cli

PROMPTS = [
    "Con mèo đang nằm ở đâu? Trả lời ngắn gọn rồi giải thích vì sao.",
    "Có bao nhiêu chiếc ô tô màu đỏ trên đường phố đông đúc này?",
]
#: (width, height): square, wide, tall, a camera's 4:3, tiny, a strip, nearly square.
IMAGE_SIZES = [(64, 64), (200, 50), (33, 190), (640, 480), (17, 17), (500, 20), (130, 129)]
#: Resolutions per family: the checkpoint's, and others that change the image token counts.
RESOLUTIONS = {
    "internvl": [{}, {"max_patches": 2}, {"crop_to_patches": False}],
    "qwen2_vl": [{}, {"min_pixels": 64 * 64, "max_pixels": 128 * 128}],
    "qwen2_5_vl": [{}, {"min_pixels": 16 * 16, "max_pixels": 40 * 40}],
}
CASES = [(family, options) for family, settings in RESOLUTIONS.items() for options in settings]


@pytest.mark.parametrize(("family", "options"), CASES)
def test_the_fast_count_is_the_processors_count_on_real_pixels(assets, family, options):
    adapter, _ = load_adapter(str(assets / FAMILY_SUBDIRS[family]), **options)
    pairs = [(prompt, size) for prompt in PROMPTS for size in IMAGE_SIZES]
    real = [
        adapter.prepare_prompts([Image.new("RGB", size, (200, 90, 30))], [prompt]).input_ids.shape[1]
        for prompt, size in pairs
    ]
    fast = adapter.prompt_token_counts([p for p, _ in pairs], [s for _, s in pairs])
    assert fast == real
    assert len(set(real)) >= 2  # a test that would pass with a constant count would prove little


def test_the_configured_resolution_changes_the_count(assets):
    path = str(assets / FAMILY_SUBDIRS["internvl"])
    wide = (200, 50)
    tiled = load_adapter(path)[0].prompt_token_counts(PROMPTS[:1], [wide])[0]
    single = load_adapter(path, crop_to_patches=False)[0].prompt_token_counts(PROMPTS[:1], [wide])[0]
    tokens_per_tile = 16  # the tiny InternVL: 64-px tiles of 8-px patches, pixel-shuffled by 0.5
    assert tiled - single == 4 * tokens_per_tile  # a 4x1 grid and a thumbnail, against one tile


# ----------------------------------------------------------------------------------------- image sizes
def test_the_header_size_is_the_size_of_the_dataset_image(assets):
    data = ViVQAXDataModule(
        val_file=str(grpo_demo.split_json_path(assets, "val")),
        val_image_dir=str(grpo_demo.image_dir(assets, "val")),
        max_image_side=100,
    )
    data.setup("validate")
    dataset = data.dataset("val")
    sizes = [loaded_size(Path(dataset[i]["image_path"]), 100) for i in range(len(dataset))]
    assert sizes == [dataset[i]["image"].size for i in range(len(dataset))]
    assert any(max(size) == 100 for size in sizes)  # some were downscaled


# ------------------------------------------------------------------------------------------ the data
LONG_QUESTION = "Người đàn ông mặc áo sơ mi kẻ sọc xanh đứng cạnh chiếc xe đạp cũ đang nhìn về phía nào? " * 12
LONG = 5  # the record that gets the long question
MAX_COMPLETION_LENGTH = 24


@pytest.fixture
def long_split(assets, tmp_path):
    """The demo's training split with one very long question; the prompt tokens of that sample as the processor
    counts them on the image the dataset gives, at the checkpoint's resolution and with one tile per image."""
    records = json.loads(grpo_demo.split_json_path(assets, "train").read_text(encoding="utf-8"))
    records[LONG]["question"] = LONG_QUESTION
    path = tmp_path / "ViVQA-X_train.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    starts = [n for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if text == "  {"]
    data = data_module(assets, path)
    data.setup("fit")
    item = data.dataset("train")[LONG]
    assert item["question"] == LONG_QUESTION
    counts = {}
    for name, options in (("tiled", {}), ("single", {"crop_to_patches": False})):
        adapter, _ = load_adapter(str(assets / FAMILY_SUBDIRS["internvl"]), **options)
        counts[name] = adapter.prepare_prompts([item["image"]], [item["prompt"]]).input_ids.shape[1]
    assert counts["tiled"] > counts["single"] > 300  # far longer than every other prompt of the split
    return SimpleNamespace(path=path, where=f"{path}:{starts[LONG]}", id=item["id"], total=len(records), **counts)


def data_module(assets, path: Path, **kwargs) -> ViVQAXDataModule:
    return ViVQAXDataModule(
        train_file=str(path), train_image_dir=str(grpo_demo.image_dir(assets, "train")), batch_size=2, **kwargs
    )


def overlong(split, count: int, context: int) -> str:
    return (
        f"{split.where}: sample {split.id}: prompt of {count} tokens (image included) + max_completion_length "
        f"{MAX_COMPLETION_LENGTH} = {count + MAX_COMPLETION_LENGTH} tokens, more than the model's context of {context}"
    )


def hint(split, context: int) -> str:
    return (
        f"These prompts of the train split ({split.path}) leave no room in the model's context of {context} tokens "
        f"(max_position_embeddings) for a completion of model.sampling.max_completion_length ({MAX_COMPLETION_LENGTH}) "
        "tokens: shorten the questions or data.prompt_template, lower the image resolution (model.image options, "
        "data.max_image_side) or max_completion_length, or set data.skip_invalid_samples: true to leave these samples "
        "out."
    )


@pytest.mark.parametrize("room", [0, -1])
def test_a_prompt_without_room_for_a_whole_completion_is_refused_with_its_id(assets, long_split, room):
    data = data_module(assets, long_split.path)
    data.setup("fit")
    adapter, _ = load_adapter(str(assets / FAMILY_SUBDIRS["internvl"]))
    context = long_split.tiled + MAX_COMPLETION_LENGTH + room
    if room == 0:  # prompt and longest completion fill the context exactly: it fits
        check_prompt_lengths(data, "fit", adapter.prompt_token_counts, context, MAX_COMPLETION_LENGTH)
        assert len(data.dataset("train")) == long_split.total
        return
    with pytest.raises(DataValidationError) as error:
        check_prompt_lengths(data, "fit", adapter.prompt_token_counts, context, MAX_COMPLETION_LENGTH)
    assert str(error.value).splitlines() == [
        "1 problem in the data:",
        "  " + overlong(long_split, long_split.tiled, context),
        hint(long_split, context),
    ]


@pytest.mark.parametrize(("stage", "checked"), [("fit", True), ("validate", False), ("predict", False)])
def test_each_stage_checks_the_splits_it_reads(assets, long_split, stage, checked):
    """The long question is in the training split only: fit refuses it; validate and predict (on the validation split,
    there being no test_file) read other splits and go on."""
    val = {
        "val_file": str(grpo_demo.split_json_path(assets, "val")),
        "val_image_dir": str(grpo_demo.image_dir(assets, "val")),
    }
    data = data_module(assets, long_split.path, **val)
    data.setup(stage)
    adapter, _ = load_adapter(str(assets / FAMILY_SUBDIRS["internvl"]))
    context = long_split.tiled + MAX_COMPLETION_LENGTH - 1
    if checked:
        with pytest.raises(DataValidationError, match=r"^1 problem in the data:\n"):
            check_prompt_lengths(data, stage, adapter.prompt_token_counts, context, MAX_COMPLETION_LENGTH)
        return
    check_prompt_lengths(data, stage, adapter.prompt_token_counts, context, MAX_COMPLETION_LENGTH)
    assert len(data.dataset("val")) == 16 and data.dataset("train") is None
    # a context too small for every prompt of the validation split: all are named, under the split's own name
    with pytest.raises(DataValidationError) as error:
        check_prompt_lengths(data, stage, adapter.prompt_token_counts, 100, MAX_COMPLETION_LENGTH)
    lines = str(error.value).splitlines()
    assert lines[0] == "16 problems in the data:"
    assert lines[-1].startswith(f"These prompts of the val split ({grpo_demo.split_json_path(assets, 'val')}) ")


@pytest.mark.parametrize("skip", [False, True])
def test_an_image_the_processor_refuses_is_a_problem_of_its_sample_not_a_traceback(assets, tmp_path, skip):
    """Qwen2-VL's processor refuses an aspect ratio above 200 (training would stop at that sample's batch): the check
    names the sample, and with skip_invalid_samples leaves it out while counting the others."""
    from PIL import Image

    records = json.loads(grpo_demo.split_json_path(assets, "train").read_text(encoding="utf-8"))
    images = tmp_path / "train2014"
    shutil.copytree(grpo_demo.image_dir(assets, "train"), images)
    Image.new("RGB", (3000, 10), (200, 30, 30)).save(images / "banner.jpg")  # 300:1
    records[LONG]["image_name"] = "banner.jpg"
    path = tmp_path / "ViVQA-X_train.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    line = [n for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if text == "  {"][LONG]
    data = ViVQAXDataModule(train_file=str(path), train_image_dir=str(images), batch_size=2, skip_invalid_samples=skip)
    data.setup("fit")
    adapter, _ = load_adapter(str(assets / FAMILY_SUBDIRS["qwen2_vl"]))
    sample_id = data.dataset("train").samples[LONG].id
    size = data.dataset("train").max_image_side or 3000
    expected = (
        f"{path}:{line}: sample {sample_id}: the model's processor refuses its image ({size}x{max(size // 300, 1)} as "
        "loaded): absolute aspect ratio must be smaller than 200, got"
    )

    def check() -> None:
        check_prompt_lengths(data, "fit", adapter.prompt_token_counts, 4096, MAX_COMPLETION_LENGTH)

    if not skip:
        with pytest.raises(DataValidationError) as error:
            check()
        lines = str(error.value).splitlines()
        assert lines[0] == "1 problem in the data:" and lines[1].startswith("  " + expected), lines
        return
    with pytest.warns(UserWarning, match="Skipping 1 invalid record"):
        check()
    assert [sample.id for sample in data.dataset("train").samples].count(sample_id) == 0
    assert len(data.dataset("train")) == len(records) - 1


def test_skip_invalid_samples_leaves_an_overlong_prompt_out_of_the_dataloader(assets, long_split):
    data = data_module(assets, long_split.path, skip_invalid_samples=True)
    data.setup("fit")
    adapter, _ = load_adapter(str(assets / FAMILY_SUBDIRS["internvl"]))
    context = long_split.tiled + MAX_COMPLETION_LENGTH - 1
    with pytest.warns(UserWarning) as warning:
        check_prompt_lengths(data, "fit", adapter.prompt_token_counts, context, MAX_COMPLETION_LENGTH)
    assert str(warning[0].message).splitlines() == [
        f"Skipping 1 invalid record(s) of the train split ({long_split.path}); {long_split.total - 1} samples remain.",
        "1 problem in the data:",
        "  " + overlong(long_split, long_split.tiled, context),
    ]
    assert [str(p) for p in data.splits["train"].skipped] == [overlong(long_split, long_split.tiled, context)]
    loader = data.train_dataloader()
    ids = [sample.id for sample in loader.dataset.samples]
    assert len(ids) == long_split.total - 1 and long_split.id not in ids


def test_the_check_counts_at_the_models_configured_resolution(assets, long_split, tmp_path):
    """One tile per image makes the long prompt fit a context that the checkpoint's tiling overflows."""
    context = long_split.single + MAX_COMPLETION_LENGTH
    model = weightless_copy(assets, tmp_path, context)
    sampling = SamplingConfig(max_completion_length=MAX_COMPLETION_LENGTH)
    for image, fits in [(ImageConfig(), False), (ImageConfig(crop_to_patches=False), True)]:
        data = data_module(assets, long_split.path)
        data.setup("fit")
        module = GRPOModule(str(model), image=image, sampling=sampling)
        check = PromptLengthCheck()
        if fits:
            check.setup(SimpleNamespace(datamodule=data), module, "fit")
            assert len(data.dataset("train")) == long_split.total
            continue
        with pytest.raises(DataValidationError) as error:
            check.setup(SimpleNamespace(datamodule=data), module, "fit")
        assert str(error.value).splitlines()[1] == "  " + overlong(long_split, long_split.tiled, context)


def weightless_copy(assets: Path, tmp_path: Path, context: int) -> Path:
    """The tiny InternVL's config and processor with a context of ``context`` tokens, and no weights: a run that got
    as far as loading the weights would fail there, with another error."""
    copy = tmp_path / "tiny-internvl-short-context"
    shutil.copytree(assets / FAMILY_SUBDIRS["internvl"], copy, ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((copy / "config.json").read_text(encoding="utf-8"))
    config["text_config"]["max_position_embeddings"] = context
    (copy / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return copy


def test_fit_refuses_an_overlong_prompt_before_the_weights_load(assets, long_split, tmp_path, monkeypatch, capsys):
    context = long_split.tiled + MAX_COMPLETION_LENGTH - 1
    model = weightless_copy(assets, tmp_path, context)
    args = ["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--model.model_name_or_path", str(model)]
    args += ["--model.sampling.max_completion_length", str(MAX_COMPLETION_LENGTH)]
    args += ["--data.train_file", str(long_split.path), "--data.val_file", "null"]
    args += ["--data.train_image_dir", str(grpo_demo.image_dir(assets, "train"))]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]
    steps = recorded_training_steps(monkeypatch)
    err = run_cli(args, capsys)  # a user error: one message, status 2
    assert err.splitlines() == [
        "error: 1 problem in the data:",
        "  " + overlong(long_split, long_split.tiled, context),
        hint(long_split, context),
    ]
    assert steps == []


def test_the_module_trains_with_the_adapter_the_check_built(assets, tmp_path, monkeypatch):
    """The check reads the processor before the weights load; ``configure_model`` keeps that adapter, at the module's
    image resolution, instead of reading the processor again, and the export saves that resolution."""
    loads = []

    def counted(*args, **kwargs):
        loads.append(args)
        return load_adapter(*args, **kwargs)

    monkeypatch.setattr("grpo_lightning.prompt_length.load_adapter", counted)
    monkeypatch.setattr("grpo_lightning.module.load_adapter", counted)
    data = data_module(assets, grpo_demo.split_json_path(assets, "train"))
    data.setup("fit")
    path = str(assets / FAMILY_SUBDIRS["internvl"])
    module = GRPOModule(path, image=ImageConfig(crop_to_patches=False))
    PromptLengthCheck().setup(SimpleNamespace(datamodule=data), module, "fit")
    adapter = module.adapter
    assert adapter is not None and module.model is None
    module.configure_model()
    assert module.adapter is adapter and module.model is not None and len(loads) == 1

    configured = adapter.processor.image_processor.to_dict()
    assert configured == load_adapter(path, crop_to_patches=False)[0].processor.image_processor.to_dict()
    assert configured != load_adapter(path)[0].processor.image_processor.to_dict()  # the option changed something
    out = export_model(module.model, adapter.processor, tmp_path / "export")
    written = json.loads((out / "processor_config.json").read_text(encoding="utf-8"))["image_processor"]
    assert written["crop_to_patches"] is False
