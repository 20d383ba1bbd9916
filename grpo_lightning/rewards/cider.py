"""CIDEr-D as pure functions: n-gram counts, corpus document frequencies, TF-IDF vectors and the score.

CIDEr (Vedantam, Zitnick and Parikh, "CIDEr: Consensus-based Image Description Evaluation", CVPR 2015,
arXiv:1411.5726) compares a candidate sentence to a set of reference sentences through TF-IDF weighted
n-gram vectors (n = 1..4). CIDEr-D, the variant the COCO caption server reports and pycocoevalcap's
``Cider``/``CiderScorer`` computes, adds two guards against gaming: a candidate n-gram's weight is clipped
to the reference's (``min(g_c, g_r) * g_r`` in the dot product) and a Gaussian penalty on the length
difference, ``exp(-(l_c - l_r)^2 / (2 * sigma^2))`` with sigma = 6. For one candidate c and references
r_1..r_m::

    CIDEr-D(c, R) = 10/m * sum_j mean_n [ <min(g_n(c), g_n(r_j)), g_n(r_j)> / (|g_n(c)| |g_n(r_j)|) * penalty(c, r_j) ]
    g_n(s)[w] = tf_s(w) * (log N - log max(1, df(w)))

where N is the number of documents (reference *sets*, one per image/question) and df(w) the number of
documents whose references contain n-gram w. So the score lies in [0, 10].

What we match exactly (float64, to rounding): pycocoevalcap 1.2's ``CiderScorer`` given the same document
frequencies and the same N, including its details:

- the document frequencies and N come from the *corpus*, here the training split's references, computed once
  (pycocoevalcap computes them from the batch it is given; see :func:`document_frequency`);
- an n-gram absent from the corpus counts as df = 1, so it gets the largest weight, log N;
- a norm of zero (e.g. a 3-word sentence has no 4-grams) leaves that order's term at 0;
- the length in the penalty counts *bigrams* (the reference code's ``if n == 1`` tests the 0-based order
  index), i.e. ``max(words - 1, 0)``; the difference equals the word-length difference unless one side is
  empty.

Tokens are the whitespace split of :func:`grpo_lightning.text.normalize_text` (NFC, lowercase, punctuation
removed, diacritics kept): :func:`tokenize`. pycocoevalcap's COCO pipeline tokenises with the Stanford PTB
tokenizer instead; feed both the same tokens to compare them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from grpo_lightning.text import normalize_text

NGram = tuple[str, ...]

#: n-gram orders 1..MAX_ORDER, as CIDEr-D.
MAX_ORDER = 4
#: Standard deviation of the Gaussian length penalty, as CIDEr-D.
LENGTH_SIGMA = 6.0
#: CIDEr-D multiplies the mean similarity by 10; scores lie in [0, CIDER_SCALE].
CIDER_SCALE = 10.0


def tokenize(text: str) -> list[str]:
    """Words of ``text`` as CIDEr-D sees them: ``normalize_text(text).split()``."""
    return normalize_text(text).split()


def ngram_counts(tokens: Sequence[str], max_order: int = MAX_ORDER) -> Counter[NGram]:
    """Term frequencies of every n-gram of ``tokens`` with 1 <= n <= ``max_order``."""
    counts: Counter[NGram] = Counter()
    for order in range(1, max_order + 1):
        for start in range(len(tokens) - order + 1):
            counts[tuple(tokens[start : start + order])] += 1
    return counts


@dataclass(frozen=True)
class DocumentFrequency:
    """How many documents (reference sets) of a corpus contain each n-gram.

    Attributes:
        counts: n-gram -> number of documents whose references contain it (each document counted once).
        num_documents: N, the number of documents in the corpus.
    """

    counts: Mapping[NGram, int]
    num_documents: int

    def __post_init__(self) -> None:
        if self.num_documents < 1:
            raise ValueError("CIDEr-D needs a corpus of at least one reference set to compute document frequencies.")

    def idf(self, ngram: NGram) -> float:
        """log N - log max(1, df): 0 for an n-gram in every document, log N for one in none."""
        return math.log(float(self.num_documents)) - math.log(max(1.0, float(self.counts.get(ngram, 0))))


def document_frequency(
    reference_sets: Iterable[Sequence[Sequence[str]]], max_order: int = MAX_ORDER
) -> DocumentFrequency:
    """Document frequencies of a corpus; each reference set (the tokenised references of one sample) is a document.

    Computing these once over the training split is what makes CIDEr-D meaningful for a single sample. Computed
    over one GRPO group instead (G copies of the same references, as pycocoevalcap does with the batch it is
    given), every reference n-gram has df = N and IDF 0, so every candidate scores 0.

    Args:
        reference_sets: per document, its references as token lists.
        max_order: largest n-gram order.
    """
    counts: Counter[NGram] = Counter()
    num_documents = 0
    for references in reference_sets:
        num_documents += 1
        counts.update({ngram for tokens in references for ngram in ngram_counts(tokens, max_order)})
    return DocumentFrequency(dict(counts), num_documents)


@dataclass(frozen=True)
class TfIdfVector:
    """A sentence's TF-IDF n-gram vector, split by order.

    Attributes:
        weights: per order n-1, n-gram -> tf * idf.
        norms: per order, the Euclidean norm of ``weights[n - 1]``.
        length: the length the Gaussian penalty uses: the number of bigrams, ``max(words - 1, 0)``.
    """

    weights: tuple[dict[NGram, float], ...]
    norms: tuple[float, ...]
    length: int


def tfidf_vector(tokens: Sequence[str], df: DocumentFrequency, max_order: int = MAX_ORDER) -> TfIdfVector:
    """The TF-IDF vector of one tokenised sentence under the corpus document frequencies ``df``."""
    weights: list[dict[NGram, float]] = [{} for _ in range(max_order)]
    for ngram, term_frequency in ngram_counts(tokens, max_order).items():
        weights[len(ngram) - 1][ngram] = term_frequency * df.idf(ngram)
    norms = tuple(math.sqrt(sum(w * w for w in order.values())) for order in weights)
    return TfIdfVector(tuple(weights), norms, max(len(tokens) - 1, 0))


def clipped_similarity(candidate: TfIdfVector, reference: TfIdfVector, sigma: float = LENGTH_SIGMA) -> list[float]:
    """Per-order clipped cosine similarity times the Gaussian length penalty, one value per n-gram order."""
    delta = float(candidate.length - reference.length)
    penalty = math.exp(-(delta**2) / (2.0 * sigma**2))
    similarities = []
    for cand, ref, cand_norm, ref_norm in zip(
        candidate.weights, reference.weights, candidate.norms, reference.norms, strict=True
    ):
        dot = sum(min(weight, ref.get(ngram, 0.0)) * ref.get(ngram, 0.0) for ngram, weight in cand.items())
        if cand_norm != 0.0 and ref_norm != 0.0:
            dot /= cand_norm * ref_norm
        similarities.append(dot * penalty)
    return similarities


def cider_d_from_vectors(
    candidate: TfIdfVector, references: Sequence[TfIdfVector], sigma: float = LENGTH_SIGMA
) -> float:
    """CIDEr-D of a candidate vector against its reference vectors, in [0, 10]."""
    if not references:
        raise ValueError("CIDEr-D needs at least one reference.")
    total = 0.0
    for reference in references:
        per_order = clipped_similarity(candidate, reference, sigma)
        total += sum(per_order) / len(per_order)
    return CIDER_SCALE * total / len(references)


def cider_d(
    candidate: Sequence[str],
    references: Sequence[Sequence[str]],
    df: DocumentFrequency,
    max_order: int = MAX_ORDER,
    sigma: float = LENGTH_SIGMA,
) -> float:
    """CIDEr-D of one tokenised candidate against its tokenised references, in [0, 10].

    Args:
        candidate: the candidate's tokens (see :func:`tokenize`).
        references: each reference's tokens.
        df: document frequencies of the corpus (see :func:`document_frequency`).
        max_order: largest n-gram order (4 in CIDEr-D).
        sigma: standard deviation of the Gaussian length penalty (6 in CIDEr-D).
    """
    vectors = [tfidf_vector(tokens, df, max_order) for tokens in references]
    return cider_d_from_vectors(tfidf_vector(candidate, df, max_order), vectors, sigma)
