"""Tests of the HTML report: image lookup, escaping, self-containment, and the page's filters in Chromium.

The browser tests run Debian's headless ``chromium`` on the written page (``--dump-dom`` after its script
ran) and leave a screenshot in ``test-artifacts/report.png`` at the repository root.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image

from grpo_lightning.metrics import evaluate_predictions
from grpo_lightning.report import (
    ASSETS_DIR,
    PAGE_ASSETS,
    asset_text,
    find_image,
    render_report,
    render_rollouts,
    score_key,
    write_report,
)
from tests.helpers import ROOT, XSS_IMG, XSS_SCRIPT, chromium, needs_chromium, screenshot_artifact


def _record(qid, pred_ans, gt_ans, pred_explain, gt_explain, answer_type, **extra) -> dict:
    return {
        "question_id": qid,
        "question": f"Câu hỏi số {qid}: con vật nào đang ngủ?",
        "pred_ans": pred_ans,
        "pred_explain": pred_explain,
        "gt_ans": gt_ans,
        "gt_explain": gt_explain,
        "answer_type": answer_type,
        **extra,
    }


RECORDS = [
    _record("262284001", "mèo", "mèo", "con mèo đang ngủ trên ghế sofa", ["con mèo nằm ngủ trên ghế sofa"], "other"),
    _record("7001", "có", "có", "vì trời đang mưa to", ["trời đang mưa", "mặt đường ướt"], "yes/no", image_id="393372"),
    _record("9001", "không", "có", XSS_SCRIPT, ["người đàn ông cầm ô"], "yes/no", image_name="own_name.png"),
    _record("9002", "hai", "ba", "có hai con chó", ["có ba con chó trên bãi cỏ"], "number", think=XSS_IMG),
    _record("9003", "xanh", "đỏ", "chiếc xe màu xanh", ["chiếc xe buýt màu đỏ"], "other", image_name="broken.jpg"),
    _record("abc", XSS_IMG, "một", "một con chim", ["có một con chim đậu trên cành"], "number", completion="<b>x</b>"),
]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """COCO 2014 val naming for two records, the record's own name for one, a corrupt file, two missing."""
    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (640, 480), (200, 60, 40)).save(folder / "COCO_val2014_000000262284.jpg")
    Image.new("RGB", (300, 500), (40, 120, 200)).save(folder / "COCO_val2014_000000393372.jpg")
    Image.new("RGB", (64, 64), (60, 160, 60)).save(folder / "own_name.png")
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    return folder


@pytest.fixture(scope="module")
def scores():
    return evaluate_predictions(RECORDS, "normalized", metrics=("bleu", "rouge", "cider"))


@pytest.fixture(scope="module")
def page(tmp_path_factory, images, scores) -> Path:
    return write_report(tmp_path_factory.mktemp("report") / "report.html", RECORDS, scores, images)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"question_id": "262284001"}, "COCO_val2014_000000262284.jpg"),  # image 262284, question 1
        ({"question_id": 262284001}, "COCO_val2014_000000262284.jpg"),
        ({"question_id": "x", "image_id": "393372"}, "COCO_val2014_000000393372.jpg"),
        ({"question_id": "1", "image_id": 555}, "COCO_train2014_000000000555.jpg"),
        ({"question_id": "1", "image_id": 777}, "000000000777.jpg"),  # COCO 2017 naming
        ({"question_id": "1", "image_name": "own_name.png"}, "own_name.png"),
        ({"question_id": "1", "image_name": "../../images/own_name.png"}, "own_name.png"),  # a bare name only
        ({"question_id": "123", "image_name": "absent.jpg"}, None),
        ({"question_id": "abc"}, None),
    ],
)
def test_find_image(tmp_path, record, expected):
    for name in ("COCO_val2014_000000262284.jpg", "COCO_val2014_000000393372.jpg", "own_name.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "COCO_train2014_000000000555.jpg").write_bytes(b"")
    (tmp_path / "000000000777.jpg").write_bytes(b"")
    found = find_image(tmp_path, record)
    assert (found.name if found else None) == expected


@pytest.mark.parametrize(("column", "key"), [("BLEU-4", "bleu-4"), ("ROUGE_L", "rouge-l"), ("CIDEr", "cider")])
def test_score_key(column, key):
    assert score_key(column) == key


def test_page_escapes_model_output_and_is_self_contained(page):
    text = page.read_text(encoding="utf-8")
    assert text.count("<tr class='sample") == len(RECORDS)
    assert "<script>document.body" not in text and "<img src=x" not in text and "<b>x</b>" not in text
    assert "&lt;script&gt;document.body.setAttribute(&#x27;data-pwned&#x27;" in text
    assert "&quot;&#x27;&gt;&lt;img src=x onerror=" in text
    assert text.count("<script") == 1  # the page's own
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", text), "the page must load nothing from the network"
    assert text.count("src='data:image/jpeg;base64,") == 3
    assert "unreadable image broken.jpg" in text and "image not found: COCO_val2014_000000000009.jpg" in text
    assert text.count("class='placeholder'") == 3  # the broken file and two records without an image
    assert "Câu hỏi số 7001: con vật nào đang ngủ?" in text  # Vietnamese text kept as is


def test_content_security_policy_allows_exactly_the_page_script(page):
    text = page.read_text(encoding="utf-8")
    script = re.search(r"<script>(.*)</script>", text, flags=re.DOTALL).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    assert f"script-src 'sha256-{digest}'" in text and "default-src 'none'" in text


def test_render_report_needs_the_scores_of_the_same_records(scores):
    with pytest.raises(ValueError, match="6 per-sample scores"):
        render_report(RECORDS[:2], scores)


def test_without_an_image_folder_every_image_is_a_placeholder(scores):
    text = render_report(RECORDS, scores, images_dir=None, title="<Báo cáo>")
    assert text.count("no image folder given") == len(RECORDS) and "<title>&lt;Báo cáo&gt;</title>" in text


def test_page_assets_are_package_data_embedded_verbatim(tmp_path, scores):
    """Every CSS and JavaScript file a page names is found through importlib.resources, as an installed wheel has it
    by pyproject.toml's package data, and the page holds each file's text as written, the style sheets in order."""
    folder = resources.files("grpo_lightning") / ASSETS_DIR
    named = {name for names in PAGE_ASSETS.values() for name in names}
    assert sorted(entry.name for entry in folder.iterdir()) == sorted(named)  # none missing, none left unused
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"grpo_lightning.report_assets" = ["*.css", "*.js"]' in pyproject
    assert all(name.endswith((".css", ".js")) for name in named)  # the patterns a wheel ships
    (tmp_path / "rollouts").mkdir()
    (tmp_path / "rollouts" / "step=0.jsonl").write_text(json.dumps({"completions": []}) + "\n", encoding="utf-8")
    pages = {"evaluation": render_report(RECORDS, scores), "rollouts": render_rollouts(tmp_path)}
    assert pages.keys() == PAGE_ASSETS.keys()
    for kind, names in PAGE_ASSETS.items():
        texts = {name: (folder / name).read_text(encoding="utf-8") for name in names}
        assert all(text.strip() and asset_text(name) == text for name, text in texts.items())
        css = "".join(text for name, text in texts.items() if name.endswith(".css"))
        (js,) = (text for name, text in texts.items() if name.endswith(".js"))
        assert f"<style>\n{css}</style>" in pages[kind] and f"<script>\n{js}</script>" in pages[kind]


# ------------------------------------------------------------------------------------------ in Chromium
class _Rows(HTMLParser):
    """The sample rows of a dumped page, in document order, and the body's attributes."""

    def __init__(self, text: str):
        super().__init__()
        self.rows: list[dict[str, str | None]] = []
        self.body: dict[str, str | None] = {}
        self.ids: set[str] = set()
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "tr" and "sample" in (attributes.get("class") or "").split():
            self.rows.append(attributes)
        elif tag == "body":
            self.body = attributes
        if attributes.get("id"):
            self.ids.add(attributes["id"])


def _dump(tmp_path: Path, page: Path, fragment: str = "") -> _Rows:
    return _Rows(chromium(tmp_path, page.as_uri() + fragment, "--dump-dom"))


@needs_chromium
def test_page_shows_every_row_and_its_controls(tmp_path, page):
    dom = _dump(tmp_path, page)
    assert {"filter-correct", "filter-type", "sort", "shown"} <= dom.ids
    assert [row["data-index"] for row in dom.rows] == [str(i) for i in range(len(RECORDS))]
    assert not any("hidden" in row for row in dom.rows)
    assert dom.body.get("data-visible") == str(len(RECORDS))  # the script ran
    assert "data-pwned" not in dom.body  # and nothing from the predictions did


@needs_chromium
def test_fragment_filters_out_correct_answers(tmp_path, page, scores):
    dom = _dump(tmp_path, page, "#filter=incorrect")
    hidden = {row["data-index"] for row in dom.rows if "hidden" in row}
    correct = {str(s["index"]) for s in scores.per_sample if s["correct"]}
    assert hidden == correct and len(correct) == 2
    assert dom.body.get("data-visible") == str(len(RECORDS) - len(correct))
    assert "data-pwned" not in dom.body


@needs_chromium
def test_fragment_filters_by_answer_type_and_sorts_by_score(tmp_path, page, scores):
    dom = _dump(tmp_path, page, "#type=yes/no&sort=cider:asc")
    visible = [row for row in dom.rows if "hidden" not in row]
    assert {row["data-answer-type"] for row in visible} == {"yes/no"} and len(visible) == 2
    cider = [float(row["data-score-cider"]) for row in dom.rows]
    assert cider == sorted(s["CIDEr"] for s in scores.per_sample)


@needs_chromium
def test_screenshot_artifact(tmp_path, page):
    screenshot_artifact(tmp_path, page.as_uri() + "#sort=bleu-1:desc", "report.png", (1400, 1400))
