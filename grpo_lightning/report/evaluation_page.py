"""The evaluation report: one page over a scored predictions file, one row per sample (see the package's docstring for
its filters and fragment)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from grpo_lightning.metrics import Scores
from grpo_lightning.report.page import _e, _fmt, _page, find_image, image_file_names, score_key, thumbnail_data_uri

_PER_SAMPLE_BOOKKEEPING = ("index", "question_id", "correct")


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
