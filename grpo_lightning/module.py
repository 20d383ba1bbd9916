"""GRPOModule: Group Relative Policy Optimization of a vision-language model, as a LightningModule.

One training step, on B prompts (image + question), reads as :meth:`GRPOModule.training_step` writes it:

1. rollout: sample G = ``num_generations`` completions per prompt with the rollout engine, and score them with the
   reward functions; with dynamic sampling, groups of equal rewards are left out and further prompts sampled until B
   groups have a spread (:class:`~grpo_lightning.stages.rollout.RolloutStage`);
2. reference: the KL reference's log-probs (:class:`~grpo_lightning.stages.reference.ReferencePolicy`), and the
   sampling policy's when ``num_iterations`` steps move the policy away from it;
3. advantage: the rewards (less beta times each completion's KL with ``loss.kl_in_reward``) made advantages by
   ``loss.advantage_estimator``, GRPO's normalisation within each prompt's group by default
   (:class:`~grpo_lightning.stages.update.PolicyUpdate`);
4. update: the GRPO loss (:mod:`grpo_lightning.algorithms`) over micro-batches, backward, ``num_iterations``
   optimizer steps (:class:`~grpo_lightning.stages.update.PolicyUpdate`);
5. logging: the step's metrics, and now and then its completions and rollout records
   (:mod:`grpo_lightning.train_logging`, :mod:`grpo_lightning.rollout_log`).

Optimisation is manual (Lightning's ``automatic_optimization = False``) because one batch of prompts yields B * G
sequences that are consumed in micro-batches and possibly several optimizer steps. The module is the Lightning shell:
it builds the stages, loads the models, and calls the stages from its hooks. Model-family quirks live in
:mod:`grpo_lightning.adapters`; validation, test and predict in :mod:`grpo_lightning.evaluation`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from grpo_lightning import stages
from grpo_lightning.accumulation import gradient_accumulation
from grpo_lightning.adapters import PromptBatch, VLMAdapter, load_adapter
from grpo_lightning.algorithms import is_truncated
from grpo_lightning.checkpoint_files import check_weights_fit
from grpo_lightning.config import (
    EvalConfig,
    ImageConfig,
    LoggingConfig,
    LoRAConfig,
    LossConfig,
    RewardConfig,
    SamplingConfig,
    VLLMConfig,
    as_group,
    check_option_groups,
    plain_hyperparameters,
)
from grpo_lightning.distributed import every_process
from grpo_lightning.dynamic_sampling import check_validation_schedule
from grpo_lightning.engines import EngineShutdown
from grpo_lightning.evaluation import EvaluationMixin
from grpo_lightning.prompt_length import PromptLengthCheck
from grpo_lightning.rewards import mark_unscored, prepare_rewards
from grpo_lightning.rng import collect_process_streams, restore_process_streams, seed_process_streams
from grpo_lightning.rollout import Rollout, ScoredRollout, TrainedGroups
from grpo_lightning.rollout_log import rollout_records, write_rollouts
from grpo_lightning.stages.reference import ReferencePolicy
from grpo_lightning.stages.rollout import RolloutStage
from grpo_lightning.stages.update import PolicyUpdate
from grpo_lightning.train_logging import completions_table, dynamic_sampling_metrics, log_completions, step_metrics


class GRPOModule(EvaluationMixin, L.LightningModule):
    """GRPO fine-tuning of a vision-language model.

    Args:
        model_name_or_path: a local folder or hub id of an image-text-to-text checkpoint
            (for example ``OpenGVLab/InternVL3-1B-hf``, ``Qwen/Qwen2-VL-2B-Instruct``).
        dtype: dtype the weights are loaded in; the Trainer's ``precision`` decides the compute dtype.
        attn_implementation: attention kernel passed to ``from_pretrained`` (None: the library's default).
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant; sampling keeps its KV
            cache, and the policy pass still prefills each prompt once for its G sequences).
        freeze_vision_modules: keep the vision encoder's weights fixed (the projector and language model train).
        rewards: the reward functions, their weights and options.
        sampling: how a rollout's completions are sampled.
        loss: the GRPO objective and the policy update.
        lora: low-rank adapters (``r: 0``, the default, trains all weights).
        image: image resolution of the model family's processor.
        logging: what a training step logs besides its metrics.
        evaluation: how validation and test score, and where predict writes.
        rollout_engine: the registered engine that samples the training rollouts (``grpo_lightning.engines.ENGINES``):
            ``hf``, the policy's own ``generate``, or ``vllm``, vLLM in a process of its own kept in step with the
            policy's weights (``vllm`` options; set up once with ``make vllm-env``). Log-probs for the loss
            always come from the policy. Validation during a fit samples with the engine too; the validate, test and
            predict commands sample with the policy. The engine object is ``rollouts.engine``.
        vllm: the ``vllm`` engine's environment, memory and importance-sampling correction.
        optimizer: the optimizer (class path and its arguments, e.g. learning rate).
        lr_scheduler: a learning-rate scheduler, stepped after every optimizer step (None: constant).
    """

    def __init__(
        self,
        model_name_or_path: str,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        attn_implementation: str | None = None,
        gradient_checkpointing: bool = False,
        freeze_vision_modules: bool = False,
        rewards: RewardConfig = RewardConfig(),  # noqa: B008 (frozen: one shared default is safe)
        sampling: SamplingConfig = SamplingConfig(),  # noqa: B008
        loss: LossConfig = LossConfig(),  # noqa: B008
        lora: LoRAConfig = LoRAConfig(),  # noqa: B008
        image: ImageConfig = ImageConfig(),  # noqa: B008
        logging: LoggingConfig = LoggingConfig(),  # noqa: B008
        evaluation: EvalConfig = EvalConfig(),  # noqa: B008
        rollout_engine: str = "hf",
        vllm: VLLMConfig = VLLMConfig(),  # noqa: B008
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ):
        super().__init__()
        # Groups may come as mappings (a checkpoint's saved hyperparameters, a Python caller): as their dataclasses.
        rewards, sampling, loss = as_group("rewards", rewards), as_group("sampling", sampling), as_group("loss", loss)
        lora, image = as_group("lora", lora), as_group("image", image)
        logging, evaluation = as_group("logging", logging), as_group("evaluation", evaluation)
        vllm = as_group("vllm", vllm)
        check_option_groups(rewards, loss, sampling)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        # Groups as plain dicts: what checkpoints store (loadable with weights_only) and the command line parses.
        self.save_hyperparameters(plain_hyperparameters(self.hparams))
        self.automatic_optimization = False
        self.model_name_or_path = model_name_or_path
        self.weights_dtype = dtype
        self.attn_implementation = attn_implementation
        self.gradient_checkpointing = gradient_checkpointing
        self.freeze_vision_modules = freeze_vision_modules
        self.rewards, self.sampling, self.loss, self.lora = rewards, sampling, loss, lora
        self.image, self.logging, self.evaluation, self.vllm = image, logging, evaluation, vllm
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.model: torch.nn.Module | None = None
        self.adapter: VLMAdapter | None = None
        # The stages of a training step (each a plain object, outside the module tree).
        self.rollouts = RolloutStage(self, sampling, rewards, rollout_engine, vllm)
        self.update = PolicyUpdate(self, loss, sampling, vllm)
        self.reference = ReferencePolicy(loss, lora, model_name_or_path)
        self._rng_streams_restored = False  # every process's random streams came from a checkpoint
        self._eval_records: list[dict[str, Any]] = []  # the running split's prediction records (EvaluationMixin)

    # ------------------------------------------------------------------------------------ set-up
    def configure_model(self) -> None:
        """Load the policy (and, when ``beta > 0`` without LoRA, a frozen reference) once, when the Trainer asks."""
        if self.model is not None:
            self.rollouts.start_engine()
            return
        from transformers import AutoModelForImageTextToText

        path = self.model_name_or_path
        if self.adapter is None:  # else PromptLengthCheck built it, from the same checkpoint and image options
            # the resolution is set on the processor itself, which the export saves
            self.adapter, _ = load_adapter(path, **dataclasses.asdict(self.image))
        load_kwargs: dict[str, Any] = {"dtype": getattr(torch, self.weights_dtype)}
        if self.attn_implementation is not None:
            load_kwargs["attn_implementation"] = self.attn_implementation
        model = AutoModelForImageTextToText.from_pretrained(path, **load_kwargs).train()
        if self.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if self.freeze_vision_modules:
            self.adapter.vision_tower(model).requires_grad_(False)
        if self.lora.r > 0:
            model = self._with_lora(model)
        elif self.reference.needs_copy:
            reference = AutoModelForImageTextToText.from_pretrained(path, **load_kwargs)
            self.reference.model = reference.requires_grad_(False).eval()
        # when nothing that computes the image features trains (with LoRA, say), one encoding per image serves the step
        self.adapter.attach(model)
        self.model = model
        self.rollouts.start_engine()

    def _with_lora(self, model: torch.nn.Module) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        lora = self.lora
        targets = lora.target_modules
        if not isinstance(targets, str):
            targets = self.adapter.lora_target_regex(targets)
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets)
        return get_peft_model(model, config)

    def configure_callbacks(self) -> list[L.Callback]:
        # Lightning calls no module hook when a fit fails: a callback stops the engine then. Prompts that overflow the
        # context are found in the callbacks' setup, after the data is read and before the weights load.
        return [EngineShutdown(self.rollouts.engine), PromptLengthCheck()]

    def setup(self, stage: str) -> None:
        # the rewards' models and data, before the first step: a missing one stops the run here
        prepare_rewards(self.rollouts.reward_funcs)
        if stage == "fit":
            self.reference.check(self.trainer.strategy if self._trainer is not None else None)
            if self.sampling.dynamic_sampling:
                check_validation_schedule(self.trainer)
        # The strategy's gradient settings that must precede the model's wrapping (DeepSpeed's clipping).
        gradient_accumulation(self).configure(self.loss.max_grad_norm)

    def teardown(self, stage: str) -> None:
        self.rollouts.stop()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(p for p in self.model.parameters() if p.requires_grad)
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.lr_scheduler_factory(optimizer)}}

    # ------------------------------------------------------------------------------------ fit hooks
    def on_fit_start(self) -> None:
        if self.reference.model is not None:
            dtype = next(self.model.parameters()).dtype
            self.reference.model.to(device=self.device, dtype=dtype)

    def on_train_start(self) -> None:
        self.reference.restore(self.model)
        # seed_everything gives every process the same seed; sampling draws from the global RNGs, so the
        # processes would sample their completions with the same random numbers. Each process other than the
        # first moves to a stream of its own (a run resumed with every process's saved streams keeps those).
        if self.trainer.world_size > 1 and not self._rng_streams_restored and self.global_rank > 0:
            seed_process_streams(torch.initial_seed() + self.global_rank)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.reference.steps_before_batch = self.global_step

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # after the batch's optimizer steps (and after the callbacks' hooks: a step checkpoint saves before the sync)
        metrics = self.reference.after_batch(self.model, self.global_step, self.device)
        if metrics:  # every step while reference sync is on (a metric given now and then would be logged every step)
            self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Sampling draws from the global RNGs; a resumed run continues their streams (Lightning saves none).
        checkpoint["rng_states"] = collect_process_streams(self.trainer.world_size)
        # the reference, outside the module's state dict, once a sync has moved it; a step checkpoint saved before
        # its step's sync is marked pending (the batch is processed, not completed), and the resumed run makes it
        if self.reference.saves_state:
            progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
            pending = self.reference.sync_due(self.global_step) and progress.processed > progress.completed
            self.reference.save_state(checkpoint, pending)
        self.update.save_state(checkpoint)  # the adaptive entropy coefficient
        self.rollouts.save_state(checkpoint)  # asynchronous rollouts: those on their way, and their weights

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # another model's weights: one message, before the load fails on them
        check_weights_fit(checkpoint, self, getattr(self._trainer, "ckpt_path", None))
        attached = self._trainer is not None
        self.reference.keep_state(checkpoint, fitting=not attached or self.trainer.state.fn == "fit")
        self.update.restore(checkpoint)
        self.rollouts.restore(checkpoint)
        saved = checkpoint.get("rng_states")
        if saved is None:
            return
        world_size, rank = (self.trainer.world_size, self.global_rank) if attached else (1, 0)
        # when not every process got its own stream back, the others get theirs in on_train_start
        self._rng_streams_restored = restore_process_streams(saved, world_size, rank)

    # ------------------------------------------------------------------------------- the algorithm
    def training_step(self, batch: dict[str, list[Any]], batch_idx: int) -> Tensor:
        step, seconds = self.global_step, {}  # the optimizer steps before this one
        sampled = self.rollouts.sample_rounds(batch, seconds)
        trained = self.rollouts.trained_groups(sampled)
        with self.timed("reference", seconds):
            ref_logps = self.reference_logps(trained.rollout)
            old_logps = self.update.old_logps(trained.rollout, trained.solutions, self.rollouts.weights_versions)
        with self.timed("reward", seconds):  # a completion no reward scored has no reward: advantage 0
            rewards = mark_unscored(trained.rewards, trained.per_func)
            rewards = self.update.rewards_with_kl(rewards, trained.rollout, ref_logps, old_logps)
            advantages = self.update.advantages(rewards)
        with self.timed("update", seconds):
            stats = self.update.optimize(trained.rollout, advantages, ref_logps, old_logps, trained.solutions)
        self.rollouts.trained()
        stats.update(self.rollouts.async_stats(trained.rollout, step))
        self.log_step(step, sampled, trained, advantages, stats, seconds)
        return stats["loss"]

    def timed(self, stage: str, seconds: dict[str, float]) -> contextlib.AbstractContextManager[None]:
        """Wall time of a stage of the step, added to ``seconds[stage]`` (:func:`grpo_lightning.stages.timed`)."""
        return stages.timed(self.device, stage, seconds)

    def reference_logps(self, rollout: Rollout) -> Tensor | None:
        """The KL reference's log-probs of the rollout's completions (None: no KL term, ``beta`` 0)."""
        if self.loss.beta <= 0:
            return None
        with self.reference(self.model) as reference:
            return self.update.completion_logps(reference, rollout)

    # ------------------------------------------------------------------------------------- logging
    def log_step(
        self,
        step: int,
        sampled: list[ScoredRollout],
        trained: TrainedGroups,
        advantages: Tensor,
        stats: dict[str, Tensor],
        seconds: dict[str, float],
    ) -> None:
        """The step's metrics; with dynamic sampling what it did; now and then its completions and rollout records."""
        eos, size = self.adapter.eos_token_ids(self.model), len(trained.rewards)
        metrics = step_metrics(
            trained, self.rollouts.shown_rewards(trained.rewards, trained.per_func), stats, seconds,
            truncated=is_truncated(trained.rollout.completion_ids, eos), num_generations=self.sampling.num_generations,
            learning_rate=self.optimizers().param_groups[0]["lr"], reward_names=self.rollouts.reward_names,
            device=self.device,
        )  # fmt: skip
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=size, sync_dist=True)
        self.log("reward", metrics["train/reward"], prog_bar=True, logger=False, batch_size=size)
        if "train/kl" in metrics:
            self.log("kl", metrics["train/kl"], prog_bar=True, logger=False, batch_size=size)
        if self.sampling.dynamic_sampling:
            ds_metrics = dynamic_sampling_metrics(sampled, trained.chosen, self.device)
            self.log_dict(ds_metrics, on_step=True, on_epoch=False, batch_size=len(trained.chosen), sync_dist=True)
            self.rollouts.warn_of_shortfall(step, sampled, trained.chosen)
        every = self.logging.completions_every_n_steps
        if every and step % every == 0 and self.trainer.is_global_zero:
            table = completions_table(
                trained.rollout, trained.rewards, trained.per_func, self.rollouts.reward_names,
                self.logging.num_completions,
            )  # fmt: skip
            log_completions(self.loggers, "train/completions", table, step)
        every = self.logging.rollouts_every_n_steps
        if every and step % every == 0:
            self.write_rollouts(step, sampled, trained.chosen, advantages)

    def write_rollouts(
        self, step: int, sampled: list[ScoredRollout], chosen: list[tuple[int, int]], advantages: Tensor
    ) -> None:
        """The step's rollout records in ``<log_dir>/rollouts/step=N.jsonl`` (:mod:`grpo_lightning.rollout_log`),
        gathered from every process (each calls this) and written by the first; nothing without a logger."""
        trainer = self.trainer
        if not trainer.loggers:  # the records belong to the run's log folder; without a logger there is none
            return
        records = rollout_records(
            sampled, chosen, advantages, self.rollouts.reward_names, self.adapter.eos_token_ids(self.model),
            self.sampling.num_generations, step, trainer.global_rank, self.sampling.dynamic_sampling,
            self.rollouts.reward_weights,
        )  # fmt: skip
        log_dir = trainer.log_dir  # a collective call: on every process
        if log_dir is None:  # a logger without a folder of its own: every process returns alike
            return
        everyone = [record for part in every_process(records, trainer.world_size) for record in part]
        if trainer.is_global_zero:
            write_rollouts(everyone, log_dir, step)


__all__ = ["GRPOModule", "PromptBatch"]
