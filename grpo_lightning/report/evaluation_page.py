"""The evaluation report: one page over a scored predictions file (see the package's docstring for its filters and
fragment).

From the top: a header that says what was evaluated (the predictions file; the model, checkpoint, data file and date
from the metadata file beside it, :mod:`grpo_lightning.predictions_file`, each shown as unknown without one; the
protocols; when the page was made), answer accuracy under every protocol side by side, as a table and a bar chart by
answer type, the explanation metrics under the chosen protocol with a histogram of each one's per-sample values, and
then one row per sample. Empty text (an answer or explanation the model did not give) reads "(empty)".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from grpo_lightning import __version__
from grpo_lightning.metrics import Scores
from grpo_lightning.predictions_file import MetadataReading, utc_now
from grpo_lightning.report.page import (
    _e,
    _fmt,
    _page,
    _shown,
    find_image,
    image_file_names,
    score_key,
    thumbnail_data_uri,
)
from grpo_lightning.svg_plots import PALETTE, Series, bar_chart, histogram, is_value

_PER_SAMPLE_BOOKKEEPING = ("index", "question_id", "correct", "correct_by_protocol")

#: What each protocol is, in a few words, for the page's header.
PROTOCOL_NOTES = {
    "raw": "the published ViVQA-X baselines' protocol (exact match after strip and lowercase, explanations as written)",
    "normalized": "NFC, lowercase, no punctuation, yes/no synonyms; the protocol training validates with by default",
}

#: The per-sample scores whose values are fractions (0-1); the others (CIDEr: 0-10) get their own range.
_FRACTION_COLUMNS = ("BLEU", "METEOR", "ROUGE", "SPICE", "BERTScore")


def _unknown(value: Any, absent: str = "unknown") -> str:
    return f"<span class='unknown'>{_e(absent)}</span>" if value is None or value == "" else _e(value)


def _header_html(scores: Scores, source: Path | None, run: MetadataReading | None, generated: str) -> str:
    """What the page evaluates: the predictions file, what made it (from its metadata), the protocols, the date."""
    meta = run.metadata if run is not None else None
    found = run is not None and run.status == "found"
    if found and meta.checkpoint is None:
        checkpoint = "<span class='unknown'>none: the base model's own weights</span>"
    else:
        checkpoint = _unknown(meta.checkpoint if meta else None)
    protocols = "".join(
        f"<li><b>{_e(name)}</b>{' (the explanation metrics use it)' if name == scores.protocol else ''}: "
        f"{_e(PROTOCOL_NOTES.get(name, ''))}</li>"
        for name in (scores.accuracy_by_protocol or {scores.protocol: None})
    )
    validated = f" The run validates with <b>{_e(meta.protocol)}</b>." if found and meta.protocol else ""
    fields = [
        ("Predictions", f"{_unknown(source)} ({scores.num_samples} records)"),
        ("Model", _unknown(meta.model_name_or_path if meta else None)),
        ("Checkpoint", checkpoint),
        ("Data", _unknown(meta.dataset_file if meta else None)),
        ("Predicted", _unknown(meta.created if meta else None)),
        ("Written by", _unknown(f"grpo_lightning {meta.grpo_lightning_version}" if found else None)),
        ("Protocols", f"<ul class='protocols'>{protocols}</ul>{validated}"),
        ("Report made", f"{_e(generated)} by grpo_lightning {_e(__version__)}"),
    ]
    rows = "".join(f"<dt>{name}</dt><dd data-field='{name.lower()}'>{value}</dd>" for name, value in fields)
    note = f"<p class='notes'>{_e(run.note)}.</p>" if run is not None and run.note else ""
    return f"<header class='run'><dl>{rows}</dl>{note}</header>"


def _protocol_accuracy(scores: Scores) -> dict[str, tuple[float, dict[str, dict[str, float]], int]]:
    """Per protocol: its accuracy, its accuracy by answer type, and its number of correct answers (the chosen
    protocol's alone for scores made without the others)."""
    if not scores.accuracy_by_protocol:
        return {scores.protocol: (scores.accuracy, scores.accuracy_by_answer_type, scores.num_correct)}
    return {name: (a.accuracy, a.by_answer_type, a.num_correct) for name, a in scores.accuracy_by_protocol.items()}


def _accuracy_html(scores: Scores) -> str:
    """Answer accuracy under every protocol side by side, overall and by answer type."""
    protocols = _protocol_accuracy(scores)
    heads = "".join(f"<th data-protocol='{_e(name)}'>{_e(name)}</th>" for name in protocols)
    rows = (
        "<tr data-answer-type='all'><td>all</td>"
        + "".join(f"<td>{_fmt(accuracy)}</td>" for accuracy, _, _ in protocols.values())
        + f"<td>{scores.num_samples}</td></tr>"
    )
    for kind, chosen in scores.accuracy_by_answer_type.items():
        values = "".join(
            f"<td>{_fmt(by_type.get(kind, {}).get('accuracy'))}</td>" for _, by_type, _ in protocols.values()
        )
        rows += (
            f"<tr data-answer-type='{_e(kind)}'><td>{_e(kind)}</td>{values}<td>{int(chosen['num_samples'])}</td></tr>"
        )
    counts = "; ".join(f"{_e(name)}: {correct} of {scores.num_samples}" for name, (_, _, correct) in protocols.items())
    return (
        f"<h2>Answer accuracy</h2><p>Correct answers under each protocol ({counts}); the explanation metrics below "
        f"use <b>{_e(scores.protocol)}</b>, accuracy <b id='accuracy'>{_fmt(scores.accuracy)}</b>.</p>"
        "<div class='side-by-side'><table class='summary' id='accuracy-by-protocol'><thead><tr><th>answer type</th>"
        f"{heads}<th>samples</th></tr></thead><tbody>{rows}</tbody></table>"
        f"<figure class='plot' id='accuracy-chart'>{_accuracy_chart(scores)}</figure></div>"
    )


def _summary_html(scores: Scores, columns: Sequence[str]) -> str:
    """The explanation metrics under the chosen protocol (unfiltered, filtered and scaled), and the histograms of
    the per-sample ``columns``."""
    columns = list(dict.fromkeys([*scores.unfiltered, *scores.filtered]))
    rows = "".join(
        f"<tr><td>{_e(c)}</td><td>{_fmt(scores.unfiltered.get(c))}</td><td>{_fmt(scores.filtered.get(c))}</td>"
        f"<td>{_fmt(scores.scaled.get(c))}</td></tr>"
        for c in columns
    )
    notes = "".join(f"<li>{_e(message)}</li>" for message in scores.skipped.values())
    return (
        f"<h2>Explanation metrics (protocol {_e(scores.protocol)})</h2><p>Scores are fractions (0-1, CIDEr 0-10); "
        "filtered = correctly answered samples only, scaled = unfiltered × accuracy.</p>"
        "<table class='summary'><thead><tr><th>metric</th><th>unfiltered</th><th>filtered</th><th>scaled</th></tr>"
        f"</thead><tbody>{rows}</tbody></table>"
        + (f"<ul class='notes'>{notes}</ul>" if notes else "")
        + _histograms_html(scores, columns)
    )


def _accuracy_chart(scores: Scores) -> str:
    """Accuracy by answer type (and over all answers), one bar per protocol."""
    protocols = _protocol_accuracy(scores)
    kinds = ["all", *scores.accuracy_by_answer_type]
    counts = [scores.num_samples] + [int(v["num_samples"]) for v in scores.accuracy_by_answer_type.values()]
    bars = [
        Series(
            name,
            [accuracy] + [by_type.get(kind, {}).get("accuracy") for kind in kinds[1:]],
            notes=[f"{n} samples" for n in counts],
        )
        for name, (accuracy, by_type, _) in protocols.items()
    ]
    width = min(160 + 70 * len(kinds) * len(bars), 640)
    return bar_chart(kinds, bars, title="Accuracy by answer type and protocol", y_range=(0, 1), width=width)


def _histograms_html(scores: Scores, columns: Sequence[str]) -> str:
    """A histogram of each per-sample explanation score."""
    charts = []
    for index, column in enumerate(columns):
        values = [sample[column] for sample in scores.per_sample]
        # fractions over 0-1; CIDEr (0-10) from 0 to its largest value, or to 1 when that is smaller
        high = 1.0 if column.startswith(_FRACTION_COLUMNS) else max([1.0, *(v for v in values if is_value(v))])
        chart = histogram(
            values,
            title=f"{column} per sample",
            x_label=f"{column} ({scores.protocol})",
            value_range=(0.0, high),
            color=PALETTE[index % len(PALETTE)],
            width=300,
        )
        charts.append(f"<figure class='plot' data-metric='{_e(column)}'>{chart}</figure>")
    return f"<div class='plots' id='score-histograms'>{''.join(charts)}</div>" if charts else ""


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


def _agreement_html(sample: dict[str, Any]) -> str:
    """Where the protocols disagree on a sample's answer, each one's verdict (e.g. "raw ✗ · normalized ✓")."""
    verdicts = sample.get("correct_by_protocol") or {}
    if len(set(verdicts.values())) < 2:
        return ""
    text = " · ".join(f"{name} {'✓' if ok else '✗'}" for name, ok in verdicts.items())
    return f"<div class='label disagree' title='the protocols disagree'>{_e(text)}</div>"


def _row_html(record: dict[str, Any], sample: dict[str, Any], columns: Sequence[str], image: str) -> str:
    correct = "correct" if sample["correct"] else "incorrect"
    answer_type = record["answer_type"] if isinstance(record.get("answer_type"), str) else None
    type_attr = "" if answer_type is None else f" data-answer-type='{_e(answer_type)}'"
    score_attrs = "".join(f" data-score-{score_key(c)}='{_e(repr(sample[c]))}'" for c in columns)
    scores = "".join(f"<tr><td>{_e(c)}</td><td>{_fmt(sample[c])}</td></tr>" for c in columns)
    refs = "".join(f"<li>{_shown(ref)}</li>" for ref in record["gt_explain"])
    extra = "".join(
        f"<details><summary>{name}</summary><pre>{_shown(record[name])}</pre></details>"
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
        f"{_shown(record['question'])}</td>"
        f"<td><div class='label'>predicted</div><div class='pred'>{_shown(record['pred_ans'])}</div>"
        f"<div class='label'>ground truth</div><div>{_shown(record['gt_ans'])}</div>{_agreement_html(sample)}</td>"
        f"<td><div class='label'>predicted explanation</div><div class='pred'>{_shown(record['pred_explain'])}</div>"
        f"<div class='label'>references</div><ol class='refs'>{refs}</ol>{extra}</td>"
        f"<td><table class='scores'>{scores}</table></td></tr>"
    )


def render_report(
    records: Sequence[dict[str, Any]],
    scores: Scores,
    images_dir: Path | None = None,
    title: str = "Predictions",
    progress: bool = False,
    *,
    source: Path | None = None,
    run: MetadataReading | None = None,
    generated: str | None = None,
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
        source: the predictions file, named in the header (None: unknown).
        run: the metadata read beside it (:func:`grpo_lightning.predictions_file.read_metadata`); None, or a reading
            without metadata, shows the model, checkpoint, data and date as unknown.
        generated: when the page was made, as the header shows it (None: now, UTC).

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
        f"{_header_html(scores, source, run, generated or utc_now())}{_accuracy_html(scores)}"
        f"{_summary_html(scores, columns)}<h2>Samples</h2>{_controls_html(columns, answer_types)}"
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
    *,
    source: Path | None = None,
    run: MetadataReading | None = None,
) -> Path:
    """Writes :func:`render_report` to ``path`` (UTF-8) and returns ``path``; the title defaults to "Evaluation of
    <the predictions file's name>", or to the page's own name without ``source``."""
    path = Path(path)
    title = title or (f"Evaluation of {Path(source).name}" if source is not None else path.stem)
    page = render_report(records, scores, images_dir, title, progress, source=source, run=run)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
