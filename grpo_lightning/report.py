"""A self-contained HTML page for browsing scored predictions, one row per sample.

The page embeds everything (CSS, a small vanilla script, images as base64 JPEG thumbnails), loads nothing
from the network, and escapes every piece of text, since predictions are model output. A Content Security
Policy allows only the page's own script (by its SHA-256), so even an unescaped ``<script>`` could not run.

Rows can be filtered by correctness and answer type and sorted by any per-sample score, with the controls
at the top or through the address's fragment, which the page reads at load and keeps up to date:
``report.html#filter=incorrect&type=yes/no&sort=cider:asc`` (``filter``: all, correct, incorrect;
``type``: all or an answer type; ``sort``: ``index`` or a score key and ``asc``/``desc``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from grpo_lightning.metrics import Scores

#: The longer side of the embedded thumbnails, in pixels.
THUMBNAIL_SIDE = 192

_PER_SAMPLE_BOOKKEEPING = ("index", "question_id", "correct")


def coco_image_id(record: dict[str, Any]) -> int | None:
    """The COCO image id of a record: its ``image_id``, or else read from a VQA-style ``question_id``.

    VQA (and so ViVQA-X) question ids are ``image_id * 1000 + k``: question "262284001" is about image 262284.
    """
    image_id = str(record.get("image_id", ""))
    if image_id.isdigit():
        return int(image_id)
    question_id = str(record.get("question_id", ""))
    if question_id.isdigit() and len(question_id) > 3:
        return int(question_id[:-3])
    return None


def image_file_names(record: dict[str, Any]) -> list[str]:
    """File names to look for, best first: ``image_name``, then COCO 2014 val/train and COCO 2017 naming."""
    names = []
    if isinstance(record.get("image_name"), str) and record["image_name"]:
        names.append(Path(record["image_name"]).name)  # a bare name: never a path out of the folder
    image_id = coco_image_id(record)
    if image_id is not None:
        names += [f"COCO_val2014_{image_id:012d}.jpg", f"COCO_train2014_{image_id:012d}.jpg", f"{image_id:012d}.jpg"]
    return names


def find_image(images_dir: Path, record: dict[str, Any]) -> Path | None:
    """The record's image in ``images_dir`` (see :func:`image_file_names`), or None when there is none."""
    for name in image_file_names(record):
        path = images_dir / name
        if path.is_file():
            return path
    return None


def thumbnail_data_uri(path: Path, max_side: int = THUMBNAIL_SIDE) -> str:
    """A ``data:image/jpeg;base64,...`` thumbnail of the image at ``path``.

    Raises:
        OSError: when the file is not a readable image.
    """
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def score_key(column: str) -> str:
    """The key of a score column in the page (attributes, the ``sort=`` fragment): "BLEU-4" -> "bleu-4"."""
    return re.sub(r"[^a-z0-9]+", "-", column.lower()).strip("-")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d1d1f; }
h1 { font-size: 1.4em; margin: 0 0 .4em; }
table { border-collapse: collapse; }
.summary td, .summary th { padding: .2em .8em; border-bottom: 1px solid #ddd; text-align: right; }
.summary th:first-child, .summary td:first-child { text-align: left; }
.notes { color: #8a5300; }
#controls { position: sticky; top: 0; background: #fff; padding: .6em 0; margin: 1em 0 .5em;
  border-bottom: 2px solid #ccc; display: flex; gap: 1.2em; align-items: center; flex-wrap: wrap; }
#samples td { vertical-align: top; padding: .5em .6em; border-bottom: 1px solid #e5e5e5; }
tr.sample.correct { border-left: 6px solid #2e9d49; }
tr.sample.incorrect { border-left: 6px solid #d33a2c; }
.mark { font-weight: bold; font-size: 1.2em; }
.correct .mark { color: #2e9d49; }
.incorrect .mark { color: #d33a2c; }
.thumb { width: 192px; }
.thumb img { max-width: 192px; max-height: 192px; display: block; }
.placeholder { width: 160px; height: 110px; background: repeating-linear-gradient(45deg, #eee, #eee 8px, #f7f7f7 8px,
  #f7f7f7 16px); color: #777; display: flex; align-items: center; justify-content: center; text-align: center;
  font-size: .85em; padding: .3em; }
.label { color: #777; font-size: .8em; text-transform: uppercase; letter-spacing: .04em; }
.pred { font-weight: 600; }
ol.refs { margin: .2em 0 0 1.2em; padding: 0; }
.scores td { padding: 0 .4em; border: 0; font-size: .85em; font-variant-numeric: tabular-nums; }
details pre { white-space: pre-wrap; max-width: 40em; background: #f6f6f6; padding: .4em; }
"""

_SCRIPT = """
"use strict";
(function () {
  var tbody = document.getElementById("samples");
  var rows = Array.prototype.slice.call(tbody.querySelectorAll("tr.sample"));
  var correctSelect = document.getElementById("filter-correct");
  var typeSelect = document.getElementById("filter-type");
  var sortSelect = document.getElementById("sort");
  var shown = document.getElementById("shown");

  function choose(select, value) {
    for (var i = 0; i < select.options.length; i++) {
      if (select.options[i].value === value) { select.value = value; return; }
    }
  }
  function readFragment() {
    var params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    if (params.has("filter")) choose(correctSelect, params.get("filter"));
    if (params.has("type")) choose(typeSelect, params.get("type"));
    if (params.has("sort")) choose(sortSelect, params.get("sort"));
  }
  function writeFragment() {
    var params = new URLSearchParams();
    if (correctSelect.value !== "all") params.set("filter", correctSelect.value);
    if (typeSelect.value !== "all") params.set("type", typeSelect.value);
    if (sortSelect.value !== "index") params.set("sort", sortSelect.value);
    var text = params.toString();
    history.replaceState(null, "", text ? "#" + text : window.location.pathname + window.location.search);
  }
  function score(row, key) {
    var value = parseFloat(row.getAttribute("data-score-" + key));
    return isNaN(value) ? -Infinity : value;
  }
  function apply() {
    var visible = 0;
    rows.forEach(function (row) {
      var keep = (correctSelect.value === "all" || row.getAttribute("data-correct") === correctSelect.value) &&
        (typeSelect.value === "all" || row.getAttribute("data-answer-type") === typeSelect.value);
      row.hidden = !keep;
      if (keep) visible += 1;
    });
    var order = rows.slice();
    if (sortSelect.value !== "index") {
      var parts = sortSelect.value.split(":");
      var sign = parts[1] === "asc" ? 1 : -1;
      order.sort(function (a, b) {
        var diff = (score(a, parts[0]) - score(b, parts[0])) * sign;
        return diff || (Number(a.getAttribute("data-index")) - Number(b.getAttribute("data-index")));
      });
    }
    order.forEach(function (row) { tbody.appendChild(row); });
    shown.textContent = "showing " + visible + " of " + rows.length;
    document.body.setAttribute("data-visible", String(visible));
  }
  [correctSelect, typeSelect, sortSelect].forEach(function (select) {
    select.addEventListener("change", function () { apply(); writeFragment(); });
  });
  window.addEventListener("hashchange", function () { readFragment(); apply(); });
  readFragment();
  apply();
})();
"""


def _summary_html(scores: Scores) -> str:
    columns = list(dict.fromkeys([*scores.unfiltered, *scores.filtered]))
    rows = "".join(
        f"<tr><td>{_e(c)}</td><td>{_fmt(scores.unfiltered.get(c))}</td><td>{_fmt(scores.filtered.get(c))}</td>"
        f"<td>{_fmt(scores.scaled.get(c))}</td></tr>"
        for c in columns
    )
    by_type = "".join(
        f"<tr><td>{_e(kind)}</td><td>{_fmt(v['accuracy'])}</td><td>{int(v['num_samples'])}</td></tr>"
        for kind, v in scores.accuracy_by_answer_type.items()
    )
    notes = "".join(f"<li>{_e(message)}</li>" for message in scores.skipped.values())
    return (
        f"<p>Protocol <b>{_e(scores.protocol)}</b>; accuracy <b id='accuracy'>{_fmt(scores.accuracy)}</b> "
        f"({scores.num_correct} of {scores.num_samples} answers correct). Scores are fractions (0-1, CIDEr 0-10); "
        "filtered = correctly answered samples only, scaled = unfiltered × accuracy.</p>"
        "<table class='summary'><thead><tr><th>metric</th><th>unfiltered</th><th>filtered</th><th>scaled</th></tr>"
        f"</thead><tbody>{rows}</tbody></table>"
        + (
            "<table class='summary'><thead><tr><th>answer type</th><th>accuracy</th><th>samples</th></tr></thead>"
            f"<tbody>{by_type}</tbody></table>"
            if by_type
            else ""
        )
        + (f"<ul class='notes'>{notes}</ul>" if notes else "")
    )


def _controls_html(columns: Sequence[str], answer_types: Sequence[str]) -> str:
    types = "".join(f"<option value='{_e(kind)}'>{_e(kind)}</option>" for kind in answer_types)
    sorts = "".join(
        f"<option value='{score_key(c)}:{direction}'>{_e(c)}, {label}</option>"
        for c in columns
        for direction, label in (("desc", "high first"), ("asc", "low first"))
    )
    return (
        "<div id='controls'>"
        "<label>Answers <select id='filter-correct'><option value='all'>all</option>"
        "<option value='correct'>correct</option><option value='incorrect'>incorrect</option></select></label>"
        f"<label>Answer type <select id='filter-type'><option value='all'>all</option>{types}</select></label>"
        f"<label>Sort <select id='sort'><option value='index'>file order</option>{sorts}</select></label>"
        "<span id='shown'></span></div>"
    )


def _image_html(images_dir: Path | None, record: dict[str, Any]) -> str:
    if images_dir is None:
        return "<div class='placeholder'>no image folder given (--images)</div>"
    path = find_image(images_dir, record)
    if path is None:
        names = image_file_names(record)
        return f"<div class='placeholder'>image not found{': ' + _e(names[0]) if names else ''}</div>"
    try:
        uri = thumbnail_data_uri(path)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return f"<div class='placeholder'>unreadable image {_e(path.name)}: {_e(type(err).__name__)}</div>"
    return f"<img src='{uri}' alt='{_e(path.name)}'>"


def _row_html(record: dict[str, Any], sample: dict[str, Any], columns: Sequence[str], image: str) -> str:
    correct = "correct" if sample["correct"] else "incorrect"
    answer_type = record["answer_type"] if isinstance(record.get("answer_type"), str) else None
    type_attr = "" if answer_type is None else f" data-answer-type='{_e(answer_type)}'"
    score_attrs = "".join(f" data-score-{score_key(c)}='{_e(repr(sample[c]))}'" for c in columns)
    scores = "".join(f"<tr><td>{_e(c)}</td><td>{_fmt(sample[c])}</td></tr>" for c in columns)
    refs = "".join(f"<li>{_e(ref)}</li>" for ref in record["gt_explain"])
    extra = "".join(
        f"<details><summary>{name}</summary><pre>{_e(record[name])}</pre></details>"
        for name in ("think", "completion")
        if isinstance(record.get(name), str)
    )
    return (
        f"<tr class='sample {correct}' data-index='{sample['index']}' data-correct='{correct}'"
        f"{type_attr}{score_attrs}>"
        f"<td><span class='mark' title='{correct}'>{'✓' if sample['correct'] else '✗'}</span><br>"
        f"#{sample['index']}<br><span class='label'>{_e(record['question_id'])}</span></td>"
        f"<td class='thumb'>{image}</td>"
        f"<td><div class='label'>question{'' if answer_type is None else ' · ' + _e(answer_type)}</div>"
        f"{_e(record['question'])}</td>"
        f"<td><div class='label'>predicted</div><div class='pred'>{_e(record['pred_ans'])}</div>"
        f"<div class='label'>ground truth</div><div>{_e(record['gt_ans'])}</div></td>"
        f"<td><div class='label'>predicted explanation</div><div class='pred'>{_e(record['pred_explain'])}</div>"
        f"<div class='label'>references</div><ol class='refs'>{refs}</ol>{extra}</td>"
        f"<td><table class='scores'>{scores}</table></td></tr>"
    )


def render_report(
    records: Sequence[dict[str, Any]],
    scores: Scores,
    images_dir: Path | None = None,
    title: str = "Predictions",
    progress: bool = False,
) -> str:
    """The HTML page for ``records`` and their ``scores``, as one self-contained string.

    Args:
        records: the prediction records that were scored (public format; ``answer_type``, ``image_name``,
            ``image_id``, ``think``, ``completion`` are shown when present).
        scores: ``evaluate_predictions(records, ...)``; its ``per_sample`` gives each row's scores.
        images_dir: the folder of the images; None shows placeholders. A missing or unreadable image is
            a placeholder too.
        title: the page title (escaped).
        progress: show a tqdm bar over the rows (embedding thumbnails is the slow part).

    Raises:
        ValueError: when ``scores`` does not have one per-sample entry per record.
    """
    if len(scores.per_sample) != len(records):
        raise ValueError(
            f"{len(records)} records but {len(scores.per_sample)} per-sample scores; "
            "pass the scores of these same records."
        )
    columns = [c for c in (scores.per_sample[0] if scores.per_sample else {}) if c not in _PER_SAMPLE_BOOKKEEPING]
    answer_types = sorted({r["answer_type"] for r in records if isinstance(r.get("answer_type"), str)})
    rows = "".join(
        _row_html(record, sample, columns, _image_html(images_dir, record))
        for record, sample in tqdm(
            list(zip(records, scores.per_sample, strict=True)), desc="report", unit="sample", disable=not progress
        )
    )
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode("utf-8")).digest()).decode("ascii")
    policy = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    return (
        "<!DOCTYPE html><html lang='vi'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{policy}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_e(title)}</h1>{_summary_html(scores)}{_controls_html(columns, answer_types)}"
        "<table><thead><tr><th></th><th>image</th><th>question</th><th>answer</th><th>explanation</th>"
        f"<th>scores</th></tr></thead><tbody id='samples'>{rows}</tbody></table>"
        f"<script>{_SCRIPT}</script></body></html>"
    )


def write_report(
    path: Path,
    records: Sequence[dict[str, Any]],
    scores: Scores,
    images_dir: Path | None = None,
    title: str | None = None,
    progress: bool = False,
) -> Path:
    """Writes :func:`render_report` to ``path`` (UTF-8) and returns ``path``; the title defaults to its name."""
    path = Path(path)
    page = render_report(records, scores, images_dir, title or path.stem, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
