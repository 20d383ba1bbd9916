"""Explanation quality: a weighted mean of corpus CIDEr-D and CLIPScore for the explanation text, in [0, 1].

- **CIDEr-D** (:mod:`grpo_lightning.rewards.cider`) against all the sample's reference explanations, with
  document frequencies computed once from the training split (:mod:`~grpo_lightning.rewards.reference_corpus`),
  so a single sample, or G completions sharing one reference set, get a meaningful score. Mapped to [0, 1] as
  ``min(CIDEr-D / cider_scale, 1)``; with the default ``cider_scale`` = 10, CIDEr-D's maximum, the map is
  linear and never clips. On ViVQA-X val (document frequencies from val itself), a copy of one of a sample's
  three references scores a median CIDEr-D of 3.8 (0.38), and a reference scored against the other two
  only, i.e. a good human explanation that is not among the references, a median of 0.7 (0.07).
- **CLIPScore** (:mod:`grpo_lightning.rewards.clip_score`) of (image, explanation) with an open_clip model,
  multilingual by default. Mapped to [0, 1] as ``max(cos, 0)``, i.e. Hessel et al.'s CLIPScore / 2.5.

The CLIP model and the document-frequency table are loaded once per process by :meth:`ExplanationReward.setup`,
which the trainer runs before the first training step (:func:`grpo_lightning.rewards.prepare_rewards`), so that
weights that cannot be loaded or a bad corpus file stop the run before it trains; a reward used on its own loads
them on its first call instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from grpo_lightning.errors import ConfigError
from grpo_lightning.rewards.cider import (
    CIDER_SCALE,
    DocumentFrequency,
    TfIdfVector,
    cider_d_from_vectors,
    tfidf_vector,
    tokenize,
)
from grpo_lightning.rewards.clip_score import (
    ClipModel,
    clip_score,
    load_clip_model,
    open_images,
    resolve_device,
)
from grpo_lightning.rewards.reference_corpus import corpus_document_frequency
from grpo_lightning.task import EXPLAIN_TAG, extract_tag

DEFAULT_CLIP_MODEL = "xlm-roberta-base-ViT-B-32"


class ExplanationReward:
    """Score the explanation of each completion in [0, 1]: weighted mean of CIDEr-D and CLIPScore.

    A completion without an explain tag (:mod:`grpo_lightning.task`), or with an empty one, scores 0.0. A sample
    without reference explanations has no CIDEr-D; its score is its CLIPScore alone, or None (no opinion) when
    ``clip_weight`` is 0.

    Args:
        cider_weight: weight of CIDEr-D in the mean (0: no corpus is read).
        clip_weight: weight of CLIPScore in the mean (0: no CLIP model is loaded).
        corpus_file: the training split whose reference explanations give CIDEr-D's document frequencies:
            ViVQA-X JSON (list or dict of records with ``explanation``) or JSONL (``explanations`` per line).
            Required when ``cider_weight`` > 0.
        cache_dir: where the document frequencies are cached, keyed by a hash of the corpus file's content
            (None: ``~/.cache/grpo_lightning/cider``).
        cider_scale: CIDEr-D is divided by this and clipped to 1 (10: CIDEr-D's maximum, so no clipping).
        clip_model: an open_clip model name, an ``hf-hub:``/``local-dir:`` name, or a model-config JSON file.
        clip_pretrained: an open_clip pretrained tag (e.g. ``laion5b_s13b_b90k``), a local checkpoint file,
            ``"random"`` (random weights: tests and benchmarks only), or None for the model's first published tag.
        device: where CLIP runs (None: the current CUDA device if there is one, else the CPU).
        batch_size: images or texts per CLIP forward pass.
    """

    def __init__(
        self,
        cider_weight: float = 0.5,
        clip_weight: float = 0.5,
        corpus_file: str | None = None,
        cache_dir: str | None = None,
        cider_scale: float = CIDER_SCALE,
        clip_model: str = DEFAULT_CLIP_MODEL,
        clip_pretrained: str | None = None,
        device: str | None = None,
        batch_size: int = 64,
    ):
        if cider_weight < 0 or clip_weight < 0 or cider_weight + clip_weight <= 0:
            raise ConfigError(
                f"explanation reward: cider_weight ({cider_weight}) and clip_weight ({clip_weight}) must be >= 0 "
                "and not both 0."
            )
        if cider_weight > 0 and corpus_file is None:
            raise ConfigError(
                "explanation reward: CIDEr-D needs the training split's reference explanations for its document "
                "frequencies; set model.rewards.kwargs.explanation.corpus_file to the training JSON/JSONL file "
                "(or cider_weight: 0 to score with CLIPScore alone)."
            )
        if cider_weight > 0 and not os.path.isfile(corpus_file):
            raise ConfigError(
                f"explanation reward: corpus_file {corpus_file!r} does not exist; set "
                "model.rewards.kwargs.explanation.corpus_file to the training split (ViVQA-X JSON or JSONL)."
            )
        if cider_scale <= 0:
            raise ConfigError(f"explanation reward: cider_scale must be > 0, got {cider_scale}.")
        if batch_size < 1:
            raise ConfigError(f"explanation reward: batch_size must be >= 1, got {batch_size}.")
        self.cider_weight = float(cider_weight)
        self.clip_weight = float(clip_weight)
        self.corpus_file = corpus_file
        self.cache_dir = cache_dir
        self.cider_scale = float(cider_scale)
        self.clip_model = clip_model
        self.clip_pretrained = clip_pretrained
        self.device = device
        self.batch_size = batch_size
        self._document_frequency: DocumentFrequency | None = None
        self._clip: ClipModel | None = None

    def setup(self) -> None:
        """Load what the scores need, once per process: the corpus document frequencies (read from the disk cache or
        counted) when ``cider_weight`` > 0, the CLIP model when ``clip_weight`` > 0; nothing the second time.

        Raises:
            ConfigError: the corpus file is missing or holds no reference explanation; or the CLIP model is named
                wrongly (see :func:`~grpo_lightning.rewards.clip_score.load_clip_model`).
            DataValidationError: records of the corpus file that cannot be read.
            ClipLoadError: the CLIP weights or tokenizer cannot be loaded; the message says how to make them
                available.
        """
        if self.cider_weight > 0:
            self.document_frequency()
        if self.clip_weight > 0:
            self.clip()

    def __call__(
        self,
        completions: list[str],
        solution: list[str] | None = None,
        explanations: list[Sequence[str]] | None = None,
        image_path: list[str] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        """One score in [0, 1] per completion (None: no references and no CLIP)."""
        texts = [extract_tag(completion, EXPLAIN_TAG) or "" for completion in completions]
        # Only completions with an explanation are scored: the rest get 0.0 without opening their images.
        scored = [j for j, text in enumerate(texts) if text]
        components: list[tuple[float, list[float | None]]] = []
        if self.cider_weight > 0 and scored:
            if explanations is None:
                raise ValueError(
                    "explanation reward: the batch has no 'explanations' field (reference explanations per sample); "
                    "CIDEr-D needs it, or set cider_weight: 0."
                )
            components.append(
                (self.cider_weight, self.cider_scores([texts[j] for j in scored], [explanations[j] for j in scored]))
            )
        if self.clip_weight > 0 and scored:
            if image_path is None:
                raise ValueError(
                    "explanation reward: the batch has no 'image_path' field; CLIPScore needs it, "
                    "or set clip_weight: 0."
                )
            ids = kwargs.get("id")
            components.append(
                (
                    self.clip_weight,
                    self.clip_scores(
                        [texts[j] for j in scored],
                        [image_path[j] for j in scored],
                        None if ids is None else [ids[j] for j in scored],
                    ),
                )
            )
        scores: list[float | None] = [0.0] * len(completions)  # no (or an empty) explanation: nothing to score
        for position, j in enumerate(scored):
            scores[j] = _weighted_mean([(weight, values[position]) for weight, values in components])
        return scores

    def cider_scores(self, texts: Sequence[str], references: Sequence[Sequence[str]]) -> list[float | None]:
        """CIDEr-D / cider_scale clipped to [0, 1] per text; None where the sample has no references."""
        df = self.document_frequency()
        # The G completions of one prompt share its references: vectorise each reference set once.
        reference_vectors: dict[tuple[str, ...], list[TfIdfVector]] = {}
        scores: list[float | None] = []
        for text, refs in zip(texts, references, strict=True):
            refs = (refs,) if isinstance(refs, str) else tuple(refs)
            if not refs:
                scores.append(None)
                continue
            if refs not in reference_vectors:
                reference_vectors[refs] = [tfidf_vector(tokenize(ref), df) for ref in refs]
            value = cider_d_from_vectors(tfidf_vector(tokenize(text), df), reference_vectors[refs])
            scores.append(min(value / self.cider_scale, 1.0))
        return scores

    def clip_scores(
        self, texts: Sequence[str], image_paths: Sequence[str], ids: Sequence[Any] | None = None
    ) -> list[float]:
        """max(cos(image, text), 0) per pair, in [0, 1]; each distinct image is embedded once."""
        clip = self.clip()
        first_id: dict[str, Any] = {}
        for j, path in enumerate(image_paths):
            first_id.setdefault(path, ids[j] if ids is not None else f"#{j}")
        unique_paths = list(first_id)
        image_embeddings = clip.embed_images(open_images(unique_paths, list(first_id.values())), self.batch_size)
        row = {path: index for index, path in enumerate(unique_paths)}
        rows = torch.tensor([row[path] for path in image_paths], device=image_embeddings.device)
        text_embeddings = clip.embed_texts(texts, self.batch_size)
        scores = clip_score(image_embeddings[rows].double(), text_embeddings.double(), weight=1.0)
        return scores.cpu().tolist()

    def document_frequency(self) -> DocumentFrequency:
        """The corpus document frequencies, read (or computed) by :meth:`setup` or on first use."""
        if self._document_frequency is None:
            self._document_frequency = corpus_document_frequency(self.corpus_file, self.cache_dir)
        return self._document_frequency

    def clip(self) -> ClipModel:
        """The CLIP model, loaded by :meth:`setup` or on first use (once per process and device)."""
        if self._clip is None:
            self._clip = load_clip_model(self.clip_model, self.clip_pretrained, resolve_device(self.device))
        return self._clip

    def __getstate__(self) -> dict[str, Any]:
        # Pickling (e.g. spawning processes) carries the configuration; each process loads its own model.
        return {**self.__dict__, "_document_frequency": None, "_clip": None}

    def __repr__(self) -> str:
        return (
            f"ExplanationReward(cider_weight={self.cider_weight}, clip_weight={self.clip_weight}, "
            f"corpus_file={self.corpus_file!r}, clip_model={self.clip_model!r})"
        )


def _weighted_mean(components: list[tuple[float, float | None]]) -> float | None:
    """Weighted mean of the components that have a value; None when none has."""
    present = [(weight, value) for weight, value in components if value is not None]
    if not present:
        return None
    return sum(weight * value for weight, value in present) / sum(weight for weight, _ in present)
