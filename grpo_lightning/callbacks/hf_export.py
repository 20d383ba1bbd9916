"""The Hugging Face export of the trained policy at the end of ``fit``, and its upload to the hub."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

from grpo_lightning.errors import ConfigError
from grpo_lightning.export import ExportDtype, export_model, push_to_hub

__all__ = ["HFExportCallback"]


class HFExportCallback(Callback):
    """At the end of ``fit``, export the policy as a Hugging Face folder (LoRA merged), and optionally push it.

    The folder loads with ``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained``
    (see :func:`grpo_lightning.export.export_model`). Only the global-rank-0 process writes. Sharded weights
    (DeepSpeed ZeRO-3, FSDP) are not whole on any process at that point: such runs are refused at start-up;
    export their checkpoint with ``python -m grpo_lightning.export CKPT OUT_DIR`` instead.

    Args:
        export_dir: the folder to write (default: ``<trainer.log_dir>/hf_export``, beside the run's logs and
            checkpoints). A folder given here must not hold files already, which is checked at start-up. The
            default one belongs to the run, as its checkpoints do: a resumed run that continues in the same log
            folder (see :func:`~grpo_lightning.callbacks.continue_logger_version`) replaces the export of its earlier
            part at the end of fit (the new folder is written beside it and swapped in whole).
        push_to_hub: also upload the folder to the hub repository ``hub_model_id`` (token: ``HF_TOKEN`` or the
            saved ``hf auth login``).
        hub_model_id: the repository to create or update, ``user-or-org/name``; required with ``push_to_hub``.
        private: create the repository as private (an existing repository keeps its visibility).
        dtype: cast the exported weights to this dtype (None: the training dtype).
    """

    def __init__(
        self,
        export_dir: str | None = None,
        push_to_hub: bool = False,
        hub_model_id: str | None = None,
        private: bool = True,
        dtype: ExportDtype | None = None,
    ):
        if push_to_hub and not hub_model_id:
            raise ConfigError(
                "HFExportCallback(push_to_hub=True) needs hub_model_id, the repository to create or update, "
                "e.g. hub_model_id: your-name/internvl3-1b-grpo-vivqax."
            )
        self.export_dir = export_dir
        self.push_to_hub = push_to_hub
        self.hub_model_id = hub_model_id
        self.private = private
        self.dtype = dtype
        self.exported_to: Path | None = None
        #: Set by :func:`~grpo_lightning.callbacks.continue_logger_version`: this run continues an earlier one's log
        #: folder and its export.
        self.continues_run = False

    def resolve_export_dir(self, trainer: L.Trainer) -> Path:
        """Where this run's export goes."""
        if self.export_dir is not None:
            return Path(self.export_dir)
        return Path(trainer.log_dir or trainer.default_root_dir, "hf_export")

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        strategy = trainer.strategy
        if getattr(strategy, "zero_stage_3", False) or isinstance(strategy, (FSDPStrategy, ModelParallelStrategy)):
            raise ConfigError(
                f"HFExportCallback cannot export at the end of fit with {type(strategy).__name__}: the weights are "
                "sharded across processes. Remove the callback and export the final checkpoint with "
                "`python -m grpo_lightning.export CKPT OUT_DIR`."
            )
        if self.export_dir is None and self.continues_run:
            return  # the run's own folder: an export there is the earlier part's of a resumed run, replaced at the end
        export_dir = self.resolve_export_dir(trainer)
        occupied = trainer.is_global_zero and export_dir.exists() and any(export_dir.iterdir())
        if trainer.strategy.reduce_boolean_decision(occupied, all=False):  # every process stops, not rank 0 alone
            raise ConfigError(
                f"HFExportCallback would export to {export_dir} at the end of fit, but it holds files already; "
                "choose another export_dir or move that folder away before training (or leave export_dir unset: "
                "the export then goes to the run's log folder, where a resumed run replaces its earlier export)."
            )

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        export_dir = self.resolve_export_dir(trainer)  # on every rank: trainer.log_dir is a collective call
        if not trainer.is_global_zero:
            return
        self.exported_to = export_model(
            pl_module.model,
            pl_module.adapter.processor,
            export_dir,
            dtype=self.dtype,
            overwrite=self.export_dir is None and self.continues_run,
        )
        rank_zero_info(f"Exported the trained model to {self.exported_to}")
        if self.push_to_hub:
            url = push_to_hub(
                self.exported_to,
                self.hub_model_id,
                private=self.private,
                commit_message=f"GRPO fine-tuning, {trainer.global_step} steps",
            )
            rank_zero_info(f"Pushed {self.exported_to} to {url}")
