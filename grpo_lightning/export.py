"""Hugging Face export: a trained policy as a folder that ``from_pretrained`` loads, optionally pushed to the hub.

``python -m grpo_lightning.export CKPT OUT_DIR [--dtype bfloat16] [--push-to-hub --hub-model-id ID]``
turns a Lightning checkpoint of :class:`~grpo_lightning.module.GRPOModule` into ``OUT_DIR`` with the model's
``config.json``, ``generation_config.json`` and safetensors weights beside the processor's files (tokenizer,
image processor, chat template), so that ``AutoModelForImageTextToText.from_pretrained(OUT_DIR)`` and
``AutoProcessor.from_pretrained(OUT_DIR)`` load it with no reference to this package. A LoRA policy is merged
into its base weights first (on a copy: the model being trained is never modified).

How a checkpoint becomes a model: its ``hyper_parameters`` rebuild the policy exactly as training built it
(:meth:`GRPOModule.configure_model`: the base checkpoint ``model_name_or_path`` and, when ``lora.r > 0``, the
same LoRA wrapping), then its ``state_dict`` (``model.*`` keys) is loaded strictly, so a checkpoint that does not
match the architecture stops with the names of the keys that differ instead of exporting base weights.
DeepSpeed checkpoints (a folder) are first consolidated with Lightning's
``convert_zero_checkpoint_to_fp32_state_dict``.

Every folder is written next to its destination under a temporary name and renamed into place when complete,
so an interrupted export never leaves a half-written ``OUT_DIR``. :class:`grpo_lightning.callbacks.HFExportCallback`
calls :func:`export_model` at the end of ``fit``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from grpo_lightning.checkpoint_files import key_mismatch
from grpo_lightning.config import LossConfig, RewardConfig, grouped_arguments
from grpo_lightning.errors import UserError

__all__ = [
    "DTYPES",
    "ExportError",
    "ExportSourceMissing",
    "ExportTargetExists",
    "export_checkpoint",
    "export_model",
    "load_policy_from_checkpoint",
    "main",
    "push_to_hub",
]

#: dtype names accepted by ``--dtype`` / ``dtype=``.
DTYPES = ("float32", "bfloat16", "float16")
ExportDtype = Literal["float32", "bfloat16", "float16"]

# GRPOModule arguments that do not shape the policy's weights, replaced when a checkpoint is rebuilt for export:
# no reference copy, no reward functions (a custom one may not be importable here), no attention kernel that the
# exporting machine may lack.
_EXPORT_OVERRIDES: dict[str, Any] = {
    "rewards": RewardConfig(),
    "attn_implementation": None,
    "gradient_checkpointing": False,
}


class ExportError(UserError, ValueError):
    """A checkpoint or base model that cannot be exported as it was named; the message says what to give instead."""


class ExportTargetExists(UserError, FileExistsError):
    """The folder to export to holds files already."""


class ExportSourceMissing(UserError, FileNotFoundError):
    """No checkpoint, or no exported model, where one was named."""


def export_model(
    model: torch.nn.Module,
    processor: Any,
    out_dir: str | os.PathLike,
    *,
    merge_lora: bool = True,
    dtype: ExportDtype | torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Save a model and its processor as a Hugging Face folder (safetensors weights, config, generation config).

    Args:
        model: a ``transformers`` image-text-to-text model, or a peft ``PeftModel`` around one. It is not modified:
            merging LoRA weights and changing the dtype happen on a copy.
        processor: the model's processor (``AutoProcessor``), saved beside the weights.
        out_dir: the folder to create. It is written under a temporary name next to it and renamed when complete.
        merge_lora: merge LoRA adapters into the base weights (``merge_and_unload``), so that the folder is a plain
            model. False saves a ``PeftModel`` as peft does: the adapter weights only, which load on top of the base
            checkpoint named in ``adapter_config.json``.
        dtype: cast the saved weights to this dtype (None: keep the model's).
        overwrite: replace ``out_dir`` if it exists and is not empty (otherwise that is an error).

    Returns:
        The path of the exported folder.

    Raises:
        FileExistsError: ``out_dir`` exists, is not empty, and ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    to_save = model
    if _is_peft_model(model) and merge_lora:
        to_save = copy.deepcopy(model).merge_and_unload()
    if dtype is not None:
        dtype = _torch_dtype(dtype)
        if any(p.dtype != dtype for p in to_save.parameters() if p.is_floating_point()):
            to_save = (copy.deepcopy(to_save) if to_save is model else to_save).to(dtype)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        to_save.save_pretrained(staging)
        processor.save_pretrained(staging)
        generation_config = getattr(to_save, "generation_config", None)
        if generation_config is not None and not (staging / "generation_config.json").exists():
            generation_config.save_pretrained(staging)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's folder is private (0700); the export is an ordinary folder
        if out_dir.exists():
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def load_policy_from_checkpoint(
    ckpt_path: str | os.PathLike, *, base_model: str | None = None
) -> tuple[torch.nn.Module, Any]:
    """Rebuild the trained policy of a GRPOModule checkpoint: its model (a PeftModel with LoRA) and processor.

    Args:
        ckpt_path: a Lightning checkpoint file, or the folder that DeepSpeed writes instead.
        base_model: where the base weights and processor are (default: the checkpoint's ``model_name_or_path``;
            give this when that path does not exist on this machine).

    Returns:
        ``(model, processor)``, the model on the CPU in eval mode with the checkpoint's weights.

    Raises:
        FileNotFoundError: no checkpoint at ``ckpt_path``.
        ValueError: not a GRPOModule checkpoint, or its weights do not fit the rebuilt model.
    """
    from grpo_lightning.module import GRPOModule

    checkpoint = _read_checkpoint(Path(ckpt_path))
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    state_dict = checkpoint.get("state_dict")
    if "model_name_or_path" not in hparams or not isinstance(state_dict, Mapping):
        raise ExportError(
            f"{ckpt_path} is not a GRPOModule checkpoint: it needs `hyper_parameters.model_name_or_path` and a "
            "`state_dict`. Export the checkpoints that `python -m grpo_lightning fit` writes."
        )
    if base_model is not None:
        hparams["model_name_or_path"] = base_model
    kwargs, unknown = grouped_arguments(hparams, list(inspect.signature(GRPOModule.__init__).parameters))
    if unknown:
        warnings.warn(
            f"{ckpt_path} has hyper-parameters that this version of GRPOModule does not know, ignored: {unknown}. "
            "If one of them shaped the model, export with the grpo_lightning version that trained it.",
            stacklevel=2,
        )
    kwargs.update(_EXPORT_OVERRIDES, loss=dataclasses.replace(kwargs.get("loss", LossConfig()), beta=0.0))
    module = GRPOModule(**kwargs)
    try:
        module.configure_model()
    except OSError as error:
        raise ExportError(
            f"Cannot load the base model {hparams['model_name_or_path']!r} named by {ckpt_path} (a relative path is "
            f"read from the current folder, {Path.cwd()}): {error}\n"
            "Pass the base checkpoint's location on this machine with --base-model (base_model=...)."
        ) from error
    missing, unexpected = key_mismatch(module.state_dict().keys(), state_dict.keys())
    if missing or unexpected:
        raise ExportError(
            f"The weights in {ckpt_path} do not fit the model rebuilt from its hyper-parameters "
            f"(model_name_or_path={hparams['model_name_or_path']!r}, lora.r={module.lora.r}): "
            f"{len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected key(s) {unexpected[:5]}. "
            "Check that --base-model is the checkpoint the run started from."
        )
    module.load_state_dict(state_dict, strict=True)
    return module.model.eval(), module.adapter.processor


def export_checkpoint(
    ckpt_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    merge_lora: bool = True,
    dtype: ExportDtype | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a GRPOModule checkpoint as a Hugging Face folder (see :func:`load_policy_from_checkpoint`).

    Args:
        ckpt_path: a Lightning checkpoint file, or the folder that DeepSpeed writes instead.
        out_dir: the folder to create.
        merge_lora: merge LoRA adapters into the base weights (see :func:`export_model`).
        dtype: cast the saved weights to this dtype (None: the checkpoint's).
        base_model: where the base weights and processor are (default: the checkpoint's ``model_name_or_path``).
        overwrite: replace ``out_dir`` if it exists and is not empty.

    Returns:
        The path of the exported folder.
    """
    _check_out_dir(Path(out_dir), overwrite)  # before the slow part
    model, processor = load_policy_from_checkpoint(ckpt_path, base_model=base_model)
    return export_model(model, processor, out_dir, merge_lora=merge_lora, dtype=dtype, overwrite=overwrite)


def push_to_hub(
    out_dir: str | os.PathLike,
    hub_model_id: str,
    *,
    private: bool = True,
    token: str | None = None,
    commit_message: str = "Upload GRPO fine-tuned model",
) -> str:
    """Upload an exported folder to a Hugging Face model repository, creating the repository if needed.

    Args:
        out_dir: a folder written by :func:`export_model`.
        hub_model_id: the repository, ``user-or-org/name``.
        private: create the repository as private (an existing repository keeps its visibility).
        token: a Hugging Face token with write access (None: ``HF_TOKEN`` or the login of ``hf auth login``).
        commit_message: the message of the upload commit.

    Returns:
        The URL of the repository.

    Raises:
        FileNotFoundError: ``out_dir`` is not a folder with a ``config.json``.
    """
    from huggingface_hub import HfApi

    out_dir = Path(out_dir)
    if not (out_dir / "config.json").is_file():
        raise ExportSourceMissing(
            f"{out_dir} holds no exported model (no config.json): export first, e.g. "
            "`python -m grpo_lightning.export CKPT OUT_DIR`, then push OUT_DIR."
        )
    api = HfApi(token=token)
    repo_url = api.create_repo(hub_model_id, private=private, repo_type="model", exist_ok=True)
    api.upload_folder(repo_id=hub_model_id, folder_path=out_dir, repo_type="model", commit_message=commit_message)
    return str(repo_url)


def main(args: list[str] | None = None) -> Path:
    """The command line: ``python -m grpo_lightning.export CKPT OUT_DIR [options]`` (``--help`` lists them)."""
    parser = argparse.ArgumentParser(
        prog="python -m grpo_lightning.export",
        description="Export a GRPO checkpoint as a Hugging Face model folder (LoRA merged), optionally push it.",
    )
    parser.add_argument(
        "ckpt", metavar="CKPT", help="a Lightning checkpoint (.ckpt file, or the folder DeepSpeed writes)"
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the folder to create")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="cast the weights (default: keep)")
    parser.add_argument("--base-model", default=None, help="base checkpoint, if the one recorded is not here")
    parser.add_argument("--keep-lora", action="store_true", help="save LoRA adapters unmerged (peft format)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it is not empty")
    parser.add_argument(
        "--push-to-hub",
        action="store_true",
        help="upload OUT_DIR to the hub afterwards (token: HF_TOKEN or hf auth login)",
    )
    parser.add_argument("--hub-model-id", default=None, help="repository to push to, user-or-org/name")
    parser.add_argument("--public", action="store_true", help="create the hub repository as public")
    parsed = parser.parse_args(args)
    if parsed.push_to_hub and not parsed.hub_model_id:
        parser.error("--push-to-hub needs --hub-model-id user-or-org/name, the repository to create or update.")
    try:
        out_dir = export_checkpoint(
            parsed.ckpt,
            parsed.out_dir,
            merge_lora=not parsed.keep_lora,
            dtype=parsed.dtype,
            base_model=parsed.base_model,
            overwrite=parsed.overwrite,
        )
        print(f"Exported {parsed.ckpt} to {out_dir}")
        if parsed.push_to_hub:
            url = push_to_hub(out_dir, parsed.hub_model_id, private=not parsed.public)
            print(f"Pushed {out_dir} to {url}")
    except UserError as err:  # one line and status 2, as the training command line prints a mistake
        parser.exit(2, f"error: {err}\n")
    return out_dir


# ---------------------------------------------------------------------------------------------- helpers
def _is_peft_model(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {DTYPES}.")
    return getattr(torch, dtype)


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportTargetExists(
            f"{out_dir} already exists and is not empty; export to a new folder, or overwrite it "
            "(--overwrite, overwrite=True)."
        )


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if path.is_dir():  # DeepSpeed writes a folder of shards: consolidate it (fp32 master weights)
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        with tempfile.TemporaryDirectory() as tmp:
            return convert_zero_checkpoint_to_fp32_state_dict(path, Path(tmp) / "consolidated.ckpt")
    if not path.is_file():
        raise ExportSourceMissing(
            f"No checkpoint at {path}; give the path of a .ckpt file or DeepSpeed checkpoint folder."
        )
    # mmap: optimizer states, which the export does not need, are never read into memory. Lightning checkpoints
    # hold more than tensors (hyper-parameters, loop states), hence weights_only=False: export checkpoints you trust.
    return torch.load(path, map_location="cpu", mmap=True, weights_only=False)


if __name__ == "__main__":
    main()
