"""Reading the checkpoint a user names (``--ckpt_path``), with one message for one that cannot be used.

A checkpoint is a Lightning ``.ckpt`` file or the folder DeepSpeed writes (whose ``*/mp_rank_00_model_states.pt``
holds everything but the weight shards: hyperparameters, loop states, ``global_step``). It is memory-mapped, so
reading its hyperparameters or step costs the few kilobytes they take, not the weights. What goes wrong with one
is the user's to fix and said in one :class:`CheckpointError`: a path that is not there, a file that a copy or a
killed save left truncated, a file that is no checkpoint, and weights of another model than the one configured.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from grpo_lightning.errors import UserError

#: How many mismatched weight names a message lists.
_LISTED_NAMES = 3


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, or holds the weights of another model."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint at ``path``: a file (loaded with ``weights_only``), or a DeepSpeed checkpoint folder's model
    states (DeepSpeed pickles its own objects beside them; the user named this folder to load, as Lightning loads it).

    Raises:
        CheckpointError: no such file or folder, a folder that is no DeepSpeed checkpoint, or a file that does not load.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*/mp_rank_00_model_states.pt"))
        if not found:
            raise CheckpointError(
                f"--ckpt_path {path}: a folder, but not a DeepSpeed checkpoint (no */mp_rank_00_model_states.pt in "
                "it); give a .ckpt file, or the folder DeepSpeed wrote (checkpoints/step=N.ckpt)."
            )
        return _load(found[0], weights_only=False, named=path)
    if not path.exists():
        hint = f" (the folder {path.parent} does not exist either)" if not path.parent.exists() else ""
        raise CheckpointError(
            f"--ckpt_path {path}: no such checkpoint{hint}; give the path of a .ckpt file, or --ckpt_path last to "
            "resume the newest run of this run name."
        )
    return _load(path, weights_only=True, named=path)


def _load(file: Path, weights_only: bool, named: Path) -> dict[str, Any]:
    try:
        checkpoint = torch.load(file, weights_only=weights_only, map_location="cpu", mmap=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"--ckpt_path {named}: not a readable checkpoint ({reason}). It may be truncated (a copy or a save that "
            "did not finish) or not a checkpoint at all; give another one, such as an earlier checkpoints/step=N.ckpt "
            "of the run."
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"--ckpt_path {named}: not a Lightning checkpoint (it holds a {type(checkpoint).__name__}, not the "
            "dictionary `fit` saves); give a checkpoint that `python -m grpo_lightning fit` wrote."
        )
    return checkpoint


def check_weights_fit(
    checkpoint: Mapping[str, Any], module: torch.nn.Module, path: str | os.PathLike | None = None
) -> None:
    """Refuse a checkpoint whose weights are not the module's: other names or other shapes (another model family,
    size or LoRA structure), before loading them would fail with a list of hundreds of names.

    A checkpoint without ``state_dict`` (DeepSpeed keeps the weights in shards), or with an empty one, is left to the
    load itself.

    Args:
        checkpoint: the loaded checkpoint.
        module: the module its ``state_dict`` is for.
        path: where the checkpoint came from, for the message.

    Raises:
        CheckpointError: naming the model the checkpoint was trained from, what differs, and what to do.
    """
    saved = checkpoint.get("state_dict")
    if not isinstance(saved, Mapping) or not saved:
        return
    expected = module.state_dict()
    # names matter only to a strict load (a module with ``strict_loading = False`` takes what fits); shapes always do
    strict = getattr(module, "strict_loading", True)
    missing, unexpected = key_mismatch(expected, saved) if strict else ([], [])
    reshaped = [
        f"{name} {tuple(saved[name].shape)} here {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in saved and hasattr(saved[name], "shape") and tuple(saved[name].shape) != tuple(tensor.shape)
    ]
    if not (missing or unexpected or reshaped):
        return
    differences = []
    if missing:
        differences.append(f"{len(missing)} of the model's weights are not in it ({_some(missing)})")
    if unexpected:
        differences.append(f"{len(unexpected)} of its weights are not in the model ({_some(unexpected)})")
    if reshaped:
        differences.append(f"{len(reshaped)} have another shape ({_some(reshaped)})")
    hparams = checkpoint.get("hyper_parameters") or {}
    trained_from = hparams.get("model_name_or_path")
    origin = f" It was trained from {trained_from!r}." if trained_from else ""
    raise CheckpointError(
        f"--ckpt_path {path or '(the checkpoint)'}: it holds the weights of another model than the one configured "
        f"({getattr(module, 'model_name_or_path', type(module).__name__)!r}): {'; '.join(differences)}.{origin} "
        "Give the model it was trained from (--model.model_name_or_path) and its LoRA settings, or a checkpoint of "
        "this model."
    )


def key_mismatch(expected: Iterable[str], found: Iterable[str]) -> tuple[list[str], list[str]]:
    """The names of ``expected`` (a model's weights) that ``found`` (a checkpoint's) lacks, and those it has beyond
    them, each sorted."""
    expected, found = set(expected), set(found)
    return sorted(expected - found), sorted(found - expected)


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED_NAMES])
    return shown + (f", and {len(names) - _LISTED_NAMES} more" if len(names) > _LISTED_NAMES else "")


__all__ = ["CheckpointError", "check_weights_fit", "key_mismatch", "read_checkpoint"]
