"""Rollout records and their browser: what a step writes, the option that sets how often, and the page in Chromium
(paging, completions sorted by advantage, the reward filter, images, model output kept inert)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from grpo_lightning.adapters import PromptBatch
from grpo_lightning.cli import main as cli_main
from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.report import main as report_main
from grpo_lightning.report import read_rollouts, render_rollouts, write_rollouts_page
from grpo_lightning.report.rollout_trends import step_statistics
from grpo_lightning.rollout import Rollout, ScoredRollout
from grpo_lightning.rollout_log import rollout_records
from grpo_lightning.svg_plots import PALETTE
from scripts.tb_scalars import read_scalars
from tests.helpers import (
    ROOT,
    XSS_IMG,
    XSS_SCRIPT,
    chromium,
    colour_pixels,
    make_module,
    needs_chromium,
    quiet_trainer,
    screenshot_artifact,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EOS = 9


def scored(ids, texts, rewards, per_func, informative, ends_with_eos) -> ScoredRollout:
    groups = len(ids)
    size = len(texts) // groups
    completion_ids = torch.tensor([[5, 6, EOS if eos else 7] for eos in ends_with_eos])
    mask = torch.tensor([[1, 1, 1]] * len(texts))
    prompts = PromptBatch(
        torch.ones(groups, 2, dtype=torch.long), torch.ones(groups, 2, dtype=torch.long), [{}] * groups
    )
    rollout = Rollout(prompts, torch.arange(groups).repeat_interleave(size), completion_ids, mask, texts)
    batch = {
        "id": ids,
        "question": [f"câu hỏi {i}" for i in ids],
        "image_path": [f"/images/{i}.jpg" for i in ids],
        "answer": ["có"] * groups,
    }
    return ScoredRollout(batch, rollout, torch.tensor(rewards), torch.tensor(per_func), torch.tensor(informative))


def test_records_name_every_group_its_completions_scores_and_advantages():
    nan = float("nan")
    first = scored(
        ["a", "b"],
        ["a0", "a1", "b0", "b1"],
        [1.0, 0.0, 0.5, 0.5],
        [[1.0, 0.0], [0.0, nan], [0.5, 0.0], [0.5, 0.0]],
        [True, False],
        [True, False, True, True],
    )
    second = scored(["c"], ["c0", "c1"], [2.0, 0.0], [[2.0, 0.0], [0.0, 0.0]], [True], [True, True])
    records = rollout_records(
        [first, second], [(0, 0), (1, 0)], torch.tensor([0.7, -0.7, 0.6, -0.6]), ["acc", "fmt"], EOS, 2, 12, 1, True
    )
    assert [(r["round"], r["group"], r["prompt_id"], r["filtered"], r["trained"]) for r in records] == [
        (0, 0, "a", False, True),
        (0, 1, "b", True, False),
        (1, 0, "c", False, True),
    ]
    a, b, c = records
    assert a["step"] == 12 and a["rank"] == 1 and a["question"] == "câu hỏi a" and a["image_path"] == "/images/a.jpg"
    assert a["answer"] == "có" and a["reward_std"] == pytest.approx(0.7071, abs=1e-4) and b["reward_std"] == 0.0
    assert [x["advantage"] for x in a["completions"]] == pytest.approx([0.7, -0.7])
    assert [x["advantage"] for x in c["completions"]] == pytest.approx([0.6, -0.6])
    assert [x["advantage"] for x in b["completions"]] == [None, None]
    assert a["completions"][1]["scores"] == {"acc": 0.0, "fmt": None}  # NaN: no opinion
    assert [x["truncated"] for x in a["completions"]] == [False, True]
    assert a["completions"][0] == {
        "text": "a0",
        "reward": 1.0,
        "scores": {"acc": 1.0, "fmt": 0.0},
        "advantage": pytest.approx(0.7),
        "truncated": False,
        "length": 3,
    }
    json.dumps(records)  # plain JSON
    # without dynamic sampling no group is called filtered
    plain = rollout_records([first], [(0, 0), (0, 1)], torch.zeros(4), ["acc", "fmt"], EOS, 2, 0, 0, False)
    assert [r["filtered"] for r in plain] == [False, False]


def fit(assets, data_kwargs, save_dir, every, logger=True, steps=3):
    module = make_module(assets, logging=dict(completions_every_n_steps=0, rollouts_every_n_steps=every))
    L.seed_everything(0)
    trainer = quiet_trainer(
        max_steps=steps,
        logger=TensorBoardLogger(save_dir, name="run") if logger else False,
        default_root_dir=save_dir,
    )
    trainer.fit(module, datamodule=ViVQAXDataModule(**data_kwargs, batch_size=2))
    return trainer


@pytest.mark.parametrize(("every", "steps"), [(2, [0, 2]), (1, [0, 1, 2]), (0, [])])
def test_rollouts_every_n_steps_sets_which_steps_are_written(assets, data_kwargs, tmp_path, every, steps):
    trainer = fit(assets, data_kwargs, tmp_path, every)
    folder = Path(trainer.log_dir, "rollouts")
    written = sorted(int(p.stem.split("=")[1]) for p in folder.glob("step=*.jsonl")) if folder.is_dir() else []
    assert written == steps
    for step in steps:
        records = [json.loads(line) for line in (folder / f"step={step}.jsonl").read_text().splitlines()]
        assert len(records) == 2 and all(len(r["completions"]) == 4 for r in records)
        assert all(r["trained"] and not r["filtered"] and r["step"] == step for r in records)
        assert all(Path(r["image_path"]).is_file() for r in records)


def test_without_a_logger_no_rollouts_are_written(assets, data_kwargs, tmp_path):
    fit(assets, data_kwargs, tmp_path, every=1, logger=False, steps=1)
    assert not list(tmp_path.rglob("*.jsonl"))


def test_the_demo_with_dynamic_sampling_writes_rollouts_the_report_opens(assets, data_kwargs, tmp_path, capsys):
    args = ["fit", "--config", str(ROOT / "configs" / "demo.yaml")]
    args += ["--config", str(ROOT / "configs" / "demo_dynamic_sampling.yaml"), "--trainer.max_steps", "2"]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false"]
    args += ["--model.model_name_or_path", str(assets / "models" / "tiny-internvl"), "--data.val_file", "null"]
    args += ["--model.logging.rollouts_every_n_steps", "1"]
    args += [f"--data.{key}={value}" for key, value in data_kwargs.items() if key.startswith("train")]
    cli = cli_main(args)
    assert cli.model.sampling.dynamic_sampling  # as the overlay sets it
    run = Path(cli.trainer.log_dir)
    assert run.parent.name == "demo_dynamic_sampling"
    assert "train/dynamic_sampling/dropped_fraction" in read_scalars(run)
    assert sorted(p.name for p in (run / "rollouts").iterdir()) == ["step=0.jsonl", "step=1.jsonl"]
    assert report_main(["--rollouts", str(run)]) == 0
    page = (run / "rollouts.html").read_text(encoding="utf-8")
    assert page.count("src") and "data:image/jpeg;base64," in page  # the records' images, embedded
    assert "rollout browser written to" in capsys.readouterr().out


def test_the_command_explains_a_folder_without_records(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report_main(["--rollouts", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'rollouts'}: no rollout records" in err and "rollouts_every_n_steps" in err


def test_a_damaged_line_is_named(tmp_path):
    folder = tmp_path / "rollouts"
    folder.mkdir()
    (folder / "step=3.jsonl").write_text('{"completions": []}\n{"completions": [\n', encoding="utf-8")
    with pytest.raises(Exception, match=r"step=3.jsonl:2: not a JSON line"):
        render_rollouts(tmp_path)


# ------------------------------------------------------------------------------------------ the page, in Chromium
NAMES = ["accuracy", "format"]


def completion(text, reward, accuracy, fmt, advantage):
    return {
        "text": text,
        "reward": reward,
        "scores": {"accuracy": accuracy, "format": fmt},
        "advantage": advantage,
        "truncated": reward == 0.0,
        "length": len(text),
    }


def group(step, k, image, trained=True, filtered=False):
    """4 completions whose advantages are not in file order; format 1.0 for two of them."""
    pid = f"{step}00{k}"
    completions = [
        completion(f"c{pid}-0 {XSS_SCRIPT}", 1.0, 0.0, 1.0, -0.2 if trained else None),
        completion(f"c{pid}-1", 3.0, 3.0, 0.0, 1.3 if trained else None),
        completion(f"c{pid}-2 {XSS_IMG}", 0.0, 0.0, 0.0, -1.1 if trained else None),
        completion(
            f"c{pid}-3 </script><script>document.body.setAttribute('data-pwned','x')</script>",
            4.0,
            3.0,
            1.0,
            0.0 if trained else None,
        ),
    ]
    return {
        "step": step,
        "rank": 0,
        "round": 0,
        "group": k,
        "prompt_id": pid,
        "question": f"Câu hỏi {pid}?",
        "image_path": str(image),
        "answer": "có",
        "reward_std": 1.8,
        "filtered": filtered,
        "trained": trained,
        "completions": completions,
    }


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    Image.new("RGB", (320, 240), (200, 60, 40)).save(run / "red.png")
    (run / "rollouts").mkdir()
    for step, size in ((0, 2), (10, 3), (20, 1)):
        groups = [group(step, k, run / "red.png" if k % 2 == 0 else run / "absent.png") for k in range(size)]
        if step == 10:
            groups.append(group(step, 9, run / "red.png", trained=False, filtered=True))
        lines = "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in groups)
        (run / "rollouts" / f"step={step}.jsonl").write_text(lines, encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def page(run_folder) -> Path:
    return write_rollouts_page(run_folder)


class _Page(HTMLParser):
    """The groups and completions of a dumped page, in document order, the body's attributes, and the charts' links
    (their attributes) and points."""

    def __init__(self, text: str):
        super().__init__()
        self.body: dict = {}
        self.groups: list[dict] = []
        self.images = 0
        self.links: list[dict] = []
        self.charts = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "body":
            self.body = attributes
        elif tag == "svg" and attributes.get("class") == "chart":
            self.charts += 1
        elif tag == "a" and (attributes.get("href") or "").startswith("#step="):
            self.links.append(attributes)
        elif tag == "section" and attributes.get("class") == "group":
            self.groups.append({**attributes, "completions": []})
        elif tag == "li" and attributes.get("class") == "completion":
            self.groups[-1]["completions"].append(attributes)
        elif tag == "img" and (attributes.get("src") or "").startswith("data:image/jpeg;base64,"):
            self.images += 1


def dump(tmp_path, page, fragment="") -> _Page:
    return _Page(chromium(tmp_path, page.as_uri() + fragment, "--dump-dom"))


def test_the_page_is_self_contained_and_keeps_model_output_inert(page):
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", text)
    assert text.count("<script") == 2 and "</script><script>document" not in text  # the data and the page's script
    assert "\\u003c/script>" in text
    assert text.count("data:image/jpeg;base64,") == 1  # one image, embedded once


@needs_chromium
def test_the_first_step_shows_first_with_sorted_completions_and_images(tmp_path, page):
    dom = dump(tmp_path, page)
    assert dom.body.get("data-step") == "0" and "data-pwned" not in dom.body
    assert [g["data-prompt-id"] for g in dom.groups] == ["0000", "0001"]
    for shown in dom.groups:
        advantages = [float(c["data-advantage"]) for c in shown["completions"]]
        assert advantages == [1.3, 0.0, -0.2, -1.1], "sorted by advantage, high first"
        assert [c["data-index"] for c in shown["completions"]] == ["1", "3", "0", "2"]
    assert dom.images == 1  # the group whose image exists; the other shows a placeholder
    assert dom.body.get("data-visible-completions") == "8"


@needs_chromium
def test_paging_by_fragment_changes_the_step(tmp_path, page):
    dom = dump(tmp_path, page, "#step=10")
    assert dom.body.get("data-step") == "10"
    assert [g["data-prompt-id"] for g in dom.groups] == ["10000", "10001", "10002", "10009"]
    assert [g["data-status"] for g in dom.groups] == ["trained"] * 3 + ["filtered"]
    # a group that did not train has no advantages: its completions are sorted by reward
    assert [c["data-reward"] for c in dom.groups[-1]["completions"]] == ["4", "3", "1", "0"]
    assert dump(tmp_path, page, "#step=20").body.get("data-step") == "20"
    assert dump(tmp_path, page, "#step=999").body.get("data-step") == "0"  # no such step: the first


@needs_chromium
def test_the_reward_filter_hides_completions_outside_the_range(tmp_path, page):
    dom = dump(tmp_path, page, "#step=10&component=format&min=0.5")
    for shown in dom.groups:
        visible = [c for c in shown["completions"] if "hidden" not in c]
        assert [float(c["data-score-format"]) for c in visible] == [1.0, 1.0]
        assert all(float(c["data-score-format"]) < 0.5 for c in shown["completions"] if "hidden" in c)
    assert dom.body.get("data-visible-completions") == str(2 * 4)
    dom = dump(tmp_path, page, "#step=10&component=accuracy&min=1&max=3&status=trained")
    assert [g.get("hidden") is None for g in dom.groups] == [True, True, True, False]
    assert dom.body.get("data-visible-groups") == "3" and dom.body.get("data-visible-completions") == "6"


# ------------------------------------------------------------------------------------------ training over steps
def stats_group(std, trained=True, filtered=False, rewards=(1.0, 0.0), fmt=(1.0, None), lengths=(10, 20)):
    completions = [
        {"reward": r, "scores": {"format": f}, "length": n} for r, f, n in zip(rewards, fmt, lengths, strict=True)
    ]
    return {"reward_std": std, "trained": trained, "filtered": filtered, "completions": completions}


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        (  # two trained groups, one without a spread: it teaches nothing
            [stats_group(0.5), stats_group(0.0, rewards=(2.0, 2.0), fmt=(0.0, 0.0))],
            dict(trained=2, reward=1.25, format=1 / 3, zero_std_trained=0.5, zero_std_sampled=0.5, filtered=0.0),
        ),
        (  # dynamic sampling left one out: counted over the sampled groups, and not in the means
            [stats_group(0.5), stats_group(0.0, trained=False, filtered=True, rewards=(9.0, 9.0))],
            dict(trained=1, reward=0.5, format=1.0, zero_std_trained=0.0, zero_std_sampled=0.5, filtered=0.5),
        ),
        (  # filled: no spread, trained because the rounds ran out; trained, so not left out
            [stats_group(0.0, filtered=True)],
            dict(trained=1, reward=0.5, format=1.0, zero_std_trained=1.0, zero_std_sampled=1.0, filtered=0.0),
        ),
        (  # a spread no reward could measure (NaN written as null), rewards and scores with no opinion
            [stats_group(None, rewards=(None, 1.0), fmt=(None, None))],
            dict(trained=1, reward=1.0, format=None, zero_std_trained=None, zero_std_sampled=None, filtered=0.0),
        ),
        (  # nothing trained: no means
            [stats_group(0.3, trained=False)],
            dict(trained=0, reward=None, format=None, zero_std_trained=None, zero_std_sampled=0.0, filtered=0.0),
        ),
    ],
)
def test_step_statistics(groups, expected):
    (row,) = step_statistics([{"step": 7, "groups": groups}], ["format"])
    found = {key: row[key] for key in expected if key != "format"} | {"format": row["scores"]["format"]}
    assert found == pytest.approx(expected)
    assert row["step"] == 7 and row["sampled"] == len(groups)
    trained_lengths = [10, 20] if row["trained"] else []
    assert row["length"] == (15.0 if trained_lengths else None)
    assert row["max_length"] == (20 if trained_lengths else None)


def test_step_statistics_of_the_run_follow_its_steps(run_folder):
    rows = step_statistics(read_rollouts(run_folder), NAMES)
    assert [(r["step"], r["sampled"], r["trained"]) for r in rows] == [(0, 2, 2), (10, 4, 3), (20, 1, 1)]
    assert [r["reward"] for r in rows] == [2.0, 2.0, 2.0]  # 1, 3, 0, 4 in every group
    assert [r["scores"] for r in rows] == [{"accuracy": 1.5, "format": 0.5}] * 3
    assert [r["filtered"] for r in rows] == [0.0, 0.25, 0.0]


def charts_of(page_text: str) -> list[str]:
    return re.findall(r"<svg .*?</svg>", page_text, flags=re.DOTALL)


def test_the_page_charts_every_logged_step_each_point_a_link_to_it(page):
    text = page.read_text(encoding="utf-8")
    charts = charts_of(text)
    assert len(charts) == 4 and "Training over steps" in text
    reward, components, spread, length = charts
    assert reward.count('<circle class="point"') == 3  # steps 0, 10, 20
    assert components.count('<circle class="point"') == 3 * len(NAMES)
    assert spread.count('<circle class="point"') == 3 * 3  # trained, sampled, and left out: step 10 left one out
    assert "left out (dynamic sampling)" in spread
    assert length.count('<circle class="point"') == 3 * 2  # mean and longest
    links = re.findall(r'<a href="([^"]*)">', "".join(charts))
    assert sorted(set(links)) == ["#step=0", "#step=10", "#step=20"]
    assert len(links) == 3 * (1 + 2 + 3 + 2)


def test_one_logged_step_charts_one_point(tmp_path):
    (tmp_path / "rollouts").mkdir()
    line = json.dumps(group(40, 0, tmp_path / "absent.png"), ensure_ascii=False)
    (tmp_path / "rollouts" / "step=40.jsonl").write_text(line + "\n", encoding="utf-8")
    charts = charts_of(render_rollouts(tmp_path))
    assert len(charts) == 4
    for chart in charts:
        assert "<polyline" not in chart and "no data" not in chart
        assert chart.count("<circle") == chart.count('<a href="#step=40">') >= 1
    assert "left out (dynamic sampling)" not in charts[2]  # nothing was: no line for it


@needs_chromium
def test_the_current_steps_points_are_marked(tmp_path, page):
    dom = dump(tmp_path, page, "#step=10")
    assert dom.charts == 4
    current = {link["href"] for link in dom.links if "current" in (link.get("class") or "").split()}
    assert current == {"#step=10"}
    assert sum(link["href"] == "#step=10" for link in dom.links) == 1 + 2 + 3 + 2  # every chart's point of step 10


@needs_chromium
def test_rollouts_screenshot_shows_the_charts(tmp_path, page):
    boxes = screenshot_artifact(tmp_path, page.as_uri() + "#step=10", "rollouts.png", (1300, 1200))
    assert len(boxes) == 4 and all(width > 200 and height > 150 for _, _, width, height in boxes)
    assert all(top + height <= 1200 for _, top, _, height in boxes), "the charts are in the first screen"
    with Image.open(ROOT / "test-artifacts" / "rollouts.png") as shot:
        reward, components, spread, length = boxes
        assert colour_pixels(shot, reward, PALETTE[0]) > 100  # the line and its points
        for chart in (components, spread, length):  # a second (dashed) series in each
            assert colour_pixels(shot, chart, PALETTE[0]) > 100 and colour_pixels(shot, chart, PALETTE[1]) > 50
        assert colour_pixels(shot, spread, PALETTE[2]) > 50  # the groups left out
