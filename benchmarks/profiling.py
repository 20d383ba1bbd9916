"""Step timings for benchmarks and checks: the per-stage times and token counts the module logs each step."""

from __future__ import annotations

import statistics

import torch
from lightning.pytorch.callbacks import Callback

#: What GRPOModule logs about a step's cost (see :func:`grpo_lightning.train_logging.step_metrics`).
STEP_KEYS = (
    "train/step_time",
    "train/time/rollout",
    "train/time/reward",
    "train/time/reference",
    "train/time/update",
    "train/tokens/completion",
    "train/tokens/trained",
)


class StepRecorder(Callback):
    """Keeps every training step's timings, token counts and (on a GPU) peak memory so far."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        metrics = trainer.callback_metrics
        step = {key: float(metrics[key]) for key in STEP_KEYS if key in metrics}
        if torch.cuda.is_available():
            step["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.steps.append(step)

    def medians(self, skip: int = 1) -> dict[str, float]:
        """Median of each value over the steps after the first ``skip`` (warm-up), plus derived rates."""
        steps = self.steps[skip:] or self.steps
        out = {key: statistics.median(step[key] for step in steps) for key in steps[0]}
        out["rollout_tokens_per_s"] = statistics.median(
            s["train/tokens/completion"] / s["train/time/rollout"] for s in steps
        )
        out["training_tokens_per_s"] = statistics.median(
            s["train/tokens/trained"] / s["train/time/update"] for s in steps
        )
        return out
