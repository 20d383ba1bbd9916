"""The training progress bar of the command line: optimizer steps of the run, not batches of an epoch.

GRPO runs are sized in optimizer steps (``trainer.max_steps``) and cross epoch boundaries freely, so Lightning's
default bar ("Epoch 0/-2", a batch counter that restarts every epoch, the logger's version as ``v_num``) says
little. :class:`StepProgressBar` counts ``trainer.global_step`` against ``max_steps`` across epochs and resumes,
and shows the metrics the module logs with ``prog_bar=True``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

TRAIN_DESCRIPTION = "train step"


def total_optimizer_steps(trainer: pl.Trainer) -> int | None:
    """The run's length in optimizer steps: ``max_steps``, else Lightning's estimate; None when unbounded."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return trainer.max_steps
    estimate = trainer.estimated_stepping_batches
    return int(estimate) if math.isfinite(estimate) else None


class StepProgressBar(TQDMProgressBar):
    """A tqdm bar over the run's optimizer steps: ``train step: 37/100 [...] reward=0.21, kl=0.01``."""

    @property
    def train_description(self) -> str:
        return TRAIN_DESCRIPTION  # from the bar's first line on, not "Training"

    def init_train_tqdm(self) -> Tqdm:
        bar = super().init_train_tqdm()
        bar.unit = "step"
        return bar

    def on_train_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_start(trainer, *args)
        # A run resumed mid-epoch gets no on_train_epoch_start (Lightning calls it only when an epoch begins): the bar
        # is set up here too, or it would read "Training: 5/?".
        self._count_steps(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self._count_steps(trainer)

    def _count_steps(self, trainer: pl.Trainer) -> None:
        """Make the bar count the run's optimizer steps, from the step the run is at."""
        bar = self.train_progress_bar
        bar.total = total_optimizer_steps(trainer)  # not reset(), which would draw the count from 0 again first
        bar.set_description(TRAIN_DESCRIPTION, refresh=False)
        self._show_step(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        if self._should_update(trainer.global_step, self.train_progress_bar.total):
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            self._show_step(trainer)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the log folder's version says nothing about the run's progress
        return metrics

    def _show_step(self, trainer: pl.Trainer) -> None:
        bar = self.train_progress_bar
        if not bar.disable:
            bar.n = trainer.global_step  # resumed runs start where the checkpoint left off
            bar.refresh()
