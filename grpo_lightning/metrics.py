"""Scoring of VQA-with-explanations predictions: answer accuracy and explanation metrics (pycocoevalcap).

Shared by ``python -m grpo_lightning.evaluate`` and the LightningModule's validation. The one entry point
is :func:`evaluate_predictions`: records in the public predictions format in, :class:`Scores` out.

A record (one per sample, defined in :mod:`grpo_lightning.task`) has ``question_id`` (no two records of a set
share one), ``question``, ``pred_ans``, ``pred_explain`` (strings, ``""`` when the model gave none), ``gt_ans`` (a
string) and ``gt_explain`` (a non-empty list of reference strings): each record carries its own ground truth, so
there is no separate reference set to match ids against. Other fields (``completion``, ``think``,
``answer_type``, ``image_name``, ``image_id``) are optional; ``answer_type`` adds a per-type accuracy.

Two protocols, registered in :data:`PROTOCOLS`:

- ``raw``: the protocol of the public ViVQA-X baselines (duongtruongbinh/Improve_ViVQA-X_baseline). An
  answer is correct when ``pred.strip().lower() == gt.strip().lower()``. A predicted explanation whose
  lowercased text starts with "because" or "vì" loses that prefix (and the whitespace after it; the test
  must ignore case, "Vì ..." included, to reproduce the published numbers); nothing else is changed, in
  hypotheses or references. pycocoevalcap then splits on single spaces, so "mèo." and
  "mèo" are different tokens. This reproduces the published scores to every printed digit.
- ``normalized`` (recommended): answers compared after :func:`grpo_lightning.text.canonical_answer`
  (Unicode NFC, lowercase, punctuation removed, "đúng"/"phải" = "có", "sai" = "không"); hypotheses and
  references go through :func:`grpo_lightning.text.normalize_text` (the same, without synonyms), and a
  hypothesis whose first word is "vì" or "because" loses it. Tokens are then the space-separated words of
  the normalised text: Vietnamese syllables with their diacritics, punctuation gone.

The two protocols can disagree on an answer ("đúng" for "có" is wrong under ``raw``, right under ``normalized``), and
``evaluate`` defaults to ``raw`` while training validates with ``normalized``; so :func:`evaluate_predictions` gives
the answer accuracy under every protocol (:attr:`Scores.accuracy_by_protocol`, :func:`answer_accuracy`) beside the
explanation metrics, which it computes under the protocol asked for alone.

Explanation metrics are registered in :data:`METRICS`: ``bleu`` (BLEU-1..4), ``meteor``, ``rouge``
(ROUGE-L), ``cider`` by default; ``spice`` and ``bertscore`` on request. A metric whose resources are
missing (Java for METEOR and SPICE, the Stanford CoreNLP models for SPICE, the ``bert-score`` package and a
local model for BERTScore) is left out and named in :attr:`Scores.skipped` with the reason; nothing is
ever downloaded. METEOR runs in one Java process per Python process, started on first use (a few
seconds) and reused by later calls. All values are fractions as pycocoevalcap returns them (0-1, CIDEr
up to 10), the scale of the published baseline scores.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from grpo_lightning.errors import UserError
from grpo_lightning.registry import Registry
from grpo_lightning.task import REQUIRED_RECORD_FIELDS
from grpo_lightning.text import canonical_answer, normalize_text

#: Explanation metrics computed unless asked otherwise (those of the published ViVQA-X baselines).
DEFAULT_METRICS = ("bleu", "meteor", "rouge", "cider")

#: The model BERTScore uses unless told otherwise: bert-score's own choice for languages other than
#: English and Chinese. It must already be on this machine (a local folder or the Hugging Face cache).
DEFAULT_BERTSCORE_MODEL = "bert-base-multilingual-cased"

#: How the values are written in the scores JSON.
SCALE = "fraction: 0-1 (CIDEr 0-10), as in the published ViVQA-X baseline scores; multiply by 100 for %"

_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


class PredictionsFormatError(UserError, ValueError):
    """A predictions file or record list that does not follow the public predictions format."""


# ------------------------------------------------------------------------------------------- protocols
@dataclass(frozen=True)
class Protocol:
    """How answers are compared and explanations prepared before scoring.

    Attributes:
        name: the registry name (``--protocol``).
        answer_key: maps an answer to the form compared for exact match.
        hypothesis: maps a predicted explanation to the text the metrics see.
        reference: maps a reference explanation to the text the metrics see.
    """

    name: str
    answer_key: Callable[[str], str]
    hypothesis: Callable[[str], str]
    reference: Callable[[str], str]


#: Explanation prefixes the protocols remove from hypotheses (the ground truth never has them).
EXPLANATION_PREFIXES = ("because", "vì")


def strip_explanation_prefix(text: str) -> str:
    """Drops a leading "because" / "vì" (any case) and the whitespace after it, as the public baselines do.

    The test is on characters, not words, exactly like the published evaluation: "Vì trời mưa" becomes
    "trời mưa".
    """
    lowered = text.lower()
    for prefix in EXPLANATION_PREFIXES:
        if lowered.startswith(prefix):
            return text[len(prefix) :].strip()
    return text


def _normalized_hypothesis(text: str) -> str:
    words = normalize_text(text).split(" ")
    if words[0] in EXPLANATION_PREFIXES:
        words = words[1:]
    return " ".join(words)


def _raw_answer_key(text: str) -> str:
    return text.strip().lower()


def _identity(text: str) -> str:
    return text


#: Registered protocols, by name (``evaluation.protocol``, ``evaluate --protocol``).
PROTOCOLS: Registry[Protocol] = Registry("protocol")
PROTOCOLS.register("raw", Protocol("raw", _raw_answer_key, hypothesis=strip_explanation_prefix, reference=_identity))
PROTOCOLS.register(
    "normalized",
    Protocol("normalized", answer_key=canonical_answer, hypothesis=_normalized_hypothesis, reference=normalize_text),
)


def get_protocol(name: str) -> Protocol:
    """The registered protocol called ``name``; a ValueError lists the known ones otherwise."""
    return PROTOCOLS[name]


# --------------------------------------------------------------------------------- explanation metrics
# A metric maps pycocoevalcap inputs ({index: [hypothesis]}, {index: references}) to corpus values and
# per-sample values, both keyed by the published column names ("BLEU-1", "CIDEr", ...).
MetricResult = tuple[dict[str, float], dict[str, list[float]]]


@dataclass(frozen=True)
class Metric:
    """An explanation metric.

    Attributes:
        name: the registry name (``bleu``, ``meteor``, ...).
        compute: ``(gts, res, options) -> (corpus, per_sample)``, pycocoevalcap's input layout:
            ``gts = {index: references}``, ``res = {index: [hypothesis]}``; ``options`` are
            :func:`score_explanations`' keyword options (e.g. ``bertscore_model``).
        unavailable: ``options -> message | None``: why the metric cannot run on this machine, if it cannot
            (a sentence that starts "<METRIC> left out:").
    """

    name: str
    compute: Callable[[dict[int, list[str]], dict[int, list[str]], dict[str, Any]], MetricResult]
    unavailable: Callable[[dict[str, Any]], str | None] = lambda options: None


def _java_missing(metric: str) -> str | None:
    if shutil.which("java") is None:
        return (
            f"{metric} left out: it needs Java, and no `java` is on PATH; install a Java runtime "
            "(e.g. `apt-get install -y default-jre-headless`) to get it."
        )
    return None


def _module_installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _bleu(gts, res, options) -> MetricResult:
    from pycocoevalcap.bleu.bleu import Bleu

    corpus, per_sample = Bleu(4).compute_score(gts, res, verbose=0)
    names = [f"BLEU-{n}" for n in range(1, 5)]
    return (
        {name: float(value) for name, value in zip(names, corpus, strict=True)},
        {name: [float(v) for v in values] for name, values in zip(names, per_sample, strict=True)},
    )


@functools.cache
def _meteor_scorer():
    # One METEOR JVM per process: starting it (loading the paraphrase tables) takes about 6 s; it is
    # reused by every later call, e.g. each validation epoch, and ends with the process.
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def _meteor_line(text: str) -> str:
    # METEOR's stdio protocol is one line per request with " ||| " between fields: a newline or a
    # "|||" inside a sentence would desynchronise it and hang. The raw baselines never had either.
    if "\n" in text or "\r" in text or "|||" in text:
        return " ".join(text.replace("|||", " ").split())
    return text


def _meteor(gts, res, options) -> MetricResult:
    gts = {i: [_meteor_line(ref) for ref in refs] for i, refs in gts.items()}
    res = {i: [_meteor_line(hyp) for hyp in hyps] for i, hyps in res.items()}
    if _meteor_scorer().meteor_p.poll() is not None:  # the JVM has gone (killed, out of memory): start anew
        _meteor_scorer.cache_clear()
    corpus, per_sample = _meteor_scorer().compute_score(gts, res)
    return {"METEOR": float(corpus)}, {"METEOR": [float(v) for v in per_sample]}


def _rouge(gts, res, options) -> MetricResult:
    from pycocoevalcap.rouge.rouge import Rouge

    corpus, per_sample = Rouge().compute_score(gts, res)
    return {"ROUGE_L": float(corpus)}, {"ROUGE_L": [float(v) for v in per_sample]}


def _cider(gts, res, options) -> MetricResult:
    from pycocoevalcap.cider.cider import Cider

    corpus, per_sample = Cider().compute_score(gts, res)
    return {"CIDEr": float(corpus)}, {"CIDEr": [float(v) for v in per_sample]}


def spice_lib_dir() -> Path:
    """Where pycocoevalcap keeps the SPICE jar and the Stanford CoreNLP jars it downloads on first use."""
    return Path(importlib.util.find_spec("pycocoevalcap.spice").origin).parent / "lib"


def _spice_unavailable(options) -> str | None:
    lib = spice_lib_dir()
    missing = [jar for jar in _CORENLP_JARS if not (lib / jar).is_file()]
    if missing:
        return (
            f"SPICE left out: it needs the Stanford CoreNLP 3.6.0 models ({', '.join(missing)}) in {lib}, which "
            "pycocoevalcap downloads from nlp.stanford.edu on first use; this evaluator never downloads. On a "
            "machine with internet run `python -c 'from pycocoevalcap.spice.get_stanford_models import "
            "get_stanford_models as g; g()'` and copy the two jars there."
        )
    return _java_missing("SPICE")


def _spice(gts, res, options) -> MetricResult:
    from pycocoevalcap.spice.spice import Spice

    corpus, per_sample = Spice().compute_score(gts, res)
    return {"SPICE": float(corpus)}, {"SPICE": [float(sample["All"]["f"]) for sample in per_sample]}


def _bertscore_model_is_local(model: str) -> bool:
    if Path(model).is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model, "config.json"), str)


def _bertscore_unavailable(options) -> str | None:
    if not _module_installed("bert_score"):
        return "BERTScore left out: it needs the bert-score package, which is not installed (`pip install bert-score`)."
    model = options.get("bertscore_model", DEFAULT_BERTSCORE_MODEL)
    if not _bertscore_model_is_local(model):
        return (
            f"BERTScore left out: it needs the model {model!r}, which is neither a local folder nor in the "
            "Hugging Face cache; this evaluator never downloads. Fetch it where there is internet "
            f"(`hf download {model}`) or pass a local model folder (--bertscore-model DIR)."
        )
    return None


def _bertscore(gts, res, options) -> MetricResult:
    import bert_score
    from transformers import AutoConfig

    model = options.get("bertscore_model", DEFAULT_BERTSCORE_MODEL)
    # bert-score knows the best layer of the models it lists; for any other model use the last one.
    num_layers = bert_score.utils.model2layers.get(model)
    if num_layers is None:
        num_layers = AutoConfig.from_pretrained(model, local_files_only=True).num_hidden_layers
    keys = list(res)
    _, _, f1 = bert_score.score(
        [res[i][0] for i in keys], [gts[i] for i in keys], model_type=model, num_layers=num_layers, verbose=False
    )
    values = [float(v) for v in f1]
    return {"BERTScore_F1": sum(values) / len(values)}, {"BERTScore_F1": values}


#: Registered explanation metrics, by name.
METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("bleu", _bleu),
        Metric("meteor", _meteor, unavailable=lambda options: _java_missing("METEOR")),
        Metric("rouge", _rouge),
        Metric("cider", _cider),
        Metric("spice", _spice, unavailable=_spice_unavailable),
        Metric("bertscore", _bertscore, unavailable=_bertscore_unavailable),
    )
}


@dataclass(frozen=True)
class ExplanationScores:
    """Explanation metrics over one set of samples.

    Attributes:
        corpus: corpus-level value per column ("BLEU-1".."BLEU-4", "METEOR", "ROUGE_L", "CIDEr", ...).
        per_sample: per column, one value per hypothesis, in input order (pycocoevalcap's per-sample output;
            CIDEr's depends on the whole corpus through its document frequencies).
        skipped: metric name -> a message saying why it was left out.
    """

    corpus: dict[str, float] = field(default_factory=dict)
    per_sample: dict[str, list[float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def score_explanations(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    bertscore_model: str = DEFAULT_BERTSCORE_MODEL,
    progress: str | None = None,
) -> ExplanationScores:
    """Scores hypotheses against their references with pycocoevalcap, as ``{index: [hyp]}`` / ``{index: refs}``.

    Strings are scored as given (the protocol prepares them); pycocoevalcap splits them on spaces.

    Args:
        hypotheses: one explanation per sample, shape ``(n,)``.
        references: the reference explanations of each sample, shape ``(n, k_i)`` with every ``k_i >= 1``.
        metrics: names from :data:`METRICS`.
        bertscore_model: the model BERTScore uses (a local folder or a name in the Hugging Face cache).
        progress: the label of a tqdm bar over the metrics; None shows none.

    Returns:
        Corpus and per-sample values; metrics that cannot run here are in ``skipped`` with the reason.
        With no hypotheses, everything is empty.

    Raises:
        ValueError: on an unknown metric name, or when the lengths or reference lists do not fit.
    """
    unknown = [name for name in metrics if name not in METRICS]
    if unknown:
        raise ValueError(f"Unknown explanation metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}.")
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists; give one per sample.")
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise ValueError(f"Sample(s) at index {empty[:5]} have no reference explanation; each needs at least one.")
    options = {"bertscore_model": bertscore_model}
    skipped = {name: message for name in metrics if (message := METRICS[name].unavailable(options))}
    if not hypotheses:
        return ExplanationScores(skipped=skipped)
    res = {i: [hypothesis] for i, hypothesis in enumerate(hypotheses)}
    gts = {i: list(refs) for i, refs in enumerate(references)}
    corpus: dict[str, float] = {}
    per_sample: dict[str, list[float]] = {}
    runnable = [name for name in metrics if name not in skipped]
    for name in tqdm(runnable, desc=progress, unit="metric", disable=progress is None, leave=False):
        values, samples = METRICS[name].compute(gts, res, options)
        corpus.update(values)
        per_sample.update(samples)
    return ExplanationScores(corpus=corpus, per_sample=per_sample, skipped=skipped)


# ------------------------------------------------------------------------------------------ predictions
def validate_records(records: Any, source: str = "predictions") -> list[dict[str, Any]]:
    """Checks that ``records`` follow the public predictions format; returns them as a list.

    Args:
        records: the parsed predictions (a list of dicts, see the module docstring).
        source: where they came from (a file path), named in errors.

    Raises:
        PredictionsFormatError: naming ``source``, the record's index and question_id, and what to fix.
    """
    if not isinstance(records, list):
        raise PredictionsFormatError(
            f"{source}: expected a JSON list of prediction records, got a {type(records).__name__}; "
            f"write one record per sample with the fields {', '.join(REQUIRED_RECORD_FIELDS)}."
        )
    for index, record in enumerate(records):
        where = f"{source}: record {index}"
        if not isinstance(record, dict):
            raise PredictionsFormatError(f"{where} is a {type(record).__name__}, not an object with named fields.")
        where += f" (question_id {record['question_id']!r})" if "question_id" in record else ""
        missing = [name for name in REQUIRED_RECORD_FIELDS if name not in record]
        if missing:
            raise PredictionsFormatError(
                f"{where} lacks {', '.join(missing)}; every record needs {', '.join(REQUIRED_RECORD_FIELDS)} "
                '(pred_explain may be "").'
            )
        for name in ("question", "pred_ans", "pred_explain", "gt_ans"):
            if not isinstance(record[name], str):
                raise PredictionsFormatError(
                    f'{where}: {name} is {record[name]!r}, not a string; write "" for a missing prediction.'
                )
        refs = record["gt_explain"]
        if not isinstance(refs, list) or not refs or not all(isinstance(ref, str) for ref in refs):
            raise PredictionsFormatError(
                f"{where}: gt_explain is {refs!r}; it must be a non-empty list of reference explanation strings."
            )
    _check_unique_question_ids(records, source)
    return records


def _check_unique_question_ids(records: list[dict[str, Any]], source: str) -> None:
    """Refuses a question scored twice: it would weigh twice in every corpus-level score, without a word.

    Ids are compared as strings: ``1001`` and ``"1001"`` name the same question.
    """
    first_index: dict[str, int] = {}
    repeats: list[tuple[int, int]] = []  # (first index, index of the copy)
    for index, record in enumerate(records):
        first = first_index.setdefault(str(record["question_id"]), index)
        if first != index:
            repeats.append((first, index))
    if repeats:
        first, index = repeats[0]
        others = f" ({len(repeats)} records in all repeat an earlier question_id)" if len(repeats) > 1 else ""
        raise PredictionsFormatError(
            f"{source}: record {index} repeats question_id {records[index]['question_id']!r} of record {first}"
            f"{others}; each question must be scored once: keep one record per question_id."
        )


@dataclass(frozen=True)
class AnswerAccuracy:
    """How many answers are right under one protocol.

    Attributes:
        protocol: the protocol's name.
        num_correct: how many answers were correct.
        accuracy: ``num_correct`` over the number of records (0 for none).
        by_answer_type: answer type -> ``{"accuracy", "num_samples"}``, for records that have one.
        correct: per record, in order, whether its answer was correct.
    """

    protocol: str
    num_correct: int
    accuracy: float
    by_answer_type: dict[str, dict[str, float]]
    correct: list[bool]

    def to_dict(self) -> dict[str, Any]:
        """As the scores JSON writes it: everything but ``correct``."""
        return {
            "accuracy": self.accuracy,
            "num_correct": self.num_correct,
            "accuracy_by_answer_type": self.by_answer_type,
        }


def answer_accuracy(records: Sequence[dict[str, Any]], protocol: str) -> AnswerAccuracy:
    """Exact-match answer accuracy of checked records (:func:`validate_records`) under the protocol ``protocol``."""
    chosen = get_protocol(protocol)
    correct = [chosen.answer_key(r["pred_ans"]) == chosen.answer_key(r["gt_ans"]) for r in records]
    return AnswerAccuracy(
        protocol=chosen.name,
        num_correct=sum(correct),
        accuracy=sum(correct) / len(records) if records else 0.0,
        by_answer_type=_accuracy_by_answer_type(records, correct),
        correct=correct,
    )


@dataclass(frozen=True)
class Scores:
    """The scores of a set of predictions.

    Attributes:
        protocol: the protocol's name.
        num_samples: how many records were scored.
        num_correct: how many answers were correct.
        accuracy: ``num_correct / num_samples`` (0 for no samples).
        unfiltered: explanation metrics over all samples.
        filtered: explanation metrics over the correctly answered samples only (empty when there are none).
        scaled: ``unfiltered`` times ``accuracy``.
        accuracy_by_answer_type: answer type -> ``{"accuracy", "num_samples"}``, for records that have one.
        skipped: metric name -> a message saying why it was left out.
        per_sample: one dict per record, in order: ``index``, ``question_id``, ``correct``,
            ``correct_by_protocol`` (protocol name -> bool) and the unfiltered per-sample value of each column.
        accuracy_by_protocol: the answer accuracy under every registered protocol, by name (``protocol``'s
            included), so that a reader sees how much the choice of protocol moves it; the explanation scores are
            ``protocol``'s alone.
    """

    protocol: str
    num_samples: int
    num_correct: int
    accuracy: float
    unfiltered: dict[str, float]
    filtered: dict[str, float]
    scaled: dict[str, float]
    accuracy_by_answer_type: dict[str, dict[str, float]]
    skipped: dict[str, str]
    per_sample: list[dict[str, Any]]
    accuracy_by_protocol: dict[str, AnswerAccuracy] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The scores JSON: everything but ``per_sample``, plus the ``scale`` the values are written in."""
        return {
            "protocol": self.protocol,
            "scale": SCALE,
            "num_samples": self.num_samples,
            "num_correct": self.num_correct,
            "accuracy": self.accuracy,
            "unfiltered": self.unfiltered,
            "filtered": self.filtered,
            "scaled": self.scaled,
            "accuracy_by_answer_type": self.accuracy_by_answer_type,
            "skipped": self.skipped,
            "accuracy_by_protocol": {name: answers.to_dict() for name, answers in self.accuracy_by_protocol.items()},
        }


def evaluate_predictions(
    records: list[dict[str, Any]],
    protocol: str = "raw",
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    source: str = "predictions",
    bertscore_model: str = DEFAULT_BERTSCORE_MODEL,
    progress: bool = False,
) -> Scores:
    """Answer accuracy and explanation metrics (unfiltered, filtered, scaled) of prediction records.

    Args:
        records: records in the public predictions format (see the module docstring).
        protocol: a name from :data:`PROTOCOLS`: ``raw`` (the published baselines') or ``normalized``.
        metrics: explanation metric names from :data:`METRICS`.
        source: where the records came from (a file path), named in errors.
        bertscore_model: the model BERTScore uses, when ``metrics`` has ``bertscore``.
        progress: show tqdm bars.

    Returns:
        The :class:`Scores`; ``to_dict()`` is the scores JSON.

    Raises:
        PredictionsFormatError: when a record does not follow the format.
        ValueError: on an unknown protocol or metric.
    """
    chosen = get_protocol(protocol)
    records = validate_records(records, source)
    by_protocol = {name: answer_accuracy(records, name) for name in PROTOCOLS}
    correct = by_protocol[chosen.name].correct
    hypotheses = [chosen.hypothesis(r["pred_explain"]) for r in records]
    references = [[chosen.reference(ref) for ref in r["gt_explain"]] for r in records]
    kwargs = {"metrics": metrics, "bertscore_model": bertscore_model}
    unfiltered = score_explanations(hypotheses, references, **kwargs, progress="unfiltered" if progress else None)
    kept = [i for i, ok in enumerate(correct) if ok]
    filtered = score_explanations(
        [hypotheses[i] for i in kept],
        [references[i] for i in kept],
        **kwargs,
        progress="filtered (correct answers)" if progress else None,
    )
    accuracy = by_protocol[chosen.name].accuracy
    return Scores(
        protocol=chosen.name,
        num_samples=len(records),
        num_correct=len(kept),
        accuracy=accuracy,
        unfiltered=unfiltered.corpus,
        filtered=filtered.corpus,
        scaled={name: value * accuracy for name, value in unfiltered.corpus.items()},
        accuracy_by_answer_type=by_protocol[chosen.name].by_answer_type,
        skipped=unfiltered.skipped,
        per_sample=_per_sample_scores(records, chosen.name, by_protocol, unfiltered.per_sample),
        accuracy_by_protocol=by_protocol,
    )


def _per_sample_scores(
    records: Sequence[dict[str, Any]],
    protocol: str,
    by_protocol: dict[str, AnswerAccuracy],
    per_sample: dict[str, list[Any]],
) -> list[dict[str, Any]]:
    """One row per record: its index, question id, whether the answer was right (under ``protocol``, and under
    each protocol), and its explanation scores."""
    return [
        {
            "index": i,
            "question_id": r["question_id"],
            "correct": by_protocol[protocol].correct[i],
            "correct_by_protocol": {name: answers.correct[i] for name, answers in by_protocol.items()},
            **{name: values[i] for name, values in per_sample.items()},
        }
        for i, r in enumerate(records)
    ]


def _accuracy_by_answer_type(records: Sequence[dict[str, Any]], correct: Sequence[bool]) -> dict[str, dict[str, float]]:
    totals: dict[str, list[int]] = {}
    for record, ok in zip(records, correct, strict=True):
        if isinstance(record.get("answer_type"), str):
            counts = totals.setdefault(record["answer_type"], [0, 0])
            counts[0] += ok
            counts[1] += 1
    return {kind: {"accuracy": hits / total, "num_samples": total} for kind, (hits, total) in sorted(totals.items())}
