"""A self-contained HTML page for browsing scored predictions, one row per sample.

The page embeds everything (CSS, a small vanilla script, images as base64 JPEG thumbnails), loads nothing
from the network, and escapes every piece of text, since predictions are model output. A Content Security
Policy allows only the page's own script (by its SHA-256), so even an unescaped ``<script>`` could not run.

Rows can be filtered by correctness and answer type and sorted by any per-sample score, with the controls
at the top or through the address's fragment, which the page reads at load and keeps up to date:
``report.html#filter=incorrect&type=yes/no&sort=cider:asc`` (``filter``: all, correct, incorrect;
``type``: all or an answer type; ``sort``: ``index`` or a score key and ``asc``/``desc``).

The same module makes the rollout browser of a training run (:func:`render_rollouts`): the records that
``logging.rollouts_every_n_steps`` has the run write (:mod:`grpo_lightning.rollout_log`), one page per run, paged by
step, each group with its image and its G completions sorted by advantage, filtered by reward component::

    python -m grpo_lightning.report --rollouts lightning_logs/demo/version_0   # writes <log_dir>/rollouts.html

Its fragment: ``#step=20&component=format&min=0.5&max=1&status=trained`` (``component``: ``reward`` or a reward
function's name; ``status``: all, trained, filtered).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import io
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from grpo_lightning.errors import UserError
from grpo_lightning.images import load_rgb
from grpo_lightning.metrics import Scores

#: The longer side of the embedded thumbnails, in pixels.
THUMBNAIL_SIDE = 192

#: The folder under a run's log folder that holds its rollout records (:mod:`grpo_lightning.rollout_log`).
ROLLOUTS_DIR = "rollouts"

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
    """A ``data:image/jpeg;base64,...`` thumbnail of the image at ``path``, as the model saw it (:func:`load_rgb`).

    Raises:
        OSError: when the file is not a readable image.
    """
    image = load_rgb(path)
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
    body = (
        f"{_summary_html(scores)}{_controls_html(columns, answer_types)}"
        "<table><thead><tr><th></th><th>image</th><th>question</th><th>answer</th><th>explanation</th>"
        f"<th>scores</th></tr></thead><tbody id='samples'>{rows}</tbody></table>"
    )
    return _page(title, _STYLE, body, _SCRIPT)


def _page(title: str, style: str, body: str, script: str) -> str:
    """A self-contained page: ``body`` under the title, then ``script``, the one script its Content Security Policy
    lets run (by its SHA-256); images only as data: URLs, nothing fetched."""
    script_hash = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    policy = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    return (
        "<!DOCTYPE html><html lang='vi'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{policy}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{style}</style></head><body>"
        f"<h1>{_e(title)}</h1>{body}<script>{script}</script></body></html>"
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


# ------------------------------------------------------------------------------------------ rollout browser
_ROLLOUT_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d1d1f; }
h1 { font-size: 1.4em; margin: 0 0 .4em; }
#controls { position: sticky; top: 0; background: #fff; padding: .6em 0; margin: 1em 0 .5em; z-index: 1;
  border-bottom: 2px solid #ccc; display: flex; gap: 1em; align-items: center; flex-wrap: wrap; }
#controls input { width: 6em; }
section.group { display: flex; gap: 1em; border-bottom: 1px solid #ddd; padding: .8em 0; }
section.group[data-status='trained'] { border-left: 6px solid #2e9d49; padding-left: .6em; }
section.group[data-status='filtered'] { border-left: 6px solid #aaa; padding-left: .6em; opacity: .8; }
section.group[data-status='filled'] { border-left: 6px solid #d9a400; padding-left: .6em; }
section.group[data-status='unused'] { border-left: 6px solid #6c8ebf; padding-left: .6em; }
.side { width: 200px; flex: none; }
.side img { max-width: 192px; max-height: 192px; display: block; }
.placeholder { width: 160px; height: 110px; background: repeating-linear-gradient(45deg, #eee, #eee 8px, #f7f7f7 8px,
  #f7f7f7 16px); color: #777; display: flex; align-items: center; justify-content: center; text-align: center;
  font-size: .8em; padding: .3em; overflow-wrap: anywhere; }
.label { color: #777; font-size: .8em; text-transform: uppercase; letter-spacing: .04em; }
ol.completions { margin: 0; padding-left: 1.6em; flex: 1; }
li.completion { margin: 0 0 .5em; }
li.completion pre { white-space: pre-wrap; margin: .1em 0; background: #f6f6f6; padding: .3em; }
.numbers { font-size: .85em; font-variant-numeric: tabular-nums; color: #333; }
.positive { color: #2e7d32; } .negative { color: #c62828; }
.truncated { color: #8a5300; font-weight: 600; }
"""

_ROLLOUT_SCRIPT = """
"use strict";
(function () {
  var data = JSON.parse(document.getElementById("rollout-data").textContent);
  var stepSelect = document.getElementById("step");
  var component = document.getElementById("component");
  var minInput = document.getElementById("min");
  var maxInput = document.getElementById("max");
  var statusSelect = document.getElementById("status");
  var container = document.getElementById("groups");
  var shown = document.getElementById("shown");
  var index = 0;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function fmt(value) { return value === null || value === undefined ? "\\u2013" : Number(value).toFixed(3); }
  function status(group) {
    if (group.trained) return group.filtered ? "filled" : "trained";
    return group.filtered ? "filtered" : "unused";
  }
  function value(completion, key) {
    return key === "reward" ? completion.reward : completion.scores[key];
  }
  function bound(input) {
    var number = parseFloat(input.value);
    return isNaN(number) ? null : number;
  }
  function readFragment() {
    var params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    if (params.has("step")) {
      var found = data.steps.findIndex(function (s) { return String(s.step) === params.get("step"); });
      if (found >= 0) index = found;
    }
    if (params.has("component")) component.value = params.get("component");
    if (component.selectedIndex < 0) component.value = "reward";
    minInput.value = params.has("min") ? params.get("min") : "";
    maxInput.value = params.has("max") ? params.get("max") : "";
    if (params.has("status")) statusSelect.value = params.get("status");
    if (statusSelect.selectedIndex < 0) statusSelect.value = "all";
  }
  function writeFragment() {
    var params = new URLSearchParams();
    params.set("step", String(data.steps[index].step));
    if (component.value !== "reward") params.set("component", component.value);
    if (minInput.value !== "") params.set("min", minInput.value);
    if (maxInput.value !== "") params.set("max", maxInput.value);
    if (statusSelect.value !== "all") params.set("status", statusSelect.value);
    history.replaceState(null, "", "#" + params.toString());
  }
  function render() {
    var step = data.steps[index];
    stepSelect.value = String(step.step);
    container.textContent = "";
    var low = bound(minInput), high = bound(maxInput), key = component.value;
    var groupsShown = 0, completionsShown = 0;
    step.groups.forEach(function (group) {
      var state = status(group);
      var section = el("section", "group");
      section.setAttribute("data-prompt-id", group.prompt_id);
      section.setAttribute("data-status", state);
      section.setAttribute("data-rank", String(group.rank));
      section.setAttribute("data-round", String(group.round));
      var side = el("div", "side");
      var uri = data.images[group.image_path];
      if (uri) {
        var img = el("img");
        img.src = uri;
        img.alt = group.image_path;
        side.appendChild(img);
      } else {
        side.appendChild(el("div", "placeholder", "image not found: " + group.image_path));
      }
      side.appendChild(el("div", "label", "prompt " + group.prompt_id + " \\u00b7 rank " + group.rank +
        " \\u00b7 round " + group.round));
      side.appendChild(el("div", "label", state + " \\u00b7 reward std " + fmt(group.reward_std)));
      side.appendChild(el("div", "question", group.question));
      if (group.answer !== null && group.answer !== undefined) side.appendChild(el("div", "answer",
        "answer: " + group.answer));
      section.appendChild(side);
      var list = el("ol", "completions");
      var order = group.completions.map(function (c, i) { return { c: c, i: i }; });
      order.sort(function (a, b) {
        var x = a.c.advantage === null ? a.c.reward : a.c.advantage;
        var y = b.c.advantage === null ? b.c.reward : b.c.advantage;
        return (y === null ? -Infinity : y) - (x === null ? -Infinity : x) || a.i - b.i;
      });
      var visible = 0;
      order.forEach(function (entry) {
        var c = entry.c, v = value(c, key);
        var keep = (low === null || (v !== null && v !== undefined && v >= low)) &&
          (high === null || (v !== null && v !== undefined && v <= high));
        var item = el("li", "completion");
        item.setAttribute("data-index", String(entry.i));
        item.setAttribute("data-advantage", c.advantage === null ? "" : String(c.advantage));
        item.setAttribute("data-reward", c.reward === null ? "" : String(c.reward));
        data.rewards.forEach(function (name, f) {
          var score = c.scores[name];
          item.setAttribute("data-score-" + data.keys[f], score === null || score === undefined ? "" : String(score));
        });
        item.hidden = !keep;
        if (keep) visible += 1;
        var numbers = el("div", "numbers");
        var advantage = el("span", c.advantage > 0 ? "positive" : (c.advantage < 0 ? "negative" : ""),
          "advantage " + fmt(c.advantage));
        numbers.appendChild(advantage);
        var parts = [" \\u00b7 reward " + fmt(c.reward)];
        data.rewards.forEach(function (name) { parts.push(name + " " + fmt(c.scores[name])); });
        parts.push(c.length + " tokens");
        numbers.appendChild(document.createTextNode(parts.join(" \\u00b7 ")));
        if (c.truncated) numbers.appendChild(el("span", "truncated", " \\u00b7 truncated"));
        item.appendChild(numbers);
        item.appendChild(el("pre", "", c.text));
        list.appendChild(item);
      });
      section.appendChild(list);
      var statusKeep = statusSelect.value === "all" || statusSelect.value === state ||
        (statusSelect.value === "filtered" && state === "filled") ||
        (statusSelect.value === "trained" && state === "filled");
      section.hidden = !statusKeep || visible === 0;
      if (!section.hidden) { groupsShown += 1; completionsShown += visible; }
      container.appendChild(section);
    });
    shown.textContent = "step " + step.step + " (" + (index + 1) + " of " + data.steps.length + "): " +
      groupsShown + " of " + step.groups.length + " groups, " + completionsShown + " completions shown";
    document.body.setAttribute("data-step", String(step.step));
    document.body.setAttribute("data-visible-groups", String(groupsShown));
    document.body.setAttribute("data-visible-completions", String(completionsShown));
    document.getElementById("prev").disabled = index === 0;
    document.getElementById("next").disabled = index === data.steps.length - 1;
  }
  function go(to) { index = Math.max(0, Math.min(data.steps.length - 1, to)); render(); writeFragment(); }
  document.getElementById("prev").addEventListener("click", function () { go(index - 1); });
  document.getElementById("next").addEventListener("click", function () { go(index + 1); });
  stepSelect.addEventListener("change", function () { go(stepSelect.selectedIndex); });
  [component, minInput, maxInput, statusSelect].forEach(function (control) {
    control.addEventListener("change", function () { render(); writeFragment(); });
  });
  document.addEventListener("keydown", function (event) {
    if (event.target.tagName === "INPUT") return;
    if (event.key === "ArrowLeft") go(index - 1);
    if (event.key === "ArrowRight") go(index + 1);
  });
  window.addEventListener("hashchange", function () { readFragment(); render(); });
  readFragment();
  render();
})();
"""


class RolloutsError(UserError):
    """A rollouts folder that is missing, empty, or holds a line that is not a rollout record."""


def find_rollout_files(log_dir: Path) -> list[tuple[int, Path]]:
    """The ``step=N.jsonl`` files of a run's log folder (or of its ``rollouts`` folder itself), by step.

    Raises:
        RolloutsError: there are none; the message says how to have a run write them.
    """
    log_dir = Path(log_dir)
    folder = (
        log_dir if log_dir.name == ROLLOUTS_DIR and not (log_dir / ROLLOUTS_DIR).is_dir() else log_dir / ROLLOUTS_DIR
    )
    files = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = re.fullmatch(r"step=(\d+)\.jsonl", path.name)
            if match and path.is_file():
                files.append((int(match.group(1)), path))
    if not files:
        raise RolloutsError(
            f"{folder}: no rollout records (step=N.jsonl); a run writes them to <log_dir>/{ROLLOUTS_DIR}/ every "
            "model.logging.rollouts_every_n_steps steps (0 writes none). Give the run's log folder, e.g. "
            "lightning_logs/demo/version_0."
        )
    return sorted(files)


def read_rollouts(log_dir: Path) -> list[dict[str, Any]]:
    """Every step's records of a run, as ``[{"step": N, "groups": [record, ...]}, ...]`` in step order.

    Raises:
        RolloutsError: no records, or a line that is not a record (named by file and line).
    """
    steps = []
    for step, path in find_rollout_files(log_dir):
        groups = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise RolloutsError(f"{path}:{lineno}: not a JSON line ({err.msg}); the file is damaged.") from None
            if not isinstance(record, dict) or not isinstance(record.get("completions"), list):
                raise RolloutsError(f"{path}:{lineno}: not a rollout record (no list of completions).")
            groups.append(record)
        steps.append({"step": step, "groups": groups})
    return steps


def _rollout_image(path: str, images_dir: Path | None) -> str | None:
    candidates = [Path(path)] if path else []
    if images_dir is not None and path:
        candidates.append(Path(images_dir) / Path(path).name)
    for candidate in candidates:
        if candidate.is_file():
            try:
                return thumbnail_data_uri(candidate)
            except (OSError, ValueError, Image.DecompressionBombError):
                return None
    return None


def _json_for_script(value: Any) -> str:
    # inside <script>, only "</script" or "<!--" could end the element early: no "<" at all
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c")


def render_rollouts(log_dir: Path, images_dir: Path | None = None, title: str | None = None) -> str:
    """The rollout browser of a run: one self-contained page over every step's records.

    Args:
        log_dir: the run's log folder (``<save_dir>/<name>/<version>``), or its ``rollouts`` folder.
        images_dir: where to look for an image, by file name, that is not at its recorded path (another machine).
        title: the page title (default: the log folder's path).

    Raises:
        RolloutsError: no records, or a damaged file.
    """
    steps = read_rollouts(log_dir)
    names = list(
        dict.fromkeys(
            name for s in steps for g in s["groups"] for c in g["completions"] for name in c.get("scores", {})
        )
    )
    paths = list(dict.fromkeys(g.get("image_path", "") for s in steps for g in s["groups"]))
    images = {path: uri for path in paths if (uri := _rollout_image(path, images_dir)) is not None}
    data = {"steps": steps, "images": images, "rewards": names, "keys": [score_key(name) for name in names]}
    title = title or f"Rollouts of {log_dir}"
    options = "".join(f"<option value='{s['step']}'>step {s['step']}</option>" for s in steps)
    components = "<option value='reward'>reward (total)</option>" + "".join(
        f"<option value='{_e(name)}'>{_e(name)}</option>" for name in names
    )
    body = (
        f"<p>{len(steps)} steps with rollout records. Completions are sorted by advantage (by "
        "reward in groups that did not train). A group is <b>trained</b>, <b>filtered</b> (its rewards did not "
        "spread; dynamic sampling left it out), <b>filled</b> (no spread, trained because the step's rounds ran "
        "out) or <b>unused</b> (a spread, beyond the step's batch). ← and → page through the steps.</p>"
        "<div id='controls'><button id='prev' type='button'>← previous</button>"
        f"<select id='step'>{options}</select><button id='next' type='button'>next →</button>"
        f"<label>Reward <select id='component'>{components}</select></label>"
        "<label>from <input id='min' type='number' step='any'></label>"
        "<label>to <input id='max' type='number' step='any'></label>"
        "<label>Groups <select id='status'><option value='all'>all</option><option value='trained'>trained"
        "</option><option value='filtered'>filtered</option></select></label><span id='shown'></span></div>"
        "<div id='groups'></div>"
        f"<script type='application/json' id='rollout-data'>{_json_for_script(data)}</script>"
    )
    return _page(title, _ROLLOUT_STYLE, body, _ROLLOUT_SCRIPT)


def write_rollouts_page(
    log_dir: Path, path: Path | None = None, images_dir: Path | None = None, title: str | None = None
) -> Path:
    """Writes :func:`render_rollouts` to ``path`` (default ``<log_dir>/rollouts.html``) and returns it."""
    log_dir = Path(log_dir)
    path = Path(path) if path is not None else log_dir / "rollouts.html"
    page = render_rollouts(log_dir, images_dir, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m grpo_lightning.report --rollouts LOG_DIR [--out PAGE.html] [--images DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m grpo_lightning.report",
        description="Make the rollout browser of a training run: one self-contained HTML page over the rollout "
        "records the run wrote every model.logging.rollouts_every_n_steps steps. (The evaluation report of a "
        "predictions file is `python -m grpo_lightning.evaluate PRED.json --html REPORT.html`.)",
    )
    parser.add_argument("--rollouts", type=Path, required=True, metavar="LOG_DIR", help="the run's log folder")
    parser.add_argument("--out", type=Path, help="the page to write (default: LOG_DIR/rollouts.html)")
    parser.add_argument("--images", type=Path, help="look here, by file name, for images not at their recorded path")
    args = parser.parse_args(argv)
    try:
        path = write_rollouts_page(args.rollouts, args.out, args.images)
    except RolloutsError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"rollout browser written to {path}", file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
