"""Score a predictions file: python -m grpo_lightning.evaluate PRED.json [options]

Prints answer accuracy under every protocol side by side (raw, the published baselines'; normalized, the one
training validates with) and the explanation metrics (unfiltered, filtered on correct answers, scaled by accuracy)
under --protocol, as tables; --out writes them as JSON, --html writes a browsable report whose header names the
model, checkpoint and date from the metadata file beside the predictions, where there is one
(grpo_lightning.predictions_file). The scoring itself is grpo_lightning.metrics.evaluate_predictions, where the
protocols and the record format are documented; this module only reads the files and writes the outputs.

Examples:
  python -m grpo_lightning.evaluate preds.json                         # the published baselines' protocol
  python -m grpo_lightning.evaluate preds.json --protocol normalized --out scores.json
  python -m grpo_lightning.evaluate preds.json --html report.html --images /data/coco/val2014
  python -m grpo_lightning.evaluate preds.json --reference data/ViVQA-X/ViVQA-X_test.json   # are all questions there?
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grpo_lightning.errors import UserError
from grpo_lightning.metrics import (
    DEFAULT_BERTSCORE_MODEL,
    DEFAULT_METRICS,
    PROTOCOLS,
    PredictionsFormatError,
    Scores,
    evaluate_predictions,
    validate_records,
)
from grpo_lightning.predictions_file import PredictionsMetadata, read_metadata
from grpo_lightning.report import write_report
from grpo_lightning.task import OPTIONAL_RECORD_FIELDS, REQUIRED_RECORD_FIELDS


def load_predictions(path: Path) -> list[dict[str, Any]]:
    """Reads and checks a predictions file (a JSON list of records in the public format).

    Raises:
        PredictionsFormatError: naming the file (and line, or record index and question_id) and what to fix.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
        if not text.strip():
            raise PredictionsFormatError(
                f"{path}: empty file, no prediction records; write the predictions as a JSON list of records "
                "(`python -m grpo_lightning predict` does)."
            )
        data = json.loads(text)
    except FileNotFoundError:
        raise PredictionsFormatError(f"{path}: no such predictions file.") from None
    except IsADirectoryError:
        raise PredictionsFormatError(f"{path}: a folder, not a predictions file.") from None
    except UnicodeDecodeError as err:
        raise PredictionsFormatError(f"{path}: not UTF-8 text ({err.reason}); save the predictions as UTF-8.") from None
    except json.JSONDecodeError as err:
        raise PredictionsFormatError(
            f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg}); the file must be a JSON list of records."
        ) from None
    records = validate_records(data, source=str(path))
    if not records:
        raise PredictionsFormatError(
            f"{path}: an empty list, no prediction records to score; check that `predict` ran on a split with "
            "samples and wrote this file."
        )
    return records


def coverage(records: list[dict[str, Any]], predictions: Path, reference: Path) -> str:
    """How the predictions' question ids cover a reference split's: a line that counts the ids not in it and the
    questions without a prediction (the scores are over the predictions, so a missing one is not counted at all).

    Raises:
        UserError: the reference file is missing or holds records that cannot be read.
    """
    from grpo_lightning.data import DataValidationError, read_samples  # the trainer's reader; Lightning comes with it

    samples, problems = read_samples(reference)
    if problems:
        raise DataValidationError(problems, f"Fix {reference}, or leave --reference out.")
    expected = {str(sample.id) for sample in samples}
    given = [str(record["question_id"]) for record in records]
    unknown = [question_id for question_id in given if question_id not in expected]
    unanswered = sorted(expected - set(given))

    def first(ids: list[str]) -> str:
        return f" (first: {', '.join(ids[:3])})" if ids else ""

    return (
        f"{predictions}: {len(given)} predictions for the {len(expected)} questions of {reference}; "
        f"{len(unknown)} prediction id(s) not in it{first(unknown)}, {len(unanswered)} question(s) without a "
        f"prediction{first(unanswered)}; the scores are over the {len(given)} predictions."
    )


def describe_run(metadata: PredictionsMetadata) -> str:
    """What made the predictions, in a line: model, checkpoint, data file, date (from the metadata file)."""
    checkpoint = metadata.checkpoint or "none (the base model's own weights)"
    return (
        f"predictions of {metadata.model_name_or_path}, checkpoint {checkpoint}, on {metadata.dataset_file}, "
        f"written {metadata.created} by grpo_lightning {metadata.grpo_lightning_version}"
    )


def format_table(scores: Scores) -> str:
    """The scores as plain-text tables: answer accuracy under every protocol side by side (overall and by answer
    type), then one row per explanation metric (unfiltered, filtered, scaled) under ``scores.protocol``."""
    lines = [
        f"protocol {scores.protocol}: accuracy {scores.accuracy:.4f} "
        f"({scores.num_correct} of {scores.num_samples} answers correct); the explanation metrics below use it",
        *_accuracy_table(scores),
    ]
    columns = list(dict.fromkeys([*scores.unfiltered, *scores.filtered]))
    width = max([len("metric"), *map(len, columns)])
    lines.append(f"{'metric':<{width}}  {'unfiltered':>10}  {'filtered':>10}  {'scaled':>10}")
    for column in columns:
        values = (scores.unfiltered.get(column), scores.filtered.get(column), scores.scaled.get(column))
        lines.append(f"{column:<{width}}  " + "  ".join("—".rjust(10) if v is None else f"{v:>10.4f}" for v in values))
    lines.append("scores are fractions (0-1, CIDEr 0-10), as the published ViVQA-X baselines write them")
    return "\n".join(lines)


def _accuracy_table(scores: Scores) -> list[str]:
    """Accuracy by protocol (columns) for all answers and each answer type (rows), with each row's sample count."""
    protocols = scores.accuracy_by_protocol
    kinds = list(scores.accuracy_by_answer_type)
    width = max([len("answer type"), *map(len, kinds)])
    header = f"{'answer type':<{width}}  " + "  ".join(f"{name:>10}" for name in protocols) + f"  {'samples':>7}"
    rows = [f"{'all':<{width}}  " + "  ".join(f"{a.accuracy:>10.4f}" for a in protocols.values())]
    rows[0] += f"  {scores.num_samples:>7}"
    for kind in kinds:
        values = [a.by_answer_type.get(kind, {}).get("accuracy") for a in protocols.values()]
        count = int(scores.accuracy_by_answer_type[kind]["num_samples"])
        rows.append(f"{kind:<{width}}  " + "  ".join(f"{v:>10.4f}" for v in values) + f"  {count:>7}")
    return [f"answer accuracy by protocol ({', '.join(protocols)}):", header, *rows]


def build_parser() -> argparse.ArgumentParser:
    """The command line's arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m grpo_lightning.evaluate",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "predictions",
        type=Path,
        help=f"JSON list of records, one per question_id: {', '.join(REQUIRED_RECORD_FIELDS)} (gt_explain: a list); "
        f"optional {', '.join(OPTIONAL_RECORD_FIELDS)}",
    )
    parser.add_argument("--out", type=Path, help="write the scores as JSON here")
    parser.add_argument(
        "--reference",
        type=Path,
        help="the split the predictions are of (ViVQA-X JSON or our JSONL): says how many prediction ids are not in "
        "it and how many of its questions have no prediction",
    )
    parser.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        default="raw",
        help="raw: the published ViVQA-X baselines' (exact match after strip+lower, raw strings); "
        "normalized: NFC, lowercase, no punctuation, yes/no synonyms (default: %(default)s)",
    )
    parser.add_argument("--html", type=Path, help="write a self-contained HTML report here")
    parser.add_argument("--images", type=Path, help="image folder for the report's thumbnails (COCO file names)")
    parser.add_argument(
        "--spice",
        action="store_true",
        help="also SPICE (needs Java and the Stanford CoreNLP models; nothing is downloaded)",
    )
    parser.add_argument(
        "--bertscore", action="store_true", help="also BERTScore F1 (needs the bert-score package and a local model)"
    )
    parser.add_argument(
        "--bertscore-model",
        default=DEFAULT_BERTSCORE_MODEL,
        help="BERTScore's model: a local folder or a name in the Hugging Face cache (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> Scores:
    """Runs the command line; returns the scores. Bad input exits with a message, not a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.images is not None and args.html is None:
        parser.error("--images only serves the report; add --html REPORT.html")
    if args.images is not None and not args.images.is_dir():
        parser.error(f"--images {args.images}: no such folder")
    metrics = list(DEFAULT_METRICS) + ["spice"] * args.spice + ["bertscore"] * args.bertscore
    try:
        records = load_predictions(args.predictions)
        described = read_metadata(args.predictions)
    except UserError as err:
        parser.exit(2, f"error: {err}\n")
    if described.status == "stale":
        print(f"note: {described.note}", file=sys.stderr)
    if args.reference is not None:
        try:
            print(f"note: {coverage(records, args.predictions, args.reference)}", file=sys.stderr)
        except UserError as err:
            parser.exit(2, f"error: {err}\n")
    scores = evaluate_predictions(
        records,
        args.protocol,
        metrics,
        source=str(args.predictions),
        bertscore_model=args.bertscore_model,
        progress=True,
    )
    for message in scores.skipped.values():
        print(f"note: {message}", file=sys.stderr)
    if described.status == "found":
        print(describe_run(described.metadata))
    print(format_table(scores))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(scores.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"scores written to {args.out}")
    if args.html is not None:
        write_report(
            args.html, records, scores, images_dir=args.images, progress=True, source=args.predictions, run=described
        )
        print(f"report written to {args.html}")
    return scores


if __name__ == "__main__":
    main()
