"""Validation, test and predict of :class:`~grpo_lightning.module.GRPOModule`: greedy completions, scored.

Every step turns a batch into prediction records (:mod:`grpo_lightning.task`) and logs its rewards; at the end of
the split, the records of all processes are gathered and scored once, corpus-level (accuracy and explanation
metrics, :mod:`grpo_lightning.metrics`), or written as the predictions file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from grpo_lightning import __version__
from grpo_lightning.distributed import every_process
from grpo_lightning.predictions_file import PredictionsMetadata, metadata_path, utc_now, write_predictions
from grpo_lightning.task import prediction_records


class EvaluationMixin:
    """The evaluation half of the LightningModule; the module provides ``rollouts`` (its
    :class:`~grpo_lightning.stages.rollout.RolloutStage`, which samples and scores), ``evaluation``
    (:class:`~grpo_lightning.config.EvalConfig`) and ``_eval_records`` (the running split's records)."""

    def model_step(self, batch: dict[str, list[Any]]) -> tuple[list[dict[str, Any]], Tensor, Tensor]:
        """Greedy completion of each prompt, scored and turned into prediction records (:mod:`grpo_lightning.task`).

        Shared by validation, test and predict.
        """
        rollout = self.rollouts.generate(batch, num_generations=1, do_sample=False)
        rewards, per_func = self.rollouts.score(rollout, batch)
        return prediction_records(batch, rollout.completions), rewards, per_func

    def on_validation_epoch_start(self) -> None:
        self._eval_records = []

    on_test_epoch_start = on_predict_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def predict_step(self, batch: dict[str, list[Any]], batch_idx: int) -> list[dict[str, Any]]:
        return self._eval_step("predict", batch)

    def _eval_step(self, stage: str, batch: dict[str, list[Any]]) -> list[dict[str, Any]]:
        records, rewards, per_func = self.model_step(batch)
        self._eval_records.extend(records)
        if stage != "predict":
            size = len(rewards)
            self.log(f"{stage}/reward", rewards.mean(), batch_size=size, sync_dist=True, prog_bar=True)
            for f, name in enumerate(self.rollouts.reward_names):
                column = per_func[:, f]
                if not torch.isnan(column).all():
                    self.log(f"{stage}/rewards/{name}", torch.nanmean(column).float(), batch_size=size, sync_dist=True)
        return records

    def on_validation_epoch_end(self) -> None:
        self._log_eval_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval_metrics("test")

    def _log_eval_metrics(self, stage: str) -> None:
        """Accuracy and explanation metrics over the whole split, once (corpus-level), after gathering all ranks."""
        from grpo_lightning.metrics import evaluate_predictions

        records = self._gathered_records()
        metrics: dict[str, float] = {}
        if records and self.trainer.is_global_zero:
            scores = evaluate_predictions(records, self.evaluation.protocol, self.evaluation.metrics)
            metrics[f"{stage}/accuracy"] = scores.accuracy
            for kind in ("unfiltered", "filtered", "scaled"):
                metrics.update({f"{stage}/{kind}/{name}": value for name, value in getattr(scores, kind).items()})
        metrics = self.trainer.strategy.broadcast(metrics, src=0)
        for name, value in metrics.items():
            self.log(name, float(value), prog_bar=name == f"{stage}/accuracy")

    def on_predict_epoch_end(self) -> None:
        """Write the predictions file (public format, scored by ``python -m grpo_lightning.evaluate``) and, beside
        it, what made it (:mod:`grpo_lightning.predictions_file`)."""
        records = self._gathered_records()
        if not self.trainer.is_global_zero:
            return
        path = Path(self.evaluation.predictions_file or Path(self.trainer.log_dir or ".") / "predictions.json")
        metadata = PredictionsMetadata(
            model_name_or_path=str(self.model_name_or_path),
            checkpoint=_checkpoint_file(self.trainer.ckpt_path),
            protocol=self.evaluation.protocol,
            created=utc_now(),
            dataset_file=self._predict_dataset_file(),
            grpo_lightning_version=__version__,
        )
        write_predictions(path, records, metadata)
        rank_zero_info(f"Wrote {len(records)} predictions to {path} (what made them: {metadata_path(path).name})")

    def _predict_dataset_file(self) -> str | None:
        """The data file ``predict`` read: the data module's test split (its validation split when it has no test
        file); None when the predictions came from a dataloader without one."""
        splits = getattr(getattr(self.trainer, "datamodule", None), "splits", None)
        split = splits.get("test") if isinstance(splits, dict) else None
        return None if split is None or split.file is None else str(split.file)

    def _gathered_records(self) -> list[dict[str, Any]]:
        """Every rank's records, in rank order, without the copies a distributed sampler pads with."""
        records = self._eval_records
        parts = every_process(records, self.trainer.world_size)
        if len(parts) > 1:
            records = [record for part in parts for record in part]
            # Lightning's DistributedSampler pads the split with its first samples until every rank has as many, so
            # those come back twice. The data module refuses repeated ids (read_samples), so a repeated id here is
            # such a padding copy, and keeping each id's first record removes exactly them. One process has no
            # padding: its records go out as they are, and a repeat (a data module that let one through) is refused
            # by the scoring (validate_records) instead of silently dropped.
            unique: dict[Any, dict[str, Any]] = {}
            for record in records:
                unique.setdefault(record["question_id"], record)
            records = list(unique.values())
        return records


def _checkpoint_file(path: str | os.PathLike | None) -> str | None:
    """The checkpoint file ``path`` names, for the record: a link (``last.ckpt``, which moves on as a run goes on) is
    written as the file it points to."""
    if path is None:
        return None
    path = Path(path)
    return str(path.parent / os.readlink(path)) if path.is_symlink() else str(path)
