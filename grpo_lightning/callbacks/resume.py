"""A resumed run continues its earlier part: the checkpoint ``last`` names, the log folder, and each step logged once.

``fit(ckpt_path="last")`` resumes the most recent ``last.ckpt`` among the versions of the run name
(:meth:`StepCheckpoint.find_last_checkpoint`; Lightning looks only in the new, empty version folder), which
:func:`resolve_last_checkpoint` names before the run starts. :func:`continue_logger_version` (which the command line
calls) then makes the resumed run log into that checkpoint's version folder again, so that its curves go on where
they stopped instead of starting over in a new folder, and :func:`forget_logs_past_checkpoint` drops what the killed
run logged past its checkpoint. ``validate``, ``test`` and ``predict`` of a checkpoint log inside its run
(:func:`log_beside_checkpoint`). Checked in ``tests/test_checkpoints.py``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from grpo_lightning.callbacks.checkpointing import StepCheckpoint
from grpo_lightning.callbacks.hf_export import HFExportCallback
from grpo_lightning.checkpoint_files import read_checkpoint
from grpo_lightning.rollout_files import drop_rollouts_from

__all__ = [
    "checkpoint_version_folder",
    "continue_logger_version",
    "forget_logs_past_checkpoint",
    "log_beside_checkpoint",
    "resolve_last_checkpoint",
]


def continue_logger_version(trainer: L.Trainer, ckpt_path: str | os.PathLike | None) -> list[str]:
    """Make a resumed run log into the version folder its checkpoint was saved in, so its curves continue there.

    A checkpoint in ``<save_dir>/<name>/<version>/checkpoints/`` of a logger of ``trainer`` (TensorBoard, CSV)
    whose version was left to numbering sets that logger's version to ``<version>``: the resumed run writes its
    events, config, checkpoints and export beside the earlier part's, and TensorBoard shows one curve. Call it
    before ``trainer.fit`` (the command line does, for ``--ckpt_path``); once a logger has picked its version
    (``trainer.log_dir`` was read), or when the version was set, it is left alone.

    Args:
        trainer: the Trainer that will resume.
        ckpt_path: the checkpoint file or folder the run resumes from; ``"last"``: the one that
            :class:`StepCheckpoint` finds for ``fit(ckpt_path="last")`` (None: nothing to do).

    Returns:
        The log folders the loggers now write to because of this call.
    """
    version_folder = checkpoint_version_folder(trainer, ckpt_path)
    if version_folder is None:
        return []
    numbered = re.fullmatch(r"version_(\d+)", version_folder.name)
    version = int(numbered.group(1)) if numbered else version_folder.name
    continued = []
    for logger in _loggers_of_run(trainer, version_folder):
        if getattr(logger, "_version", 0) is None:
            logger._version = version
        elif logger._version not in (version, version_folder.name):  # a version the user set for another folder
            continue
        continued.append(str(version_folder))
    if continued:  # the folder's checkpoints and export are this run's own earlier part's
        for callback in trainer.callbacks:
            if isinstance(callback, (StepCheckpoint, HFExportCallback)):
                callback.continues_run = True
    return continued


def checkpoint_version_folder(trainer: L.Trainer, ckpt_path: str | os.PathLike | None) -> Path | None:
    """The run version folder a local checkpoint was saved in (``<save_dir>/<name>/<version>/checkpoints/``; ``last``
    resolved as :func:`resolve_last_checkpoint` does), or None for a checkpoint elsewhere."""
    ckpt_path = resolve_last_checkpoint(trainer, ckpt_path)
    if ckpt_path is None or not _is_local_file_protocol(str(ckpt_path)):
        return None
    checkpoint_folder = Path(os.path.abspath(ckpt_path)).parent  # abspath: last.ckpt may be a link, keep its folder
    return checkpoint_folder.parent if checkpoint_folder.name == "checkpoints" else None


def log_beside_checkpoint(trainer: L.Trainer, ckpt_path: str | os.PathLike | None, stage: str) -> list[str]:
    """Make ``validate``, ``test`` or ``predict`` of a checkpoint log inside the run that saved it,
    ``<save_dir>/<name>/<version>/<stage>/version_K``, instead of as a new version of the run name beside the training
    runs: a logger (TensorBoard, CSV) whose run name is the checkpoint's, its version left to numbering, takes
    ``<name>/<version>/<stage>`` as its name. Call it before the loggers pick their folders (``trainer.log_dir``).

    Returns:
        The log folders the loggers now write under because of this call.
    """
    version_folder = checkpoint_version_folder(trainer, ckpt_path)
    if version_folder is None:
        return []
    moved = []
    for logger in _loggers_of_run(trainer, version_folder):
        if not hasattr(logger, "_name") or getattr(logger, "_version", 0) is not None:
            continue
        logger._name = os.path.join(logger.name, version_folder.name, stage)
        moved.append(str(version_folder / stage))
    return moved


def _loggers_of_run(trainer: L.Trainer, version_folder: Path) -> list[Logger]:
    """The loggers of ``trainer`` that write local folders under the run name ``version_folder`` is a version of."""
    return [
        logger
        for logger in trainer.loggers
        if (root := getattr(logger, "root_dir", None)) is not None
        and _is_local_file_protocol(root)
        and Path(os.path.abspath(root)) == version_folder.parent
    ]


def forget_logs_past_checkpoint(trainer: L.Trainer, ckpt_path: str | os.PathLike, folders: list[str]) -> None:
    """Make a run resumed into its earlier part's log folder (``folders``, from :func:`continue_logger_version`) log
    each step once: the steps a killed run logged past its checkpoint are logged again by the resumed run.

    TensorBoard loggers get ``purge_step``: TensorBoard then hides, in every event file of the folder, the events
    from the first step the resumed run logs on (Lightning's logging step counts batches, ``_batches_that_stepped``:
    with ``num_iterations`` > 1 it is not the optimizer step). The rollout files from the checkpoint's optimizer step
    on (their names count optimizer steps) are deleted. Call it before the loggers write (before ``trainer.fit``;
    Lightning creates the writers first thing), once this process holds the folder.

    Args:
        trainer: the Trainer that will resume.
        ckpt_path: the checkpoint it resumes from (a path: ``last`` resolved, see :func:`resolve_last_checkpoint`).
        folders: the log folders it continues.
    """
    if not folders:
        return
    checkpoint = read_checkpoint(ckpt_path)
    optimizer_step = checkpoint.get("global_step")
    if optimizer_step is None:
        return
    epoch_loop = (checkpoint.get("loops") or {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    # saved at the end of a step, before Lightning counts that batch: the resumed run's first log is one step on
    batches = epoch_loop.get("_batches_that_stepped")
    log_step = int(batches) + 1 if batches is not None else int(optimizer_step)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and os.path.abspath(logger.log_dir) in map(os.path.abspath, folders):
            if logger._experiment is not None:  # the writer exists: too late for purge_step
                rank_zero_warn(f"{logger.log_dir}: the events from step {log_step} on stay; the writer was open.")
            logger._kwargs["purge_step"] = log_step  # passed to the SummaryWriter it creates
    if trainer.is_global_zero:
        for folder in folders:
            drop_rollouts_from(folder, int(optimizer_step))


def resolve_last_checkpoint(trainer: L.Trainer, ckpt_path: str | os.PathLike | None) -> str | os.PathLike | None:
    """``ckpt_path`` with ``last`` replaced by the checkpoint ``fit(ckpt_path="last")`` resumes
    (:meth:`StepCheckpoint.find_last_checkpoint`; None when there is none); any other value as it is."""
    if ckpt_path != "last":
        return ckpt_path
    found = [c.find_last_checkpoint(trainer) for c in trainer.checkpoint_callbacks if isinstance(c, StepCheckpoint)]
    return max((path for path in found if path), key=os.path.getmtime, default=None)
