"""Tests of the scoring functions (grpo_lightning.metrics) and the evaluation command line.

The slow test reproduces the published scores of a public ViVQA-X baseline run from its predictions file
(``$VIVQAX_DIR/reference``, by default ``../shared/data/reference``); everything else runs on a few hand-made
Vietnamese records.
"""

from __future__ import annotations

import json
import math
import shutil
import unicodedata

import pytest

from grpo_lightning import evaluate, metrics
from grpo_lightning.errors import UserError
from grpo_lightning.metrics import (
    METRICS,
    PROTOCOLS,
    PredictionsFormatError,
    evaluate_predictions,
    score_explanations,
    strip_explanation_prefix,
)
from grpo_lightning.predictions_file import PredictionsMetadata, metadata_path, write_predictions
from tests.helpers import VIVQAX_DIR, vivqax_absent

REFERENCE_PREDICTIONS = VIVQAX_DIR / "reference" / "ViVQA-X_test_Qwen2.5-VL-7B-Instruct_predictions.json"
FAST_METRICS = ("bleu", "rouge", "cider")  # no JVM: METEOR has tests of its own
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java; no `java` on PATH")
needs_reference = pytest.mark.skipif(not REFERENCE_PREDICTIONS.is_file(), reason=vivqax_absent(REFERENCE_PREDICTIONS))


def record(qid, pred_ans, gt_ans, pred_explain, gt_explain, **extra) -> dict:
    return {
        "question_id": qid,
        "question": "Con vật này là gì?",
        "pred_ans": pred_ans,
        "pred_explain": pred_explain,
        "gt_ans": gt_ans,
        "gt_explain": gt_explain,
        **extra,
    }


RECORDS = [
    record(
        "1001",
        "mèo",
        "mèo",
        "vì nó có râu và tai nhọn",
        ["nó có râu và tai nhọn", "đó là một con mèo"],
        answer_type="other",
    ),
    record("1002", "Có", "có", "Vì trời đang mưa", ["trời đang mưa", "mặt đường ướt"], answer_type="yes/no"),
    record("1003", "đúng", "có", "người đàn ông cầm ô", ["người đàn ông đang cầm ô"], answer_type="yes/no"),
    record("1004", "hai", "ba", "có hai con chó", ["có ba con chó trên bãi cỏ", "ba con chó"], answer_type="number"),
]


# ------------------------------------------------------------------------------------------- protocols
@pytest.mark.parametrize(
    ("pred", "gt", "raw", "normalized"),
    [
        ("Có", "có", True, True),
        ("  có ", "có", True, True),
        ("đúng", "có", False, True),  # yes/no synonyms count only in the normalized protocol
        ("Phải", "có", False, True),
        ("Sai", "không", False, True),
        ("có.", "có", False, True),
        (unicodedata.normalize("NFD", "không"), "không", False, True),  # decomposed diacritics
        ("cỏ", "có", False, False),  # grass is not yes
        ("màu đỏ", "Màu Đỏ", True, True),
        ("đỏ", "màu đỏ", False, False),
    ],
)
def test_answer_matching_per_protocol(pred, gt, raw, normalized):
    for name, expected in (("raw", raw), ("normalized", normalized)):
        key = PROTOCOLS[name].answer_key
        assert (key(pred) == key(gt)) is expected, name


@pytest.mark.parametrize(
    ("text", "raw", "normalized"),
    [
        ("vì nó có râu", "nó có râu", "nó có râu"),
        ("Vì trời mưa.", "trời mưa.", "trời mưa"),
        ("Because it rains!", "it rains!", "it rains"),
        ("vì, trời mưa", ", trời mưa", "trời mưa"),
        ("bởi vì trời mưa", "bởi vì trời mưa", "bởi vì trời mưa"),  # only a leading prefix goes
        ("vìa hè", "a hè", "vìa hè"),  # raw tests characters, as the published evaluation does
        (unicodedata.normalize("NFD", "Vì trời mưa"), unicodedata.normalize("NFD", "Vì trời mưa"), "trời mưa"),
        ("", "", ""),
        ("trời mưa", "trời mưa", "trời mưa"),
    ],
)
def test_hypothesis_preparation_per_protocol(text, raw, normalized):
    assert PROTOCOLS["raw"].hypothesis(text) == strip_explanation_prefix(text) == raw
    assert PROTOCOLS["normalized"].hypothesis(text) == normalized


def test_references_are_raw_or_normalized():
    reference = unicodedata.normalize("NFD", "Nó có Râu, tai nhọn.")
    assert PROTOCOLS["raw"].reference(reference) == reference
    assert PROTOCOLS["normalized"].reference(reference) == "nó có râu tai nhọn"


def test_unknown_protocol_and_metric_name_the_known_ones():
    with pytest.raises(ValueError, match="raw, normalized"):
        evaluate_predictions(RECORDS, "lenient")
    with pytest.raises(ValueError, match="known: bleu, meteor"):
        score_explanations(["a"], [["a"]], metrics=("bleu", "blue"))


# -------------------------------------------------------------------------------- explanation metrics
def test_score_explanations_matches_hand_computed_values():
    # Sample 0: 2 of 3 unigrams and 1 of 2 bigrams match, same length (no brevity penalty), LCS 2 of 3.
    # Sample 1: identical to its first reference. Diacritics are part of the token: "meo" is not "mèo".
    result = score_explanations(
        ["con mèo đen", "một con chó", "con meo"],
        [["con mèo trắng"], ["một con chó", "con chó"], ["con mèo"]],
        metrics=FAST_METRICS,
    )
    bleu1, bleu2, rouge = result.per_sample["BLEU-1"], result.per_sample["BLEU-2"], result.per_sample["ROUGE_L"]
    assert bleu1 == pytest.approx([2 / 3, 1.0, 1 / 2], rel=1e-6)
    assert bleu2[0] == pytest.approx(math.sqrt(2 / 3 * 1 / 2), rel=1e-6)
    assert rouge == pytest.approx([2 / 3, 1.0, 1 / 2])
    # Corpus BLEU pools the counts (2 + 3 + 1 of 3 + 3 + 2 unigrams); corpus ROUGE-L and CIDEr are means.
    assert result.corpus["BLEU-1"] == pytest.approx(6 / 8, rel=1e-6)
    assert result.corpus["ROUGE_L"] == pytest.approx(sum(rouge) / 3)
    assert result.corpus["CIDEr"] == pytest.approx(sum(result.per_sample["CIDEr"]) / 3)
    assert result.per_sample["CIDEr"][1] == max(result.per_sample["CIDEr"])
    assert set(result.corpus) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE_L", "CIDEr"}
    assert result.skipped == {}


@pytest.mark.parametrize(
    ("hypotheses", "references", "message"),
    [
        (["a", "b"], [["a"]], "2 hypotheses but 1 reference lists"),
        (["a", "b"], [["a"], []], r"index \[1\] have no reference"),
    ],
)
def test_score_explanations_rejects_misshapen_input(hypotheses, references, message):
    with pytest.raises(ValueError, match=message):
        score_explanations(hypotheses, references, metrics=FAST_METRICS)


def test_no_hypotheses_give_empty_scores():
    assert score_explanations([], [], metrics=FAST_METRICS).corpus == {}


@needs_java
def test_meteor_survives_newlines_and_empty_hypotheses():
    # METEOR talks to a JVM one line per request: a raw newline inside a sentence would hang it.
    result = score_explanations(
        ["con mèo\nđen", "", "một | con ||| chó"],
        [["con mèo đen"], ["một con chó"], ["một con chó", "hai\ncon chó"]],
        metrics=("meteor",),
    )
    exact, empty, piped = result.per_sample["METEOR"]
    assert exact > 0.9 and empty == 0.0 and 0.0 < piped < 1.0
    assert 0.0 < result.corpus["METEOR"] < 1.0


def test_meteor_without_java_is_left_out_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no `java` anywhere
    scores = evaluate_predictions(RECORDS)
    assert "METEOR" not in scores.unfiltered and "METEOR" not in scores.filtered
    assert scores.unfiltered["BLEU-4"] >= 0 and "CIDEr" in scores.filtered
    assert scores.skipped["meteor"].startswith("METEOR left out: it needs Java")
    assert "PATH" in scores.skipped["meteor"] and "apt-get install" in scores.skipped["meteor"]


def test_spice_without_corenlp_models_is_left_out_and_nothing_is_downloaded(tmp_path, monkeypatch):
    lib = tmp_path / "spice-lib"
    lib.mkdir()
    monkeypatch.setattr(metrics, "spice_lib_dir", lambda: lib)
    message = evaluate_predictions(RECORDS, metrics=("bleu", "spice")).skipped["spice"]
    assert message.startswith("SPICE left out: it needs the Stanford CoreNLP 3.6.0 models")
    assert str(lib) in message and "never downloads" in message
    assert list(lib.iterdir()) == []
    # With the models in place, Java is the next thing it needs.
    for jar in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"):
        (lib / jar).write_bytes(b"")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert METRICS["spice"].unavailable({}).startswith("SPICE left out: it needs Java")


def test_bertscore_without_package_or_model_is_left_out(tmp_path, monkeypatch):
    unavailable = METRICS["bertscore"].unavailable
    monkeypatch.setattr(metrics, "_module_installed", lambda name: False)
    assert "`pip install bert-score`" in unavailable({"bertscore_model": str(tmp_path)})
    monkeypatch.setattr(metrics, "_module_installed", lambda name: name == "bert_score")
    message = unavailable({"bertscore_model": "no-such-org/no-such-model"})
    assert message.startswith("BERTScore left out: it needs the model 'no-such-org/no-such-model'")
    assert "never downloads" in message and "--bertscore-model DIR" in message
    assert unavailable({"bertscore_model": str(tmp_path)}) is None  # a local folder is enough


# -------------------------------------------------------------------------------- evaluate_predictions
def test_evaluate_predictions_accuracy_filtered_and_scaled():
    scores = evaluate_predictions(RECORDS, "raw", FAST_METRICS)
    assert (scores.num_samples, scores.num_correct, scores.accuracy) == (4, 2, 0.5)
    assert [s["correct"] for s in scores.per_sample] == [True, True, False, False]
    assert [s["question_id"] for s in scores.per_sample] == ["1001", "1002", "1003", "1004"]
    # filtered = the metrics over the correctly answered samples only, prefixes stripped as in raw
    refs = [r["gt_explain"] for r in RECORDS[:2]]
    alone = score_explanations(["nó có râu và tai nhọn", "trời đang mưa"], refs, metrics=FAST_METRICS)
    assert scores.filtered == pytest.approx(alone.corpus)
    assert scores.per_sample[1]["BLEU-1"] == pytest.approx(1.0)  # "Vì " removed: an exact reference
    assert scores.scaled == pytest.approx({k: v * 0.5 for k, v in scores.unfiltered.items()})
    assert scores.accuracy_by_answer_type == {
        "number": {"accuracy": 0.0, "num_samples": 1},
        "other": {"accuracy": 1.0, "num_samples": 1},
        "yes/no": {"accuracy": 0.5, "num_samples": 2},
    }
    normalized = evaluate_predictions(RECORDS, "normalized", FAST_METRICS)
    assert (normalized.protocol, normalized.num_correct) == ("normalized", 3)  # "đúng" = "có"


def test_scores_json_layout():
    payload = evaluate_predictions(RECORDS, "normalized", FAST_METRICS).to_dict()
    assert {"protocol", "scale", "num_samples", "num_correct", "accuracy", "unfiltered", "filtered", "scaled"} <= set(
        payload
    )
    assert payload["protocol"] == "normalized" and payload["scale"].startswith("fraction")
    assert payload["accuracy_by_protocol"] == {
        "raw": {
            "accuracy": 0.5,
            "num_correct": 2,
            "accuracy_by_answer_type": {
                "number": {"accuracy": 0.0, "num_samples": 1},
                "other": {"accuracy": 1.0, "num_samples": 1},
                "yes/no": {"accuracy": 0.5, "num_samples": 2},
            },
        },
        "normalized": {
            "accuracy": 0.75,
            "num_correct": 3,
            "accuracy_by_answer_type": {
                "number": {"accuracy": 0.0, "num_samples": 1},
                "other": {"accuracy": 1.0, "num_samples": 1},
                "yes/no": {"accuracy": 1.0, "num_samples": 2},
            },
        },
    }
    json.dumps(payload)  # plain JSON types only


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_every_protocols_accuracy_whichever_scores_the_explanations(protocol):
    scores = evaluate_predictions(RECORDS, protocol, FAST_METRICS)
    assert {name: a.num_correct for name, a in scores.accuracy_by_protocol.items()} == {"raw": 2, "normalized": 3}
    chosen = scores.accuracy_by_protocol[protocol]
    assert (scores.accuracy, scores.num_correct) == (chosen.accuracy, chosen.num_correct)
    assert scores.accuracy_by_answer_type == chosen.by_answer_type
    assert [s["correct_by_protocol"] for s in scores.per_sample] == [
        {"raw": True, "normalized": True},
        {"raw": True, "normalized": True},
        {"raw": False, "normalized": True},  # "đúng" = "có" only when normalized
        {"raw": False, "normalized": False},
    ]
    assert [s["correct"] for s in scores.per_sample] == chosen.correct


@pytest.mark.parametrize(
    ("protocol", "first_line"),
    [
        ("raw", "protocol raw: accuracy 0.5000 (2 of 4 answers correct); the explanation metrics below use it"),
        (
            "normalized",
            "protocol normalized: accuracy 0.7500 (3 of 4 answers correct); the explanation metrics below use it",
        ),
    ],
)
def test_the_table_shows_both_protocols_accuracy_side_by_side(protocol, first_line):
    lines = evaluate.format_table(evaluate_predictions(RECORDS, protocol, FAST_METRICS)).splitlines()
    assert lines[:7] == [
        first_line,
        "answer accuracy by protocol (raw, normalized):",
        "answer type         raw  normalized  samples",
        "all              0.5000      0.7500        4",
        "number           0.0000      0.0000        1",
        "other            1.0000      1.0000        1",
        "yes/no           0.5000      1.0000        2",
    ]
    assert lines[7].split() == ["metric", "unfiltered", "filtered", "scaled"]


def test_the_table_without_answer_types_has_the_overall_row_alone():
    records = [{k: v for k, v in r.items() if k != "answer_type"} for r in RECORDS]
    lines = evaluate.format_table(evaluate_predictions(records, "raw", FAST_METRICS)).splitlines()
    assert lines[2:4] == [
        "answer type         raw  normalized  samples",
        "all              0.5000      0.7500        4",
    ]
    assert lines[4].startswith("metric")


def test_no_correct_answer_leaves_filtered_empty():
    wrong = [dict(r, pred_ans="???") for r in RECORDS]
    scores = evaluate_predictions(wrong, "raw", FAST_METRICS)
    assert scores.accuracy == 0.0 and scores.filtered == {}
    assert set(scores.scaled.values()) == {0.0}


@pytest.mark.parametrize(
    ("records", "fragments"),
    [
        ({"a": 1}, ["preds.json: expected a JSON list", "got a dict"]),
        (["text"], ["preds.json: record 0 is a str"]),
        (
            [RECORDS[0], {k: v for k, v in RECORDS[1].items() if k != "pred_explain"}],
            ["preds.json: record 1 (question_id '1002') lacks pred_explain", "every record needs question_id"],
        ),
        ([{"pred_ans": "có"}], ["record 0 lacks question_id, question, pred_explain, gt_ans, gt_explain"]),
        ([dict(RECORDS[0], pred_ans=None)], ["record 0 (question_id '1001'): pred_ans is None", 'write ""']),
        ([dict(RECORDS[0], gt_explain="nó có râu")], ["gt_explain is 'nó có râu'", "non-empty list"]),
        ([dict(RECORDS[0], gt_explain=[])], ["gt_explain is []", "non-empty list"]),
    ],
)
def test_bad_records_are_named_with_file_index_and_question_id(tmp_path, records, fragments):
    with pytest.raises(PredictionsFormatError) as raised:
        evaluate_predictions(records, source="preds.json")
    for fragment in fragments:
        assert fragment in str(raised.value)
    # The same message from the command line, as an error exit rather than a traceback.
    path = tmp_path / "preds.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        evaluate.main([str(path)])
    assert exited.value.code == 2


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('[{"question_id": "1",\n  "question": }]', "preds.json:2:15: not valid JSON"),
        (None, "preds.json: no such predictions file"),
        (b"\xff\xfe[", "not UTF-8"),
    ],
)
def test_unreadable_files_are_named(tmp_path, capsys, content, fragment):
    path = tmp_path / "preds.json"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit):
        evaluate.main([str(path)])
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}") and fragment in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", ": empty file, no prediction records; write the predictions as a JSON list of records"),
        (b" \n", ": empty file, no prediction records; write the predictions as a JSON list of records"),
        (b"[]", ": an empty list, no prediction records to score; check that `predict` ran on a split with samples"),
        (b"[\n]\n", ": an empty list, no prediction records to score; check that `predict` ran on a split with "),
    ],
)
def test_an_empty_predictions_file_is_an_error_not_an_empty_table(tmp_path, capsys, content, message):
    path = tmp_path / "preds.json"
    path.write_bytes(content)
    with pytest.raises(SystemExit) as exited:
        evaluate.main([str(path)])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {path}{message}") and captured.out == ""
    with pytest.raises(PredictionsFormatError) as raised:
        evaluate.load_predictions(path)
    assert isinstance(raised.value, UserError) and str(raised.value).startswith(f"{path}{message}")


def test_a_folder_is_no_predictions_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate.main([str(tmp_path)])
    assert capsys.readouterr().err == f"error: {tmp_path}: a folder, not a predictions file.\n"


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (
            [RECORDS[0], RECORDS[1], dict(RECORDS[0], pred_ans="chó")],
            "record 2 repeats question_id '1001' of record 0",
        ),
        ([dict(RECORDS[0], question_id=1001), RECORDS[0]], "record 1 repeats question_id '1001' of record 0"),
        (
            [*RECORDS, RECORDS[3], RECORDS[1]],
            "record 4 repeats question_id '1004' of record 3 (2 records in all repeat an earlier question_id)",
        ),
    ],
)
def test_a_question_id_twice_is_refused_not_counted_twice(tmp_path, capsys, records, message):
    with pytest.raises(PredictionsFormatError) as raised:
        evaluate_predictions(records, "raw", FAST_METRICS, source="preds.json")
    what_to_do = "; each question must be scored once: keep one record per question_id."
    assert str(raised.value) == f"preds.json: {message}{what_to_do}"
    path = tmp_path / "preds.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        evaluate.main([str(path)])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {path}: {message}{what_to_do}\n" and captured.out == ""


def test_coverage_counts_the_ids_not_in_the_reference_and_the_questions_without_a_prediction(
    tmp_path, monkeypatch, capsys
):
    reference = tmp_path / "ViVQA-X_test.json"
    split = [
        {"question": f"Câu hỏi {i}?", "image_name": f"COCO_val2014_{i:012d}.jpg", "answer": "mèo",
         "explanation": ["nó có râu"], "question_id": question_id}
        for i, question_id in enumerate(["1001", "1002", "1003", "2001", "2002"])
    ]  # fmt: skip
    reference.write_text(json.dumps(split, ensure_ascii=False), encoding="utf-8")
    predictions = tmp_path / "preds.json"
    predictions.write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")  # 1001-1004
    expected = (
        f"{predictions}: 4 predictions for the 5 questions of {reference}; 1 prediction id(s) not in it (first: 1004), "
        "2 question(s) without a prediction (first: 2001, 2002); the scores are over the 4 predictions."
    )
    assert evaluate.coverage(RECORDS, predictions, reference) == expected
    monkeypatch.setenv("PATH", str(tmp_path))  # no Java: METEOR is noted, not fatal (and the test stays fast)
    evaluate.main([str(predictions), "--reference", str(reference)])
    assert f"note: {expected}\n" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        evaluate.main([str(predictions), "--reference", str(tmp_path / "missing.json")])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'missing.json'}: no such data file")


# ---------------------------------------------------------------------------------------- the CLI
def test_cli_prints_table_writes_json_and_report(tmp_path, monkeypatch, capsys):
    predictions = tmp_path / "preds.json"
    predictions.write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    monkeypatch.setenv("PATH", str(tmp_path))  # no Java: METEOR is noted, not fatal (and the test stays fast)
    out, html = tmp_path / "out/scores.json", tmp_path / "out/report.html"
    argv = [str(predictions), "--protocol", "normalized", "--out", str(out), "--html", str(html)]
    evaluate.main([*argv, "--images", str(tmp_path), "--spice", "--bertscore", "--bertscore-model", "no/such"])
    captured = capsys.readouterr()
    assert "note: METEOR left out" in captured.err
    assert "note: SPICE left out" in captured.err and "note: BERTScore left out" in captured.err
    assert "protocol normalized: accuracy 0.7500 (3 of 4 answers correct)" in captured.out
    assert "all              0.5000      0.7500        4" in captured.out  # raw and normalized, side by side
    assert "BLEU-1" in captured.out and "CIDEr" in captured.out and "METEOR" not in captured.out
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["accuracy"] == 0.75 and written["num_correct"] == 3 and written["protocol"] == "normalized"
    assert {name: v["accuracy"] for name, v in written["accuracy_by_protocol"].items()} == {
        "raw": 0.5,
        "normalized": 0.75,
    }
    assert set(written["skipped"]) == {"meteor", "spice", "bertscore"}
    assert html.read_text(encoding="utf-8").count("<tr class='sample") == 4


def test_cli_names_what_made_the_predictions_and_reports_a_stale_or_broken_metadata_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no Java: METEOR is noted, not fatal (and the test stays fast)
    metadata = PredictionsMetadata("models/tiny", None, "normalized", "2025-06-01T12:00:00+00:00", "val.json", "0.1.0")
    predictions = write_predictions(tmp_path / "preds.json", RECORDS, metadata)
    evaluate.main([str(predictions)])
    out = capsys.readouterr().out
    assert out.startswith(
        "predictions of models/tiny, checkpoint none (the base model's own weights), on val.json, written "
        "2025-06-01T12:00:00+00:00 by grpo_lightning 0.1.0\nprotocol raw:"
    )
    predictions.write_text(json.dumps(RECORDS[:3], ensure_ascii=False), encoding="utf-8")  # another version of it
    evaluate.main([str(predictions)])
    captured = capsys.readouterr()
    assert "note: preds.meta.json describes another version of preds.json" in captured.err
    assert captured.out.startswith("protocol raw: accuracy 0.6667 (2 of 3 answers correct)")
    metadata_path(predictions).write_text("{", encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        evaluate.main([str(predictions)])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {metadata_path(predictions)}: not a JSON metadata file")


def test_cli_images_need_a_report(tmp_path):
    with pytest.raises(SystemExit) as exited:
        evaluate.main([str(tmp_path / "preds.json"), "--images", str(tmp_path)])
    assert exited.value.code == 2


@needs_reference
def test_normalized_protocol_only_adds_correct_answers_on_reference_run():
    records = json.loads(REFERENCE_PREDICTIONS.read_text(encoding="utf-8"))
    raw = evaluate_predictions(records, "raw", metrics=())
    normalized = evaluate_predictions(records, "normalized", metrics=())
    assert all(n["correct"] for r, n in zip(raw.per_sample, normalized.per_sample, strict=True) if r["correct"])
    assert normalized.num_correct > raw.num_correct == 1130


# Published scores of Qwen2.5-VL-7B-Instruct (zero-shot) on the ViVQA-X test split, as fractions, from
# github.com/duongtruongbinh/Improve_ViVQA-X_baseline, results/ViVQA-X_test_Qwen2.5-VL-7B-Instruct_score.json.json
# (commit 0d0baa1338ec4530431d4214deb1a27674a29ffb). SPICE and BERTScore_F1 are also published there but
# need resources this machine lacks (Stanford CoreNLP models, a BERT model).
PUBLISHED_ACCURACY = 0.5741869918699187
PUBLISHED = {
    "unfiltered": {
        "BLEU-1": 0.3575164885148849,
        "BLEU-2": 0.21936774664882144,
        "BLEU-3": 0.13501736203019787,
        "BLEU-4": 0.08240227299501643,
        "METEOR": 0.2521630764171159,
        "ROUGE_L": 0.3127884605135617,
        "CIDEr": 0.37406034830237295,
    },
    "filtered": {
        "BLEU-1": 0.3572805624858042,
        "BLEU-2": 0.21960456696461747,
        "BLEU-3": 0.13491711388993127,
        "BLEU-4": 0.08174326638921488,
        "METEOR": 0.25296639682852773,
        "ROUGE_L": 0.31308431061818076,
        "CIDEr": 0.3669627279784827,
    },
    "scaled": {
        "BLEU-1": 0.2052813170842581,
        "BLEU-2": 0.12595810656156922,
        "BLEU-3": 0.0775252129543311,
        "BLEU-4": 0.047314313254252324,
        "METEOR": 0.1447887583086082,
        "ROUGE_L": 0.17959906523390484,
        "CIDEr": 0.2147805861695536,
    },
}


@pytest.mark.slow
@needs_reference
@needs_java
def test_raw_protocol_reproduces_published_baseline_scores(tmp_path, capsys):
    out = tmp_path / "scores.json"
    evaluate.main([str(REFERENCE_PREDICTIONS), "--out", str(out)])
    scores = json.loads(out.read_text(encoding="utf-8"))
    assert scores["protocol"] == "raw" and (scores["num_samples"], scores["num_correct"]) == (1968, 1130)
    assert round(scores["accuracy"], 4) == round(PUBLISHED_ACCURACY, 4) == 0.5742
    for group, published in PUBLISHED.items():
        assert {k: round(v, 4) for k, v in scores[group].items()} == {k: round(v, 4) for k, v in published.items()}
        # In fact they agree to floating-point rounding, not just to 4 decimals.
        assert scores[group] == pytest.approx(published, rel=1e-12)
    assert "METEOR       0.2522      0.2530      0.1448" in capsys.readouterr().out
