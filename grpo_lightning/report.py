"""A self-contained HTML page for browsing scored predictions, one row per sample.

The page embeds everything (CSS, a small vanilla script, images as base64 JPEG thumbnails), loads nothing
from the network, and escapes every piece of text, since predictions are model output. A Content Security
Policy allows only the page's own script (by its SHA-256), so even an unescaped ``<script>`` could not run.
The CSS and JavaScript are files of their own in ``report_assets/`` beside this module (package data, see
:data:`PAGE_ASSETS`), so that they can be read, linted and diffed.

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
import functools
import hashlib
import html
import io
import json
import re
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from grpo_lightning.errors import UserError
from grpo_lightning.images import load_rgb
from grpo_lightning.metrics import Scores
from grpo_lightning.rollout_files import ROLLOUT_FILE, ROLLOUTS_DIR

#: The longer side of the embedded thumbnails, in pixels.
THUMBNAIL_SIDE = 192

#: The folder beside this module that holds the pages' CSS and JavaScript, shipped as package data.
ASSETS_DIR = "report_assets"

#: Each page's files in :data:`ASSETS_DIR`, in the order they are embedded: its style sheets (the rules both pages
#: share first), then its one script.
PAGE_ASSETS = {
    "evaluation": ("page.css", "evaluation.css", "evaluation.js"),
    "rollouts": ("page.css", "rollouts.css", "rollouts.js"),
}

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


@functools.cache
def asset_text(name: str) -> str:
    """The text of the file ``name`` in :data:`ASSETS_DIR`, read once per process (every page embeds it)."""
    return (resources.files("grpo_lightning") / ASSETS_DIR / name).read_text(encoding="utf-8")


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
    return _page(title, body, "evaluation")


def _page(title: str, body: str, kind: str) -> str:
    """A self-contained page: ``body`` under the title, with the style sheets and then the script that
    :data:`PAGE_ASSETS` names for ``kind``; that script is the one its Content Security Policy lets run (by its
    SHA-256); images only as data: URLs, nothing fetched."""
    names = PAGE_ASSETS[kind]
    # each embedded file starts on a line of its own in the page's source; the hash covers that newline too, since
    # it must match the <script> element's text exactly
    style = "\n" + "".join(asset_text(name) for name in names if name.endswith(".css"))
    script = "\n" + "".join(asset_text(name) for name in names if name.endswith(".js"))
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
            match = re.fullmatch(ROLLOUT_FILE, path.name)
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
    return _page(title, body, "rollouts")


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
