"""The reference corpus behind CIDEr-D's document frequencies: reading it, and caching what is computed from it.

The corpus is the training split's reference explanations, one document per sample, read with the data
module's own reader (:func:`grpo_lightning.data.read_samples`), so every form a training split may take is
read alike: the raw ViVQA-X JSON (list, or dict keyed by question id; references under ``explanation``) and
our JSONL (one JSON object per line; references under ``explanations``).

Document frequencies are cached twice: in the process (keyed by the file content's SHA-256, so several
reward instances share one table) and on disk under ``cache_dir`` (so that every process of a multi-GPU run,
and every later run, skips the counting). The disk file name holds the content hash, the n-gram order and
:data:`CACHE_FORMAT_VERSION`, which is bumped whenever tokenisation or the file layout changes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grpo_lightning.errors import ConfigError
from grpo_lightning.rewards.cider import MAX_ORDER, DocumentFrequency, document_frequency, tokenize

#: Bump when tokenisation (:func:`grpo_lightning.rewards.cider.tokenize`) or the cache layout changes.
CACHE_FORMAT_VERSION = 1

_CORPUS_HINT = "set model.rewards.kwargs.explanation.corpus_file to the training split (ViVQA-X JSON or our JSONL)."
_IN_PROCESS: dict[tuple[str, int], DocumentFrequency] = {}
_LOCK = threading.Lock()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/grpo_lightning/cider`` (``~/.cache/grpo_lightning/cider`` when XDG_CACHE_HOME is unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "grpo_lightning" / "cider"


def read_reference_sets(path: str | os.PathLike) -> list[list[str]]:
    """Each sample's reference explanations, read with :func:`grpo_lightning.data.read_samples`.

    Samples without any reference explanation are left out: they are not documents of the corpus.

    Raises:
        ConfigError: no such file.
        DataValidationError: records that cannot be read, each named with its file, line and sample id.
    """
    # Deferred: the data module imports Lightning, which rewards used on their own (evaluation) do not need.
    from grpo_lightning.data import DataValidationError, read_samples

    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such reference corpus; {_CORPUS_HINT}")
    samples, problems = read_samples(path)
    if problems:
        raise DataValidationError(problems, f"Fix these records of the explanation reward's corpus_file {path}.")
    return [list(sample.explanations) for sample in samples if sample.explanations]


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def corpus_document_frequency(
    corpus_file: str | os.PathLike, cache_dir: str | os.PathLike | None = None, max_order: int = MAX_ORDER
) -> DocumentFrequency:
    """Document frequencies of ``corpus_file``'s references, computed once and cached in the process and on disk.

    Args:
        corpus_file: the training split (see the module docstring for the forms read).
        cache_dir: folder of the disk cache (None: :func:`default_cache_dir`).
        max_order: largest n-gram order.

    Raises:
        ConfigError: no such file, or no sample in it has a reference explanation.
        DataValidationError: records that cannot be read, each named with its file, line and sample id.
    """
    path = Path(corpus_file)
    if not path.is_file():
        raise ConfigError(f"{path}: no such reference corpus; {_CORPUS_HINT}")
    key = (file_sha256(path), max_order)
    with _LOCK:
        if key in _IN_PROCESS:
            return _IN_PROCESS[key]
        cache_name = f"df-{key[0][:32]}-n{max_order}-v{CACHE_FORMAT_VERSION}.json.gz"
        cache_file = Path(cache_dir or default_cache_dir()) / cache_name
        df = _read_cache(cache_file)
        if df is None:
            reference_sets = read_reference_sets(path)
            if not reference_sets:
                raise ConfigError(
                    f"{path}: no sample of this reference corpus has a reference explanation, and CIDEr-D's document "
                    f"frequencies are counted over them; {_CORPUS_HINT}"
                )
            df = document_frequency(reference_token_sets(reference_sets), max_order)
            _write_cache(cache_file, df, source=path)
        _IN_PROCESS[key] = df
        return df


def _read_cache(cache_file: Path) -> DocumentFrequency | None:
    try:
        with gzip.open(cache_file, "rt", encoding="utf-8") as handle:
            payload = json.load(handle)
        counts = {tuple(ngram.split(" ")): count for ngram, count in payload["df"].items()}
        return DocumentFrequency(counts, int(payload["num_documents"]))
    except (OSError, ValueError, KeyError, EOFError):
        return None  # absent or damaged: recompute and overwrite


def _write_cache(cache_file: Path, df: DocumentFrequency, source: Path) -> None:
    payload: dict[str, Any] = {
        "format_version": CACHE_FORMAT_VERSION,
        "source": str(source),
        "num_documents": df.num_documents,
        # Tokens come from a whitespace split, so a space joins them unambiguously.
        "df": {" ".join(ngram): count for ngram, count in df.counts.items()},
    }
    tmp_name = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so that processes racing on the same cache never read a half-written file.
        handle, tmp_name = tempfile.mkstemp(dir=cache_file.parent, prefix=cache_file.name, suffix=".tmp")
        with os.fdopen(handle, "wb") as raw, gzip.open(raw, "wt", encoding="utf-8") as out:
            json.dump(payload, out, ensure_ascii=False)
        os.replace(tmp_name, cache_file)
    except OSError as err:
        # A read-only cache folder costs time (recounting in every process), not correctness.
        message = f"Cannot write the CIDEr-D document-frequency cache {cache_file} ({err}); set cache_dir."
        warnings.warn(message, stacklevel=2)
        if tmp_name is not None and os.path.exists(tmp_name):
            os.remove(tmp_name)


def reference_token_sets(reference_sets: Sequence[Sequence[str]]) -> list[list[list[str]]]:
    """Tokenised reference sets (:func:`~grpo_lightning.rewards.cider.tokenize` of every reference)."""
    return [[tokenize(text) for text in refs] for refs in reference_sets]
