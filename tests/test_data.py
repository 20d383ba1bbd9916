"""ViVQA-X data: `prepare` on the real splits, the data module, and clear errors on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from grpo_lightning import demo_assets
from grpo_lightning.cli import main as cli_main
from grpo_lightning.data import DataValidationError, ViVQAXDataModule, VQADataset, read_samples
from grpo_lightning.module import GRPOModule
from grpo_lightning.prepare import main as prepare_main
from grpo_lightning.prompts import DEFAULT_PROMPT_TEMPLATE, render_prompt

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "vivqax"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/vivqax is not beside the checkout")


def write_stand_in_images(names: set[str], folder: Path) -> None:
    """Tiny generated JPEGs under the COCO names (COCO itself is not available here)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(sorted(names)):
        Image.new("RGB", (8 + i % 5, 8), (i % 256, 80, 160)).save(folder / name)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The real val and test splits through `prepare`, with stand-in images for every referenced file."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data/vivqax is not beside the checkout")
    out = tmp_path_factory.mktemp("prepared")
    coco = out / "coco"
    names = {
        r["image_name"] for split in ("val", "test") for r in json.loads((SHARED / f"ViVQA-X_{split}.json").read_text())
    }
    write_stand_in_images(names, coco / "val2014")
    assert prepare_main(["--vivqax-dir", str(SHARED), "--out", str(out), "--splits", "val", "test"]) == 0
    return out, coco


@needs_shared
def test_prepare_writes_one_valid_vlm_r1_line_per_sample(prepared):
    out, _ = prepared
    for split, count in (("val", 1459), ("test", 1968)):
        lines = (out / f"ViVQA-X_{split}_grpo.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == count
        source = json.loads((SHARED / f"ViVQA-X_{split}.json").read_text(encoding="utf-8"))
        for line, original in zip(lines, source, strict=True):
            record = json.loads(line)
            assert record["id"] == original["question_id"]
            assert record["image"] == original["image_name"]
            human, gpt = record["conversations"]
            assert human == {
                "from": "human",
                "value": "<image>" + render_prompt(DEFAULT_PROMPT_TEMPLATE, original["question"]),
            }
            assert gpt == {
                "from": "gpt",
                "value": f"<answer>{original['answer']}</answer><explain>{original['explanation'][0]}</explain>",
            }
            assert record["explanations"] == original["explanation"] and len(record["explanations"]) == 3
            assert record["answer_type"] == original["answer_type"]


@needs_shared
def test_prepare_prints_counts_and_missing_images(tmp_path, capsys):
    coco = tmp_path / "coco"
    val = json.loads((SHARED / "ViVQA-X_val.json").read_text(encoding="utf-8"))
    present = {r["image_name"] for r in val[:100]}
    write_stand_in_images(present, coco / "val2014")
    missing = sum(r["image_name"] not in present for r in val)
    code = prepare_main(
        ["--vivqax-dir", str(SHARED), "--out", str(tmp_path), "--splits", "val", "--image-dir", str(coco)]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert f"val: 1459 samples -> {tmp_path / 'ViVQA-X_val_grpo.jsonl'}" in out
    assert "answer types: other 824, yes/no 630, number 5" in out
    assert 0 < missing < 1459
    assert f"missing images: {missing} of 1459" in out


@needs_shared
@pytest.mark.parametrize("form", ["list", "list_without_types", "dict_by_question_id"])
def test_the_three_published_forms_give_the_same_samples(tmp_path, form):
    records = json.loads((SHARED / "ViVQA-X_val.json").read_text(encoding="utf-8"))
    if form == "list_without_types":
        records = [{k: v for k, v in r.items() if k not in ("question_type", "answer_type")} for r in records]
    elif form == "dict_by_question_id":
        records = {r["question_id"]: {k: v for k, v in r.items() if k != "question_id"} for r in records}
    path = tmp_path / "ViVQA-X_val.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    samples, problems = read_samples(path)
    reference, _ = read_samples(SHARED / "ViVQA-X_val.json")
    assert problems == [] and len(samples) == 1459
    for ours, theirs in zip(samples, reference, strict=True):
        assert (ours.id, ours.question, ours.image, ours.answer, ours.explanations) == (
            theirs.id,
            theirs.question,
            theirs.image,
            theirs.answer,
            theirs.explanations,
        )


@needs_shared
def test_the_data_module_loads_the_prepared_real_splits_lazily(prepared):
    out, coco = prepared
    data = ViVQAXDataModule(
        train_file=str(out / "ViVQA-X_val_grpo.jsonl"),
        val_file=str(out / "ViVQA-X_test_grpo.jsonl"),
        train_image_dir=str(coco / "val2014"),
        val_image_dir=str(coco / "val2014"),
        batch_size=4,
        num_workers=2,
        max_image_side=6,
        shuffle=False,
    )
    data.setup("fit")
    train = data.dataset("train")
    assert len(train) == 1459 and len(data.dataset("val")) == 1968
    assert not any(isinstance(v, Image.Image) for s in train.samples for v in vars(s).values())  # paths only
    batch = next(iter(data.train_dataloader()))  # decoded in 2 worker processes
    first = json.loads((SHARED / "ViVQA-X_val.json").read_text(encoding="utf-8"))[0]
    assert batch["id"][0] == first["question_id"]
    assert batch["question"][0] == first["question"]
    assert batch["answer"][0] == first["answer"]
    assert batch["explanations"][0] == first["explanation"]
    assert batch["image_path"][0] == str(coco / "val2014" / first["image_name"])
    assert batch["prompt"][0] == render_prompt(DEFAULT_PROMPT_TEMPLATE, first["question"])
    assert batch["solution"][0] == f"<answer>{first['answer']}</answer><explain>{first['explanation'][0]}</explain>"
    assert all(image.mode == "RGB" and max(image.size) <= 6 for image in batch["image"])
    assert len(batch["id"]) == 4


def test_a_custom_template_is_one_source_of_truth_for_prepare_and_the_data_module(assets, tmp_path):
    template = "Câu hỏi: {question} Trả lời ngắn."
    code = prepare_main(
        ["--vivqax-dir", str(demo_assets.data_dir(assets)), "--out", str(tmp_path), "--splits", "val"]
        + ["--prompt-template", template]
    )
    assert code == 0
    stored = VQADataset(read_samples(tmp_path / "ViVQA-X_val_grpo.jsonl")[0], demo_assets.image_dir(assets, "val"))
    raw = VQADataset(
        read_samples(demo_assets.split_json_path(assets, "val"))[0], demo_assets.image_dir(assets, "val"), template
    )
    assert stored[0]["prompt"] == raw[0]["prompt"] == render_prompt(template, raw[0]["question"])


def test_a_vlm_r1_jsonl_without_our_extra_fields_is_read(tmp_path):
    line = {
        "id": 7,
        "image": "a.jpg",
        "conversations": [
            {"from": "human", "value": "<image>Con mèo màu gì?"},
            {"from": "gpt", "value": "<answer>đen</answer><explain>vì lông nó màu đen</explain>"},
        ],
    }
    path = tmp_path / "vlm_r1.jsonl"
    path.write_text(json.dumps(line, ensure_ascii=False) + "\n", encoding="utf-8")
    (sample,), problems = read_samples(path)
    assert problems == []
    assert (sample.id, sample.question, sample.prompt, sample.answer, sample.explanations) == (
        "7",
        "Con mèo màu gì?",
        "Con mèo màu gì?",
        "đen",
        ("vì lông nó màu đen",),
    )


@pytest.mark.parametrize(("world_size", "expected"), [(1, 4), (2, 2), (4, 1)])
def test_each_process_takes_whole_prompts(world_size, expected):
    data = ViVQAXDataModule(train_file="unused.json", batch_size=4)
    data.trainer = SimpleNamespace(world_size=world_size)
    assert data.per_device_batch_size == expected


def test_a_global_batch_that_does_not_divide_is_refused():
    data = ViVQAXDataModule(train_file="unused.json", batch_size=3)
    data.trainer = SimpleNamespace(world_size=2)
    with pytest.raises(ValueError, match=r"data.batch_size \(3\) must be divisible by the number of processes \(2\)"):
        _ = data.per_device_batch_size


# ------------------------------------------------------------------------------------------- bad input
@pytest.fixture
def jsonl_split(assets, tmp_path):
    """The demo's val split as our JSONL, with its images, in a scratch folder the test may break."""
    images = tmp_path / "images"
    shutil.copytree(demo_assets.image_dir(assets, "val"), images)
    assert (
        prepare_main(["--vivqax-dir", str(demo_assets.data_dir(assets)), "--out", str(tmp_path), "--splits", "val"])
        == 0
    )
    return tmp_path / "ViVQA-X_val_grpo.jsonl", images


def edit_line(path: Path, lineno: int, edit) -> dict:
    lines = path.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[lineno - 1])
    lines[lineno - 1] = edit(record)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return record


def load(path: Path, images: Path, **kwargs) -> ViVQAXDataModule:
    data = ViVQAXDataModule(train_file=str(path), train_image_dir=str(images), batch_size=2, **kwargs)
    data.setup("fit")
    return data


def without(record: dict, key: str) -> str:
    return json.dumps({k: v for k, v in record.items() if k != key}, ensure_ascii=False)


def test_a_malformed_json_line_is_named_by_file_and_line(jsonl_split):
    path, images = jsonl_split
    edit_line(path, 3, lambda record: '{"id": "broken", "image": ')
    with pytest.raises(DataValidationError) as error:
        load(path, images)
    assert str(error.value).splitlines()[:2] == [
        "1 problem in the data:",
        f"  {path}:3: malformed JSON (Expecting value at column 27)",
    ]
    assert "set data.skip_invalid_samples: true to leave these samples out" in str(error.value)


def test_a_missing_field_is_named(jsonl_split):
    path, images = jsonl_split
    record = edit_line(path, 2, lambda r: without(r, "image"))
    with pytest.raises(DataValidationError) as error:
        load(path, images)
    assert str(error.value).splitlines()[1] == f"  {path}:2: sample {record['id']}: missing field 'image'"


def test_an_empty_answer_is_named(jsonl_split):
    path, images = jsonl_split
    record = edit_line(path, 5, lambda r: json.dumps({**r, "answer": "  "}, ensure_ascii=False))
    with pytest.raises(DataValidationError) as error:
        load(path, images)
    assert str(error.value).splitlines()[1] == f"  {path}:5: sample {record['id']}: empty answer"


def test_a_missing_image_is_named_with_its_path(jsonl_split):
    path, images = jsonl_split
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    (images / record["image"]).unlink()
    with pytest.raises(DataValidationError) as error:
        load(path, images)
    lines = str(error.value).splitlines()
    same_image = [
        i + 1 for i, line in enumerate(path.read_text().splitlines()) if json.loads(line)["image"] == record["image"]
    ]
    assert lines[0] == f"{len(same_image)} problem{'s' if len(same_image) > 1 else ''} in the data:"
    assert lines[1] == f"  {path}:1: sample {record['id']}: image not found: {images / record['image']}"


def test_an_unreadable_image_is_named(jsonl_split):
    """A path that exists but is no readable file (a folder here: as root, permissions do not stop reads)."""
    path, images = jsonl_split
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    (images / record["image"]).unlink()
    (images / record["image"]).mkdir()
    with pytest.raises(DataValidationError) as error:
        load(path, images)
    expected = f"  {path}:1: sample {record['id']}: image is not a readable file: {images / record['image']}"
    assert str(error.value).splitlines()[1] == expected


def test_a_corrupt_image_is_found_by_verify_images_and_named_when_read(jsonl_split):
    path, images = jsonl_split
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    image_path = images / record["image"]
    image_path.write_bytes(b"not a jpeg at all")
    data = load(path, images, shuffle=False)  # stat-only scan: the file exists
    with pytest.raises(ValueError) as error:
        data.dataset("train")[0]
    assert str(error.value) == (
        f"{path}:1: sample {record['id']}: cannot read image {image_path} (cannot identify image file "
        f"'{image_path}'). Set data.verify_images: true to find every such file before training starts."
    )
    with pytest.raises(DataValidationError) as error:
        load(path, images, verify_images=True)
    assert (
        str(error.value).splitlines()[1].startswith(f"  {path}:1: sample {record['id']}: corrupt image: {image_path} (")
    )


def test_skip_invalid_samples_leaves_them_out_and_says_which(jsonl_split):
    path, images = jsonl_split
    total = len(path.read_text(encoding="utf-8").splitlines())
    edit_line(path, 3, lambda record: "{not json")
    record = edit_line(path, 4, lambda r: json.dumps({**r, "answer": ""}, ensure_ascii=False))
    with pytest.warns(UserWarning, match=r"Skipping 2 invalid record\(s\) of the train split") as warning:
        data = load(path, images, skip_invalid_samples=True)
    assert len(data.dataset("train")) == total - 2
    message = str(warning[0].message)
    assert f"{path}:3: malformed JSON" in message and f"{path}:4: sample {record['id']}: empty answer" in message
    assert [str(p) for p in data.splits["train"].skipped] == [
        f"{path}:3: malformed JSON (Expecting property name enclosed in double quotes at column 2)",
        f"{path}:4: sample {record['id']}: empty answer",
    ]


def test_fit_stops_before_the_first_step_on_a_corrupted_copy(assets, jsonl_split, tmp_path, monkeypatch):
    """The issue's check: one malformed line and one missing image; `fit` names both and trains nothing."""
    path, images = jsonl_split
    edit_line(path, 2, lambda record: '{"id": oops}')
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    (images / record["image"]).unlink()
    args = ["fit", "--config", str(ROOT / "configs" / "demo.yaml")]
    args += ["--model.model_name_or_path", str(demo_assets.internvl_path(assets))]
    args += ["--data.train_file", str(path), "--data.train_image_dir", str(images), "--data.val_file", "null"]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]
    steps = []
    monkeypatch.setattr(GRPOModule, "training_step", lambda self, batch, batch_idx: steps.append(batch_idx))
    with pytest.raises(DataValidationError) as error:
        cli_main(args)
    message = str(error.value)
    assert f"{path}:2: malformed JSON" in message
    assert f"{path}:1: sample {record['id']}: image not found: {images / record['image']}" in message
    assert steps == []
