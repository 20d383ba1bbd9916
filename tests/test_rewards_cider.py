"""CIDEr-D: equality with pycocoevalcap given the same document frequencies, the degenerate batch-IDF behaviour we
avoid, hand-worked values, and the reference corpus (forms read, disk cache)."""

from __future__ import annotations

import json
import math
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import CiderScorer

from grpo_lightning.data import DataValidationError
from grpo_lightning.errors import ConfigError
from grpo_lightning.rewards import cider as cider_module
from grpo_lightning.rewards import reference_corpus
from grpo_lightning.rewards.cider import (
    DocumentFrequency,
    cider_d,
    clipped_similarity,
    document_frequency,
    ngram_counts,
    tfidf_vector,
    tokenize,
)
from grpo_lightning.rewards.explanation import ExplanationReward
from grpo_lightning.rewards.reference_corpus import corpus_document_frequency, read_reference_sets
from tests.helpers import VIVQAX_DIR, vivqax_absent

#: The real ViVQA-X val split: the references and the document-frequency corpus of the tests on real data.
VAL_FILE = VIVQAX_DIR / "vivqax" / "ViVQA-X_val.json"


def _coco(text: str) -> str:
    """What pycocoevalcap gets: our tokens, joined by spaces (it splits on whitespace)."""
    return " ".join(tokenize(text))


needs_val = pytest.mark.skipif(not VAL_FILE.is_file(), reason=vivqax_absent(VAL_FILE))


@pytest.fixture(scope="module")
def val_records() -> list[dict]:
    return json.loads(VAL_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def val_hypotheses(val_records) -> list[str]:
    """One candidate per val sample, of five kinds: a copy of a reference, another sample's reference, a 4-word
    prefix, the question, and the empty string."""
    hypotheses = []
    for i, record in enumerate(val_records):
        refs = record["explanation"]
        other = val_records[(7 * i + 3) % len(val_records)]["explanation"]
        kind = i % 5
        hypotheses.append([refs[0], other[-1], " ".join(refs[-1].split()[:4]), record["question"], ""][kind])
    return hypotheses


@needs_val
def test_cider_d_equals_pycocoevalcap_with_the_same_document_frequencies(val_records, val_hypotheses, tmp_path):
    # pycocoevalcap computes document frequencies from the corpus it is given; giving it the whole val split makes
    # them the same as ours computed from the val file, which we check before comparing the 1,459 scores.
    scorer = CiderScorer(n=4, sigma=6.0)
    for hypothesis, record in zip(val_hypotheses, val_records, strict=True):
        scorer += (_coco(hypothesis), [_coco(ref) for ref in record["explanation"]])
    _, theirs = scorer.compute_score()

    df = corpus_document_frequency(VAL_FILE, cache_dir=tmp_path)
    assert df.num_documents == len(val_records) == 1459
    assert dict(df.counts) == {ngram: count for ngram, count in scorer.document_frequency.items() if count > 0}

    ours = np.array(
        [
            cider_d(tokenize(hypothesis), [tokenize(ref) for ref in record["explanation"]], df)
            for hypothesis, record in zip(val_hypotheses, val_records, strict=True)
        ]
    )
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert ours.max() > 5.0 and (ours == 0).sum() >= len(ours) // 5  # copies score high, empty candidates 0

    # The reward returns the same numbers / 10, batched over the whole split.
    reward = ExplanationReward(cider_weight=1.0, clip_weight=0.0, corpus_file=str(VAL_FILE), cache_dir=str(tmp_path))
    completions = [f"<think>.</think><answer>.</answer><explain>{h}</explain>" for h in val_hypotheses]
    scores = reward(completions, explanations=[r["explanation"] for r in val_records])
    np.testing.assert_allclose(np.array(scores, dtype=np.float64), theirs / 10.0, rtol=0, atol=1e-7)


@needs_val
def test_batch_document_frequencies_are_degenerate_and_corpus_ones_are_not(val_records, tmp_path):
    """Why document frequencies come from the corpus: with the batch's own, CIDEr gives no learning signal."""
    record = val_records[0]
    refs = record["explanation"]
    group = [refs[0], refs[1], " ".join(refs[0].split()[:3]), record["question"], "một con chó đang ngủ", refs[2]]
    gts = {0: [_coco(ref) for ref in refs]}

    # One sample: N = 1, so every IDF is log 1 - log 1 = 0 and even a copy of a reference scores 0.
    single, _ = Cider().compute_score(gts, {0: [_coco(refs[0])]})
    assert single == 0.0
    # G completions of one prompt: every reference n-gram has df = G = N, IDF 0: all scores 0, no variance.
    _, batch_scores = Cider().compute_score(
        {j: gts[0] for j in range(len(group))}, {j: [_coco(text)] for j, text in enumerate(group)}
    )
    assert np.all(batch_scores == 0.0) and np.std(batch_scores) == 0.0

    reward = ExplanationReward(cider_weight=1.0, clip_weight=0.0, corpus_file=str(VAL_FILE), cache_dir=str(tmp_path))
    completions = [f"<explain>{text}</explain>" for text in group]
    scores = reward(completions, explanations=[refs] * len(group))
    assert reward([completions[0]], explanations=[refs])[0] == scores[0] > 0.3  # one sample alone: meaningful
    assert np.std(scores) > 0.05
    assert max(scores) in (scores[0], scores[1], scores[5]) and scores[4] < scores[0]


def _plain_cider_d(candidate: list[str], references: list[list[str]], corpus: list[list[list[str]]]) -> float:
    """The CIDEr-D formula written out in float64 loops, independent of the module (its reference)."""
    n_docs = len(corpus)

    def grams(tokens, n):
        return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]

    def idf(gram):
        df = sum(any(gram in grams(ref, len(gram)) for ref in doc) for doc in corpus)
        return math.log(n_docs) - math.log(max(df, 1))

    def vec(tokens, n):
        out = {}
        for gram in grams(tokens, n):
            out[gram] = out.get(gram, 0.0) + idf(gram)
        return out

    total = 0.0
    for ref in references:
        per_order = []
        for n in range(1, 5):
            vc, vr = vec(candidate, n), vec(ref, n)
            nc = math.sqrt(sum(v * v for v in vc.values()))
            nr = math.sqrt(sum(v * v for v in vr.values()))
            dot = sum(min(v, vr.get(g, 0.0)) * vr.get(g, 0.0) for g, v in vc.items())
            cos = dot / (nc * nr) if nc and nr else 0.0
            delta = max(len(candidate) - 1, 0) - max(len(ref) - 1, 0)
            per_order.append(cos * math.exp(-(delta**2) / 72.0))
        total += sum(per_order) / 4
    return 10.0 * total / len(references)


CORPUS = [
    ["con mèo đang ngồi trên ghế", "một con mèo ngồi trên cái ghế"],
    ["chiếc xe buýt màu đỏ đang chạy trên đường"],
    ["người đàn ông cầm một chiếc ô màu đen", "anh ấy đang cầm ô"],
    ["hai con chó đang chơi trên bãi cỏ xanh"],
]


@pytest.mark.parametrize(
    ("candidate", "references", "expected"),
    [
        # A sentence whose every n-gram is unique to its document, against itself: cosine 1 at every order.
        ("chiếc xe buýt màu đỏ đang chạy trên đường", ["chiếc xe buýt màu đỏ đang chạy trên đường"], 10.0),
        ("hai con chó đang chơi", ["hai con chó đang chơi trên bãi cỏ xanh"], None),
        ("con mèo ngồi trên ghế", ["con mèo đang ngồi trên ghế", "một con mèo ngồi trên cái ghế"], None),
        ("Con MÈO đang ngồi trên ghế!", ["con mèo đang ngồi trên ghế", "một con mèo ngồi trên cái ghế"], None),
        (unicodedata.normalize("NFD", "anh ấy đang cầm ô"), ["người đàn ông cầm một chiếc ô màu đen"], None),
        ("máy bay trên bầu trời", ["hai con chó đang chơi trên bãi cỏ xanh"], None),  # one shared word, "trên"
        ("ngựa vằn", ["con mèo đang ngồi trên ghế"], 0.0),  # nothing shared
        ("", ["con mèo đang ngồi trên ghế"], 0.0),
        ("ghế", ["ghế"], None),  # one word: only the unigram order contributes
    ],
)
def test_cider_d_matches_a_float64_loop(candidate, references, expected):
    corpus_tokens = [[tokenize(ref) for ref in doc] for doc in CORPUS]
    df = document_frequency(corpus_tokens)
    value = cider_d(tokenize(candidate), [tokenize(ref) for ref in references], df)
    reference = _plain_cider_d(tokenize(candidate), [tokenize(ref) for ref in references], corpus_tokens)
    assert value == pytest.approx(reference, abs=1e-12)
    if expected is not None:
        assert value == pytest.approx(expected, abs=1e-12)
    assert 0.0 <= value <= 10.0


def test_ngrams_idf_and_length_conventions():
    assert ngram_counts(["a", "b", "a"], 2) == {("a",): 2, ("b",): 1, ("a", "b"): 1, ("b", "a"): 1}
    df = DocumentFrequency({("a",): 2, ("b",): 1}, num_documents=4)
    assert df.idf(("a",)) == pytest.approx(math.log(4) - math.log(2))
    assert df.idf(("zzz",)) == pytest.approx(math.log(4))  # unseen n-grams weigh most, as in pycocoevalcap
    assert tfidf_vector(["a", "b", "a"], df).length == 2  # bigrams, as pycocoevalcap counts length
    assert tfidf_vector([], df).length == 0
    with pytest.raises(ValueError, match="at least one reference set"):
        DocumentFrequency({}, num_documents=0)


def test_length_penalty_is_gaussian_with_sigma_6():
    df = document_frequency([[["a", "b", "c", "d"]], [["e"]]])
    short, long = tfidf_vector(["a", "b"], df), tfidf_vector(["a", "b", "c", "d", "x", "y", "z", "w"], df)
    unpenalised = clipped_similarity(short, long, sigma=1e9)
    penalised = clipped_similarity(short, long)
    factor = math.exp(-((1 - 7) ** 2) / (2 * 6.0**2))
    assert penalised == pytest.approx([u * factor for u in unpenalised], abs=1e-15)


def test_clipping_stops_repetition_from_paying():
    df = document_frequency([[["con", "mèo"]], [["con", "chó"]], [["xe", "buýt"]]])
    once = cider_d(tokenize("mèo"), [tokenize("con mèo")], df)
    repeated = cider_d(tokenize("mèo mèo mèo mèo"), [tokenize("con mèo")], df)
    assert repeated < once


# --------------------------------------------------------------------------------------- reference corpus
RECORDS = [
    {
        "question": "Con vật trong ảnh là gì?",
        "image_name": "COCO_train2014_000000000001.jpg",
        "answer": "con mèo",
        "explanation": ["con mèo đang ngồi trên ghế", "một con mèo ngồi trên cái ghế"],
        "question_id": "1001",
    },
    {
        "question": "Xe buýt có màu gì?",
        "image_name": "COCO_train2014_000000000002.jpg",
        "answer": "đỏ",
        "explanation": ["chiếc xe buýt màu đỏ đang chạy trên đường"],
        "question_id": "2001",
    },
]


def _write_forms(folder: Path) -> dict[str, Path]:
    as_list = folder / "train_list.json"
    as_list.write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    as_dict = folder / "train_dict.json"
    as_dict.write_text(
        json.dumps({r["question_id"]: {k: v for k, v in r.items() if k != "question_id"} for r in RECORDS}),
        encoding="utf-8",
    )
    as_jsonl = folder / "train.jsonl"
    lines = []
    for r in RECORDS:
        gpt = f"<answer>{r['answer']}</answer><explain>{r['explanation'][0]}</explain>"
        lines.append(
            json.dumps(
                {
                    "id": r["question_id"],
                    "image": r["image_name"],
                    "conversations": [
                        {"from": "human", "value": f"<image>{r['question']}"},
                        {"from": "gpt", "value": gpt},
                    ],
                    "explanations": r["explanation"],
                },
                ensure_ascii=False,
            )
        )
    as_jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"list": as_list, "dict": as_dict, "jsonl": as_jsonl}


def test_every_corpus_form_gives_the_same_document_frequencies(tmp_path):
    forms = _write_forms(tmp_path)
    expected = [r["explanation"] for r in RECORDS]
    tables = []
    for path in forms.values():
        assert read_reference_sets(path) == expected
        tables.append(corpus_document_frequency(path, cache_dir=tmp_path / "cache"))
    assert all(table == tables[0] for table in tables)
    assert tables[0].num_documents == 2
    assert tables[0].counts[("con", "mèo")] == 1 and tables[0].counts[("trên",)] == 2  # once per document


def test_document_frequencies_are_cached_on_disk_by_content(tmp_path, monkeypatch):
    path = _write_forms(tmp_path)["list"]
    cache = tmp_path / "cache"
    monkeypatch.setattr(reference_corpus, "_IN_PROCESS", {})
    first = corpus_document_frequency(path, cache_dir=cache)
    files = list(cache.glob("df-*.json.gz"))
    assert len(files) == 1 and reference_corpus.file_sha256(path)[:32] in files[0].name

    # A new process (empty in-process cache) reads the disk cache instead of counting again.
    monkeypatch.setattr(reference_corpus, "_IN_PROCESS", {})
    monkeypatch.setattr(reference_corpus, "document_frequency", _must_not_be_called)
    assert corpus_document_frequency(path, cache_dir=cache) == first
    # Within a process the table is shared, whatever the cache folder.
    assert corpus_document_frequency(path, cache_dir=tmp_path / "elsewhere") is corpus_document_frequency(path, cache)

    # Other content, other key: counted anew.
    monkeypatch.setattr(reference_corpus, "document_frequency", cider_module.document_frequency)
    path.write_text(json.dumps(RECORDS[:1], ensure_ascii=False), encoding="utf-8")
    assert corpus_document_frequency(path, cache_dir=cache).num_documents == 1
    assert len(list(cache.glob("df-*.json.gz"))) == 2


def _must_not_be_called(*args, **kwargs):
    raise AssertionError("document frequencies were recounted although a cache exists")


#: A training record in the conversation form, whose answer has no explanation: no document of CIDEr-D's corpus.
UNEXPLAINED = {
    "id": "77",
    "image": "COCO_train2014_000000000077.jpg",
    "conversations": [{"from": "human", "value": "<image>Màu gì?"}, {"from": "gpt", "value": "<answer>đỏ</answer>"}],
}


@pytest.mark.parametrize(
    ("name", "content", "error", "message"),
    [
        ("missing.json", None, ConfigError, r"missing.json: no such reference corpus; set .*explanation.corpus_file"),
        (
            "bad.json",
            json.dumps([RECORDS[0], {"question": "?", "question_id": "77"}]),
            DataValidationError,
            r"(?s)bad.json:\d+: sample 77: missing field .*corpus_file",
        ),
        (
            "unexplained.jsonl",
            json.dumps(UNEXPLAINED, ensure_ascii=False),
            ConfigError,
            r"unexplained.jsonl: no sample of this reference corpus has a reference explanation.*corpus_file",
        ),
    ],
)
def test_corpus_errors_name_the_file_and_what_to_do(tmp_path, name, content, error, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(error, match=message):
        corpus_document_frequency(path, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("df-*"))  # nothing cached from a corpus that cannot be used
