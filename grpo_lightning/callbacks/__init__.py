"""Checkpoints that survive a kill, resume that finds them, and the Hugging Face export at the end of ``fit``.

One module per concern, each with what Lightning 2.6 does by itself and what is added:

* :mod:`~grpo_lightning.callbacks.checkpoint_io`: :class:`AtomicCheckpointIO`, checkpoint files that are complete or
  absent, never truncated.
* :mod:`~grpo_lightning.callbacks.checkpointing`: :class:`StepCheckpoint`, a checkpoint every N steps, at the end of
  training and on failure, each resuming exactly where a straight run would be; :func:`check_run_name`.
* :mod:`~grpo_lightning.callbacks.resume`: ``--ckpt_path last`` across the run's versions, and a resumed run logging
  into its earlier part's folder, each step once.
* :mod:`~grpo_lightning.callbacks.hf_export`: :class:`HFExportCallback`, the Hugging Face folder at the end of fit.

Configs name the classes from here (``grpo_lightning.callbacks.StepCheckpoint``), whichever module defines them.
"""

from grpo_lightning.callbacks.checkpoint_io import AtomicCheckpointIO, remove_stale_temp_files
from grpo_lightning.callbacks.checkpointing import StepCheckpoint, check_run_name
from grpo_lightning.callbacks.hf_export import HFExportCallback
from grpo_lightning.callbacks.resume import (
    continue_logger_version,
    forget_logs_past_checkpoint,
    log_beside_checkpoint,
    resolve_last_checkpoint,
)

__all__ = [
    "AtomicCheckpointIO",
    "HFExportCallback",
    "StepCheckpoint",
    "check_run_name",
    "continue_logger_version",
    "forget_logs_past_checkpoint",
    "log_beside_checkpoint",
    "remove_stale_temp_files",
    "resolve_last_checkpoint",
]
