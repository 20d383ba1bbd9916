"""Tests of the HTML report: image lookup, escaping, self-containment, and the page's filters in Chromium.

The browser tests run Debian's headless ``chromium`` on the written page (``--dump-dom`` after its script
ran) and leave a screenshot in ``test-artifacts/report.png`` at the repository root.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image

from grpo_lightning.metrics import evaluate_predictions
from grpo_lightning.predictions_file import PredictionsMetadata, read_metadata, write_predictions
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
from grpo_lightning.svg_plots import PALETTE
from tests.helpers import ROOT, XSS_IMG, XSS_SCRIPT, chromium, colour_pixels, needs_chromium, screenshot_artifact


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


#: The per-sample scores of ``scores`` (bleu, rouge, cider), each with a histogram.
COLUMNS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE_L", "CIDEr"]
METADATA = PredictionsMetadata(
    model_name_or_path="OpenGVLab/InternVL3-1B-hf",
    checkpoint="runs/v0/checkpoints/step=50.ckpt",
    protocol="normalized",
    created="2025-06-01T12:00:00+00:00",
    dataset_file="data/ViVQA-X_test.json",
    grpo_lightning_version="0.1.0",
)


def header_fields(text: str) -> dict[str, str]:
    """The header's fields, by name, as their HTML."""
    return dict(re.findall(r"<dd data-field='([a-z ]+)'>(.*?)</dd>", text, flags=re.DOTALL))


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


# ------------------------------------------------------------------------------------------ header, protocols, charts
@pytest.mark.parametrize(
    ("metadata", "rewrite", "expected", "note"),
    [
        (
            METADATA,
            False,
            {
                "model": "OpenGVLab/InternVL3-1B-hf",
                "checkpoint": "runs/v0/checkpoints/step=50.ckpt",
                "data": "data/ViVQA-X_test.json",
                "predicted": "2025-06-01T12:00:00+00:00",
                "written by": "grpo_lightning 0.1.0",
            },
            None,
        ),
        (
            PredictionsMetadata(**{**METADATA.__dict__, "checkpoint": None}),
            False,
            {"checkpoint": "<span class='unknown'>none: the base model's own weights</span>"},
            None,
        ),
        (  # the public baselines' files have no metadata
            None,
            False,
            {name: "<span class='unknown'>unknown</span>" for name in ("model", "checkpoint", "data", "predicted")},
            "no preds.meta.json beside preds.json: the model, checkpoint and date are unknown.",
        ),
        (  # metadata of another version of the file is not shown
            METADATA,
            True,
            {name: "<span class='unknown'>unknown</span>" for name in ("model", "checkpoint", "data", "predicted")},
            "preds.meta.json describes another version of preds.json (its SHA-256 differs), so it is not shown.",
        ),
    ],
)
def test_header_says_what_was_evaluated(tmp_path, scores, metadata, rewrite, expected, note):
    predictions = tmp_path / "preds.json"
    if metadata is None:
        predictions.write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    else:
        write_predictions(predictions, RECORDS, metadata)
    if rewrite:
        predictions.write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    path = write_report(tmp_path / "report.html", RECORDS, scores, source=predictions, run=read_metadata(predictions))
    text = path.read_text(encoding="utf-8")
    fields = header_fields(text)
    assert {name: fields[name] for name in expected} == expected
    assert fields["predictions"] == f"{predictions} (6 records)"
    assert "<title>Evaluation of preds.json</title>" in text
    assert fields["report made"].endswith("by grpo_lightning 0.1.0")
    assert "<b>normalized</b> (the explanation metrics use it)" in fields["protocols"]
    assert ("The run validates with <b>normalized</b>." in fields["protocols"]) == (
        metadata is not None and not rewrite
    )
    assert (
        (f"<p class='notes'>{html.escape(note, quote=True)}</p>" in text) if note else "<p class='notes'>" not in text
    )


def test_a_page_made_without_a_file_says_so(scores):
    fields = header_fields(render_report(RECORDS, scores, generated="2025-06-02T08:00:00+00:00"))
    assert fields["predictions"] == "<span class='unknown'>unknown</span> (6 records)"
    assert fields["model"] == "<span class='unknown'>unknown</span>"
    assert fields["report made"] == "2025-06-02T08:00:00+00:00 by grpo_lightning 0.1.0"


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [
        (
            "pred_ans",
            "",
            "<div class='label'>predicted</div><div class='pred'><span class='empty'>(empty)</span></div>",
        ),
        ("pred_ans", "  ", "<div class='pred'><span class='empty'>(empty)</span></div><div class='label'>ground"),
        ("pred_explain", "", "explanation</div><div class='pred'><span class='empty'>(empty)</span></div>"),
        ("gt_explain", ["", "có"], "<ol class='refs'><li><span class='empty'>(empty)</span></li><li>có</li></ol>"),
        ("pred_ans", "0", "<div class='pred'>0</div>"),  # a falsy-looking answer is still an answer
    ],
)
def test_empty_text_reads_empty(field, value, shown):
    records = [{**RECORDS[0], field: value}]
    text = render_report(records, evaluate_predictions(records, "raw", metrics=("bleu",)))
    assert shown in text
    assert "<div class='pred'></div>" not in text


def test_both_protocols_accuracy_side_by_side(scores):
    text = render_report(RECORDS, scores)
    table = re.search(r"<table class='summary' id='accuracy-by-protocol'>.*?</table>", text, flags=re.DOTALL).group(0)
    rows = re.findall(r"<tr data-answer-type='([^']+)'>(.*?)</tr>", table)
    cells = {kind: re.findall(r"<td>([^<]*)</td>", row)[1:] for kind, row in rows}
    # ✓ ✓ ✗ ✗ ✗ ✗ under both: "không" is no "có", whichever way they are compared
    assert cells == {
        "all": ["0.3333", "0.3333", "6"],
        "number": ["0.0000", "0.0000", "2"],
        "other": ["0.5000", "0.5000", "2"],
        "yes/no": ["0.5000", "0.5000", "2"],
    }
    assert re.findall(r"<th data-protocol='([^']+)'>", table) == ["raw", "normalized"]
    assert "use <b>normalized</b>, accuracy <b id='accuracy'>0.3333</b>" in text


def test_a_sample_the_protocols_disagree_on_says_so():
    records = [{**RECORDS[1], "pred_ans": "đúng"}, RECORDS[0]]  # "đúng" = "có" when normalized only
    text = render_report(records, evaluate_predictions(records, "raw", metrics=("bleu",)))
    assert text.count("class='label disagree'") == 1
    assert "raw ✗ · normalized ✓" in text
    assert "raw: 1 of 2; normalized: 2 of 2" in text


def test_the_page_charts_accuracy_and_each_scores_distribution(scores):
    text = render_report(RECORDS, scores)
    charts = re.findall(r"<svg .*?</svg>", text, flags=re.DOTALL)
    assert len(charts) == 1 + len(COLUMNS)
    bars = charts[0]
    assert bars.count('<rect class="bar"') == 2 * (1 + 3)  # raw and normalized, over all and 3 answer types
    assert "Accuracy by answer type and protocol" in bars
    assert re.findall(r"data-metric='([^']+)'", text) == COLUMNS
    for chart in charts[1:]:
        counts = [int(n) for n in re.findall(r"<title>[^<]*: (\d+) of 6</title>", chart)]
        assert len(counts) == 10 and sum(counts) == len(RECORDS)


@needs_chromium
def test_screenshot_artifact(tmp_path, page):
    boxes = screenshot_artifact(tmp_path, page.as_uri() + "#sort=bleu-1:desc", "report.png", (1400, 1400))
    assert len(boxes) == 1 + len(COLUMNS)
    assert all(width > 200 and height > 150 for _, _, width, height in boxes), boxes
    with Image.open(ROOT / "test-artifacts" / "report.png") as shot:
        bars, *histograms = boxes
        assert colour_pixels(shot, bars, PALETTE[0]) > 500 and colour_pixels(shot, bars, PALETTE[1]) > 500
        shown = [box for box in histograms if box[1] + box[3] <= 1400]
        assert len(shown) >= 4, "the first row of histograms is in the first screen"
        for index, box in enumerate(shown):
            assert colour_pixels(shot, box, PALETTE[index % len(PALETTE)]) > 100
