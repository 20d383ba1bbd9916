"""ViVQA-X data: `prepare` on the real splits, the data module, and clear errors on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

import grpo_demo
from grpo_lightning.data import (
    DataFileNotFoundError,
    DataValidationError,
    ImageReadError,
    ViVQAXDataModule,
    VQADataset,
    read_samples,
)
from grpo_lightning.errors import UserError, user_message
from grpo_lightning.prepare import main as prepare_main
from grpo_lightning.task import DEFAULT_PROMPT_TEMPLATE, render_prompt
from tests.helpers import ROOT, VIVQAX_DIR, recorded_training_steps, run_cli, vivqax_absent

SHARED = VIVQAX_DIR / "vivqax"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=vivqax_absent(SHARED))


def write_stand_in_images(names: set[str], folder: Path) -> None:
    """Tiny generated JPEGs under the COCO names (COCO itself is not available here)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(sorted(names)):
        Image.new("RGB", (8 + i % 5, 8), (i % 256, 80, 160)).save(folder / name)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The real val and test splits through `prepare`, with stand-in images for every referenced file."""
    if not SHARED.is_dir():
        pytest.skip(vivqax_absent(SHARED))
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


def test_prepare_says_a_mistake_in_one_line_with_status_2(tmp_path, capsys):
    (tmp_path / "ViVQA-X_val.json").write_bytes('[{"question": "M\u00e8o?"}]'.encode("utf-16"))
    cases = {
        ("--prompt-template", "Trả lời ngắn gọn."): "error: data.prompt_template must contain '{question}'",
        (): f"error: {tmp_path / 'ViVQA-X_val.json'}:1: not UTF-8 text (it looks like UTF-16)",
    }
    for extra, expected in cases.items():
        with pytest.raises(SystemExit) as stopped:
            prepare_main(["--vivqax-dir", str(tmp_path), "--out", str(tmp_path / "out"), "--splits", "val", *extra])
        assert stopped.value.code == 2, extra
        err = capsys.readouterr().err
        assert err.startswith(expected) and len(err.strip().splitlines()) == 1, err


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
        ["--vivqax-dir", str(grpo_demo.data_dir(assets)), "--out", str(tmp_path), "--splits", "val"]
        + ["--prompt-template", template]
    )
    assert code == 0
    stored = VQADataset(read_samples(tmp_path / "ViVQA-X_val_grpo.jsonl")[0], grpo_demo.image_dir(assets, "val"))
    raw = VQADataset(
        read_samples(grpo_demo.split_json_path(assets, "val"))[0], grpo_demo.image_dir(assets, "val"), template
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
    shutil.copytree(grpo_demo.image_dir(assets, "val"), images)
    assert (
        prepare_main(["--vivqax-dir", str(grpo_demo.data_dir(assets)), "--out", str(tmp_path), "--splits", "val"]) == 0
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


def test_a_file_that_is_no_image_is_refused_by_the_start_up_scan(jsonl_split):
    path, images = jsonl_split
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    image_path = images / record["image"]
    image_path.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataValidationError) as error:
        load(path, images)
    assert str(error.value).splitlines()[1] == (
        f"  {path}:1: sample {record['id']}: not an image: {image_path} (cannot identify image file '{image_path}')"
    )


def test_a_truncated_jpeg_passes_the_header_scan_and_is_found_by_verify_images_or_named_when_read(jsonl_split):
    path, images = jsonl_split
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    image_path = images / record["image"]
    Image.effect_noise((64, 64), 60).convert("RGB").save(image_path, format="JPEG")
    jpeg = image_path.read_bytes()
    image_path.write_bytes(jpeg[: jpeg.index(b"\xff\xda") + 100])  # the header survives, the scan data is cut
    data = load(path, images, shuffle=False)  # the default scan parses headers only
    with pytest.raises(ImageReadError) as error:
        data.dataset("train")[0]
    assert str(error.value).startswith(f"{path}:1: sample {record['id']}: cannot read image {image_path} (image file ")
    assert str(error.value).endswith(". Set data.verify_images: true to find every such file before training starts.")
    with pytest.raises(DataValidationError) as error:
        load(path, images, verify_images=True)
    assert (
        str(error.value)
        .splitlines()[1]
        .startswith(f"  {path}:1: sample {record['id']}: corrupt image: {image_path} (image file is truncated")
    )


def test_a_missing_data_file_is_a_user_error_and_a_file_not_found_error(tmp_path):
    with pytest.raises(DataFileNotFoundError) as error:
        read_samples(tmp_path / "nope.jsonl")
    assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, UserError)
    assert str(error.value) == f"{tmp_path / 'nope.jsonl'}: no such data file; check the data paths in your config."
    with pytest.raises(DataFileNotFoundError, match=r"^.*: a folder, not a data file; point the data paths"):
        read_samples(tmp_path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_data_file_that_is_not_utf8_is_named_with_its_line_and_byte_offset(jsonl_split, suffix):
    path, images = jsonl_split
    lines = path.read_text(encoding="utf-8").splitlines()
    text = "\n".join(lines) + "\n" if suffix == ".jsonl" else "[\n" + ",\n".join(lines) + "\n]\n"
    line = 3 if suffix == ".jsonl" else 4  # the JSON list's first line is its "["
    raw = text.encode("utf-8")
    offset = raw.index(b'"', sum(len(x) + 1 for x in raw.split(b"\n")[: line - 1]) + 10)
    raw = raw[:offset] + "é".encode("latin-1") + raw[offset + 1 :]  # a Windows editor's Latin-1 save
    broken = path.with_suffix(suffix)
    broken.write_bytes(raw)
    with pytest.raises(DataValidationError) as error:
        load(broken, images)
    column = offset - raw.rindex(b"\n", 0, offset)
    assert str(error.value) == (
        f"{broken}:{line}: not UTF-8 text: byte 0xe9 at byte offset {offset} (line {line}, column {column}) is not "
        "valid UTF-8. Re-save the file as UTF-8 (in an editor, or with `iconv -f ITS_ENCODING -t UTF-8`)."
    )
    assert isinstance(error.value, UserError)


def test_a_utf16_data_file_is_named_as_such_and_a_utf8_byte_order_mark_is_fine(jsonl_split):
    path, images = jsonl_split
    text = path.read_text(encoding="utf-8")
    path.write_bytes(text.encode("utf-16"))
    with pytest.raises(DataValidationError, match=rf"^{path}:1: not UTF-8 text \(it looks like UTF-16\): byte 0x"):
        load(path, images)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert len(load(path, images).dataset("train")) == len(text.splitlines())


@pytest.mark.parametrize(("name", "content"), [("empty.jsonl", ""), ("empty.json", "[]"), ("blank.jsonl", "\n  \n")])
def test_an_empty_training_file_is_refused_at_setup(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataValidationError) as error:
        load(path, tmp_path)
    assert str(error.value) == (
        f"{path}: the train split has no samples (the file holds no records); training on it would export an "
        "untrained model. Point data.train_file at a file with samples "
        "(`python -m grpo_lightning.prepare` writes them)."
    )


@pytest.mark.parametrize(
    ("stage", "option", "what_to_do"),
    [
        ("fit", "val_file", "point data.val_file at a file with samples, or set data.val_file: null to train without "),
        ("validate", "val_file", "point data.val_file at a file with samples, or set data.val_file: null to train "),
        ("test", "test_file", "point data.test_file at a file with samples, or set data.test_file: null to use the "),
        ("predict", "val_file", "point data.val_file at a file with samples, or set data.val_file: null to train "),
    ],
)
def test_an_empty_evaluation_split_is_refused_when_the_stage_needs_it(jsonl_split, tmp_path, stage, option, what_to_do):
    path, images = jsonl_split
    empty = tmp_path / "empty.json"
    empty.write_text("[]", encoding="utf-8")
    split = "val" if option == "val_file" else "test"
    data = ViVQAXDataModule(
        train_file=str(path),
        train_image_dir=str(images),
        val_image_dir=str(images),
        batch_size=2,
        **{option: str(empty)},
    )
    with pytest.raises(DataValidationError) as error:
        data.setup(stage)
    assert str(error.value).startswith(
        f"{empty}: the {split} split has no samples (the file holds no records); " + what_to_do
    )
    if stage != "fit":  # the training split is not read by a stage that does not train
        assert data.dataset("train") is None


@pytest.fixture
def one_record(jsonl_split):
    """A one-line copy of the split; ``write(image)`` names another image in it."""
    path, images = jsonl_split
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    single = path.with_name("one.jsonl")

    def write(image: str) -> Path:
        single.write_text(json.dumps({**record, "image": image}, ensure_ascii=False) + "\n", encoding="utf-8")
        return single

    return write, record, images


@pytest.mark.parametrize(
    "name", ["../../../../../../etc/passwd", "/etc/passwd", "../outside.jpg", "sub/../../outside.jpg"]
)
def test_an_image_path_that_leaves_the_image_folder_is_refused(one_record, tmp_path, name):
    write, record, images = one_record
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.jpg")
    path = write(name)
    with pytest.raises(DataValidationError) as error:
        load(path, images)
    real = (images / name).resolve()
    assert str(error.value).splitlines()[1] == (
        f"  {path}:1: sample {record['id']}: image path {name!r} leads out of the image folder {images} (to {real}); "
        "name images inside that folder, or set data.allow_images_outside_image_dir: true if you trust this data file"
    )


def test_images_outside_the_folder_load_when_allowed(one_record, tmp_path):
    write, _, images = one_record
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.jpg")
    for name in ("../outside.jpg", str(tmp_path / "outside.jpg")):
        data = load(write(name), images, allow_images_outside_image_dir=True)
        assert data.dataset("train")[0]["image"].size == (8, 8)


def test_a_symlink_is_judged_by_where_it_leads_and_names_inside_the_folder_stay_inside(one_record, tmp_path):
    write, record, images = one_record
    (tmp_path / "elsewhere" / "deep").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "elsewhere" / "a.jpg")
    (images / "link").symlink_to(tmp_path / "elsewhere" / "deep")
    # `link/../a.jpg` looks like images/a.jpg, but the OS goes through the link: elsewhere/a.jpg
    with pytest.raises(DataValidationError, match=r"image path 'link/\.\./a\.jpg' leads out of the image folder"):
        load(write("link/../a.jpg"), images)
    # a file the folder's owner linked in, named without `..`, is inside
    (images / "linked.jpg").symlink_to(tmp_path / "elsewhere" / "a.jpg")
    assert len(load(write("linked.jpg"), images).dataset("train")) == 1
    # an absolute path inside the folder, through the folder's own symlinked location or its real one
    (tmp_path / "images_link").symlink_to(images)
    for folder, absolute in [(images, images / record["image"]), (tmp_path / "images_link", images / record["image"])]:
        assert len(load(write(str(absolute)), folder).dataset("train")) == 1
    # a name with `..` that ends inside the folder is inside
    assert len(load(write(f"link/../../images/{record['image']}"), images).dataset("train")) == 1


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


def test_fit_stops_before_the_first_step_on_a_corrupted_copy(assets, jsonl_split, tmp_path, monkeypatch, capsys):
    """A corrupted copy of a split, one malformed line and one missing image: `fit` names both and trains nothing."""
    path, images = jsonl_split
    edit_line(path, 2, lambda record: '{"id": oops}')
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    (images / record["image"]).unlink()
    args = ["fit", "--config", str(ROOT / "configs" / "demo.yaml")]
    args += ["--model.model_name_or_path", str(grpo_demo.internvl_path(assets))]
    args += ["--data.train_file", str(path), "--data.train_image_dir", str(images), "--data.val_file", "null"]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]
    steps = recorded_training_steps(monkeypatch)
    message = run_cli(args, capsys)  # a user error: one message, status 2
    assert message.startswith("error: 2 problems in the data:\n")
    assert f"{path}:2: malformed JSON" in message
    assert f"{path}:1: sample {record['id']}: image not found: {images / record['image']}" in message
    assert steps == []


def test_an_unreadable_image_read_in_a_worker_process_is_one_message(jsonl_split, capsys):
    """A dataloader worker's error comes back with the worker's traceback in its message; the user sees the message."""
    path, images = jsonl_split
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    image_path = images / record["image"]
    jpeg = image_path.read_bytes()
    image_path.write_bytes(jpeg[: jpeg.index(b"\xff\xda") + 100])
    data = load(path, images, shuffle=False, num_workers=1)
    with pytest.raises(ImageReadError) as error:
        next(iter(data._loader(data.dataset("train"), batch_size=1)))
    assert str(error.value).startswith("Caught ImageReadError in DataLoader worker process 0.")
    assert user_message(error.value).startswith(f"{path}:1: sample {record['id']}: cannot read image {image_path} (")
    assert user_message(error.value).endswith(
        ". Set data.verify_images: true to find every such file before training starts."
    )
    assert "Traceback" not in user_message(error.value)
    assert user_message(UserError("plain")) == "plain"


# -------------------------------------------------------------------------------------------- repeated ids
def raw_record(question_id: str, answer: str, image: str = "meo.jpg") -> dict:
    return {
        "question": "Con mèo màu gì?",
        "image_name": image,
        "answer": answer,
        "explanation": [f"vì lông nó màu {answer}"],
        "question_id": question_id,
    }


def conversation_record(question_id: str, answer: str, image: str = "meo.jpg") -> dict:
    return {
        "id": question_id,
        "image": image,
        "conversations": [
            {"from": "human", "value": "<image>Con mèo màu gì?"},
            {"from": "gpt", "value": f"<answer>{answer}</answer><explain>vì lông nó màu {answer}</explain>"},
        ],
    }


def write_split(path: Path, form: str, records: list[tuple[str, str]]) -> list[int]:
    """``records`` (id, answer) written in one of the file forms; returns the line each record starts on."""
    if form == "jsonl":
        lines = [json.dumps(conversation_record(*r), ensure_ascii=False) for r in records]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return list(range(1, len(records) + 1))
    if form == "list":
        items = [json.dumps(raw_record(*r), ensure_ascii=False) for r in records]
        path.write_text("[\n" + ",\n".join(items) + "\n]\n", encoding="utf-8")
        return list(range(2, len(records) + 2))
    if form == "one-line list":  # minified: every record on line 1
        path.write_text(json.dumps([raw_record(*r) for r in records], ensure_ascii=False), encoding="utf-8")
        return [1] * len(records)
    # the dict form keyed by question id, a key written twice (json.loads would keep only the last)
    members = []
    for question_id, answer in records:
        record = {k: v for k, v in raw_record(question_id, answer).items() if k != "question_id"}
        members.append(f"{json.dumps(question_id)}: {json.dumps(record, ensure_ascii=False)}")
    path.write_text("{\n" + ",\n".join(members) + "\n}\n", encoding="utf-8")
    return list(range(2, len(records) + 2))


SPLIT_WITH_COPIES = [("1001", "đen"), ("1002", "trắng"), ("1001", "vàng"), ("1003", "xám"), ("1001", "nâu")]


@pytest.mark.parametrize("form", ["jsonl", "list", "one-line list", "dict"])
def test_a_repeated_id_is_a_problem_per_later_copy_naming_the_first(tmp_path, form):
    path = tmp_path / ("split.jsonl" if form == "jsonl" else "split.json")
    lines = write_split(path, form, SPLIT_WITH_COPIES)
    samples, problems = read_samples(path)
    assert [(s.id, s.answer) for s in samples] == [("1001", "đen"), ("1002", "trắng"), ("1003", "xám")]
    first = f"{path}:{lines[0]}"
    assert [str(p) for p in problems] == [
        f"{path}:{lines[i]}: sample 1001: duplicated id: the first sample with id 1001 is at {first}; give every "
        "sample its own id, or remove this copy"
        for i in (2, 4)
    ]


@pytest.mark.parametrize("stage", ["fit", "validate", "predict"])
def test_every_stage_refuses_a_split_with_a_repeated_id(tmp_path, stage):
    Image.new("RGB", (8, 8), (20, 20, 20)).save(tmp_path / "meo.jpg")
    path = tmp_path / "split.json"
    lines = write_split(path, "list", SPLIT_WITH_COPIES[:3])
    data = ViVQAXDataModule(
        train_file=str(path), val_file=str(path), train_image_dir=str(tmp_path), val_image_dir=str(tmp_path)
    )
    with pytest.raises(DataValidationError) as error:
        data.setup(stage)
    split = "train" if stage == "fit" else "val"
    assert str(error.value).splitlines() == [
        "1 problem in the data:",
        f"  {path}:{lines[2]}: sample 1001: duplicated id: the first sample with id 1001 is at {path}:{lines[0]}; "
        "give every sample its own id, or remove this copy",
        f"Fix the data of the {split} split ({path}), or set data.skip_invalid_samples: true to leave these samples "
        "out.",
    ]


def test_skipping_keeps_the_first_copy_of_an_id_even_when_all_records_share_a_line(tmp_path):
    """A minified JSON list puts every record on line 1: records are told apart by position, not by (line, id)."""
    Image.new("RGB", (8, 8), (20, 20, 20)).save(tmp_path / "meo.jpg")
    records = [raw_record(*r) for r in SPLIT_WITH_COPIES]
    records[3]["image_name"] = "mat.jpg"  # 1003: no such image
    records.append({**raw_record("1004", ""), "image_name": ""})  # two lacks, one record
    path = tmp_path / "split.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    with pytest.warns(UserWarning) as warning:
        data = load(path, tmp_path, skip_invalid_samples=True)
    message = str(warning[0].message)
    assert message.startswith(f"Skipping 4 invalid record(s) of the train split ({path}); 2 samples remain.\n")
    assert [(s.id, s.answer) for s in data.dataset("train").samples] == [("1001", "đen"), ("1002", "trắng")]
    assert [str(p) for p in data.splits["train"].skipped] == [
        f"{path}:1: sample 1001: duplicated id: the first sample with id 1001 is at {path}:1; give every sample its "
        "own id, or remove this copy",
        f"{path}:1: sample 1001: duplicated id: the first sample with id 1001 is at {path}:1; give every sample its "
        "own id, or remove this copy",
        f"{path}:1: sample 1004: empty answer; empty image name",
        f"{path}:1: sample 1003: image not found: {tmp_path / 'mat.jpg'}",
    ]
    assert len(data.train_dataloader().dataset) == 2
