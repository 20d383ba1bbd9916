"""GRPOModule: Group Relative Policy Optimization of a vision-language model, as a LightningModule.

One training step, on B prompts (image + question):

1. rollout: sample G = ``num_generations`` completions per prompt (eval mode, KV cache on) with the rollout engine
   (:mod:`grpo_lightning.engines`: the policy's own ``generate``, or vLLM in a process of its own);
2. reward: score them with the configured reward functions (weighted sum, or each function normalised within its
   group first; ``None`` left out); with dynamic sampling, groups of equal rewards are left out and further prompts
   sampled until B groups have a spread (:mod:`grpo_lightning.dynamic_sampling`);
3. advantage: normalise rewards within each prompt's group (:mod:`grpo_lightning.algorithms`);
4. loss: per-token clipped surrogate on completion tokens, plus ``beta`` times the k3 KL to a frozen
   reference, aggregated by ``loss_type``; backward in micro-batches of ``micro_batch_size`` sequences so
   memory does not grow with G; one optimizer step (``num_iterations`` steps on the same rollout).

Optimisation is manual (Lightning's ``automatic_optimization = False``) because one batch of prompts yields B * G
sequences that are consumed in micro-batches and possibly several optimizer steps. Model-family quirks live in
:mod:`grpo_lightning.adapters`; the math in :mod:`grpo_lightning.algorithms`; the reference's sync (TR-DPO) in
:mod:`grpo_lightning.reference_sync`; validation, test and predict in :mod:`grpo_lightning.evaluation`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from grpo_lightning.accumulation import gradient_accumulation
from grpo_lightning.adapters import PromptBatch, VLMAdapter, load_adapter
from grpo_lightning.algorithms import (
    completion_mask,
    compute_group_advantages,
    drop_truncated,
    entropy_quantile_threshold,
    grpo_loss,
    high_entropy_mask,
    is_truncated,
    loss_normaliser,
)
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
from grpo_lightning.dynamic_sampling import check_validation_schedule, choose_groups, informative_groups
from grpo_lightning.engines import (
    EngineShutdown,
    HFEngine,
    build_engine,
    engine_logp_gap,
    truncated_importance_weights,
)
from grpo_lightning.errors import ConfigError
from grpo_lightning.evaluation import EvaluationMixin
from grpo_lightning.prompt_length import PromptLengthCheck
from grpo_lightning.reference_sync import ReferenceSyncMixin
from grpo_lightning.rewards import (
    RewardOpinions,
    combine_rewards,
    get_reward,
    mark_unscored,
    prepare_rewards,
    reward_name,
    score_completions,
)
from grpo_lightning.rng import collect_process_streams, restore_process_streams, seed_process_streams
from grpo_lightning.rollout import Rollout, ScoredRollout, join_groups
from grpo_lightning.rollout_log import write_rollouts
from grpo_lightning.train_logging import log_completions, log_dynamic_sampling, log_train_step

# Batch fields that are not passed on to reward functions (they hold pixels, not text).
_NON_REWARD_FIELDS = ("image",)


class GRPOModule(EvaluationMixin, ReferenceSyncMixin, L.LightningModule):
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
        rollout_engine: what samples the training rollouts: ``hf``, the policy's own ``generate``, or ``vllm``, vLLM in
            a process of its own kept in step with the policy's weights (``vllm`` options; set up once with ``make
            vllm-env``). Log-probs for the loss always come from the policy. Validation during a fit samples with the
            engine too; the validate, test and predict commands sample with the policy.
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
        rollout_engine: Literal["hf", "vllm"] = "hf",
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
        check_option_groups(rewards, loss)
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
        self.image, self.logging, self.evaluation = image, logging, evaluation
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        reward_kwargs = rewards.kwargs or {}
        self.reward_funcs = [
            (reward_name(name), get_reward(name, **reward_kwargs.get(name, {}))) for name in rewards.funcs
        ]
        self.reward_weights = list(rewards.weights) if rewards.weights is not None else [1.0] * len(rewards.funcs)
        self.model: torch.nn.Module | None = None
        # The reference model is kept out of the module tree: never optimised, checkpointed only once a sync moved it.
        self._reference: list[torch.nn.Module] = []
        self._rng_streams_restored = False  # every process's random streams came from a checkpoint
        self.adapter: VLMAdapter | None = None
        self.vllm = vllm
        # The engine that samples training rollouts (started per fit in configure_model), and the policy's own sampler
        # for whatever runs without it.
        self.rollout_engine = build_engine(rollout_engine, vllm)
        self._policy_sampler = HFEngine()

    # ------------------------------------------------------------------------------------ set-up
    def configure_model(self) -> None:
        """Load the policy (and, when ``beta > 0``, a frozen reference) once, when the Trainer asks."""
        if self.model is not None:
            self.start_rollout_engine()
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
        elif self.loss.beta > 0:
            reference = AutoModelForImageTextToText.from_pretrained(path, **load_kwargs)
            reference.requires_grad_(False).eval()
            self._reference = [reference]
        # when nothing that computes the image features trains (with LoRA, say), one encoding per image serves the step
        self.adapter.attach(model)
        self.model = model
        self.start_rollout_engine()

    def _with_lora(self, model: torch.nn.Module) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        lora = self.lora
        targets = lora.target_modules
        if not isinstance(targets, str):
            targets = self.adapter.lora_target_regex(targets)
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets)
        return get_peft_model(model, config)

    # ------------------------------------------------------------------------------- rollout engine
    def start_rollout_engine(self) -> None:
        """Start the rollout engine for a fit (every process its own: each samples its own prompts); nothing to start
        for ``hf``, nor outside a fit (validate, test and predict sample with the policy)."""
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if fitting and not self.rollout_engine.running and self.rollout_engine is not self._policy_sampler:
            self.rollout_engine.check_fit(self.trainer.strategy, self.sampling)
            # the trainer's device: a module configured before the fit still has its weights on the CPU here
            device = self.trainer.strategy.root_device
            self.rollout_engine.start(self.model, self.adapter, self.weights_dtype, device=device)

    def configure_callbacks(self) -> list[L.Callback]:
        # Lightning calls no module hook when a fit fails: a callback stops the engine then. Prompts that overflow the
        # context are found in the callbacks' setup, after the data is read and before the weights load.
        return [EngineShutdown(self.rollout_engine), PromptLengthCheck()]

    def teardown(self, stage: str) -> None:
        self.rollout_engine.stop()

    @contextlib.contextmanager
    def reference(self) -> Iterator[torch.nn.Module]:
        """The reference policy: the frozen copy, or with LoRA the policy itself with its adapters disabled."""
        if self.lora.r > 0:
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.reference_model

    @property
    def reference_model(self) -> torch.nn.Module | None:
        return self._reference[0] if self._reference else None

    def on_fit_start(self) -> None:
        if self.reference_model is not None:
            dtype = next(self.model.parameters()).dtype
            self.reference_model.to(device=self.device, dtype=dtype)

    def on_train_start(self) -> None:
        self.restore_reference()
        # seed_everything gives every process the same seed; sampling draws from the global RNGs, so the
        # processes would sample their completions with the same random numbers. Each process other than the
        # first moves to a stream of its own (a run resumed with every process's saved streams keeps those).
        if self.trainer.world_size > 1 and not self._rng_streams_restored and self.global_rank > 0:
            seed_process_streams(torch.initial_seed() + self.global_rank)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Sampling draws from the global RNGs; a resumed run continues their streams (Lightning saves none).
        checkpoint["rng_states"] = collect_process_streams(self.trainer.world_size)
        # the reference, outside the module's state dict, once a sync has moved it
        self.save_reference_state(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # another model's weights: one message, before the load fails on them
        check_weights_fit(checkpoint, self, getattr(self._trainer, "ckpt_path", None))
        self.keep_reference_state(checkpoint)
        saved = checkpoint.get("rng_states")
        if saved is None:
            return
        world_size = self.trainer.world_size if self._trainer is not None else 1
        rank = self.global_rank if self._trainer is not None else 0
        # when not every process got its own stream back, the others get theirs in on_train_start
        self._rng_streams_restored = restore_process_streams(saved, world_size, rank)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(p for p in self.model.parameters() if p.requires_grad)
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.lr_scheduler_factory(optimizer)}}

    # ------------------------------------------------------------------------------- the algorithm
    def training_step(self, batch: dict[str, list[Any]], batch_idx: int) -> Tensor:
        step, seconds = self.global_step, {}  # the optimizer steps before this one
        sampled = [self.sample_and_score(batch, seconds)]
        if self.sampling.dynamic_sampling:  # further prompts until B groups have a reward spread
            sampled = self.sample_until_informative(sampled[0], seconds)
        self.watch_reward_opinions(step, sampled)
        rollout, rewards, per_func, chosen = self.trained_groups(sampled)
        with self.timed("reward", seconds):
            advantages = self.advantages(mark_unscored(rewards, per_func))  # no reward at all: advantage 0
        with self.timed("reference", seconds):
            ref_logps = self.reference_logps(rollout) if self.loss.beta > 0 else None
            old_logps = self.completion_logps(self.model, rollout) if self.loss.num_iterations > 1 else None
        with self.timed("update", seconds):
            stats = self.optimize(rollout, advantages, ref_logps, old_logps)
        log_train_step(self, rollout, rewards, per_func, stats, seconds)
        if self.sampling.dynamic_sampling:
            log_dynamic_sampling(self, step, sampled, chosen)
        every = self.logging.completions_every_n_steps
        if every and step % every == 0:
            log_completions(self, step, rollout, rewards, per_func)
        every = self.logging.rollouts_every_n_steps
        if every and step % every == 0:
            write_rollouts(self, step, sampled, chosen, advantages)
        return stats["loss"]

    def sample_and_score(self, batch: dict[str, list[Any]], seconds: dict[str, float]) -> ScoredRollout:
        """One round of sampling: G completions per prompt of ``batch``, their rewards, and which groups spread."""
        num_generations = self.sampling.num_generations
        with self.timed("rollout", seconds):
            rollout = self.generate_rollout(batch, num_generations, do_sample=True)
        with self.timed("reward", seconds):
            rewards, per_func = self.score(rollout, batch)
        if self.sampling.dynamic_sampling:
            # completions no reward scored are no reward: left out of the spread, as out of the advantages
            spread_of = mark_unscored(rewards, per_func)
            informative = informative_groups(spread_of, num_generations, self.sampling.min_group_reward_std)
        else:
            informative = torch.ones(len(rollout.prompts), dtype=torch.bool)
        return ScoredRollout(batch, rollout, rewards, per_func, informative)

    def watch_reward_opinions(self, step: int, sampled: list[ScoredRollout]) -> None:
        """A training step on which no reward has an opinion learns nothing: warn, or stop the run when no reward
        scored anything in its first steps (``RewardOpinions``). Once per step, over every completion its rounds of
        sampling scored, so that patience counts steps under dynamic sampling too."""
        if "_reward_opinions" not in self.__dict__:
            self._reward_opinions = RewardOpinions([name for name, _ in self.reward_funcs])
        strategy = self._trainer.strategy if self._trainer is not None else None

        def opinions_everywhere(count: int) -> int:
            if strategy is None:
                return count
            return int(strategy.reduce(torch.tensor(float(count), device=self.device), reduce_op="sum"))

        per_func = torch.cat([round_.per_func for round_ in sampled])
        ids = [i for round_ in sampled for i in self._completion_ids(round_)]
        self._reward_opinions.observe(per_func, step, ids, opinions_everywhere)

    @staticmethod
    def _completion_ids(round_: ScoredRollout) -> list[Any]:
        """The sample id of each completion of a round (none when the batch has no ids)."""
        ids = round_.batch.get("id")
        return [] if ids is None else [ids[i] for i in round_.rollout.prompt_index.tolist()]

    def sample_until_informative(self, first: ScoredRollout, seconds: dict[str, float]) -> list[ScoredRollout]:
        """Dynamic sampling: further batches of the training data, one per round, until this process has as many
        groups with a reward spread as its batch has prompts, or ``sampling.max_refill_rounds`` extra rounds.

        The batches come from the training loader's own epoch (``ResumableDataLoader.next_batch``): the loop's next
        batch follows them, and a resumed run neither repeats nor skips them. Every process runs the same rounds
        (they agree on each with an all-reduce, since sampling and scoring hold collectives) and takes its next
        batch in each, so the data positions of the processes stay equal.
        """
        loader = self.trainer.train_dataloader
        if not callable(getattr(loader, "next_batch", None)):
            raise ConfigError(
                "sampling.dynamic_sampling takes further prompts in a step from the training dataloader, which must "
                f"be a grpo_lightning.data.ResumableDataLoader (ViVQAXDataModule's), not {type(loader).__name__}; "
                "use that data module or set model.sampling.dynamic_sampling: false."
            )
        strategy, quota = self.trainer.strategy, len(first.rollout.prompts)
        sampled = [first]
        while len(sampled) <= self.sampling.max_refill_rounds:
            found = sum(int(round_.informative.sum()) for round_ in sampled)
            if not strategy.reduce_boolean_decision(found < quota, all=False):
                break
            batch = loader.next_batch()
            if strategy.reduce_boolean_decision(batch is None, all=False):  # the epoch's data is used up
                break
            sampled.append(self.sample_and_score(strategy.batch_to_device(batch), seconds))
        return sampled

    def trained_groups(self, sampled: list[ScoredRollout]) -> tuple[Rollout, Tensor, Tensor, list[tuple[int, int]]]:
        """The rollout, rewards and scores of the groups the step trains (``dynamic_sampling.choose_groups``), and
        which they are, as (round, prompt) pairs; the first round's own objects when it is all of them."""
        group_size, quota = self.sampling.num_generations, len(sampled[0].rollout.prompts)
        where = [(r, p) for r, round_ in enumerate(sampled) for p in range(len(round_.informative))]
        indices, _ = choose_groups([bool(flag) for round_ in sampled for flag in round_.informative], quota)
        chosen = [where[i] for i in indices]
        if chosen == where[:quota]:  # the step's own batch, as it is
            return sampled[0].rollout, sampled[0].rewards, sampled[0].per_func, chosen
        parts = [(round_.rollout, [p for k, p in chosen if k == r]) for r, round_ in enumerate(sampled)]
        rollout = join_groups(parts, group_size, self.adapter.tokenizer.pad_token_id)
        rows = [torch.arange(p * group_size, (p + 1) * group_size) for _, p in chosen]
        rewards = torch.cat([sampled[r].rewards[row] for (r, _), row in zip(chosen, rows, strict=True)])
        per_func = torch.cat([sampled[r].per_func[row] for (r, _), row in zip(chosen, rows, strict=True)])
        return rollout, rewards, per_func, chosen

    @contextlib.contextmanager
    def timed(self, stage: str, seconds: dict[str, float]) -> Iterator[None]:
        """Wall time of a stage, added to ``seconds[stage]``, with the GPU's queue drained at both ends so the time
        is the stage's own."""
        synchronize = torch.cuda.synchronize if self.device.type == "cuda" else (lambda device: None)
        synchronize(self.device)
        start = time.perf_counter()
        yield
        synchronize(self.device)
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start

    def generate_rollout(self, batch: dict[str, list[Any]], num_generations: int, do_sample: bool) -> Rollout:
        """Sample ``num_generations`` completions for each prompt of the batch (prompt-major order), with the rollout
        engine while a fit runs it (its weights first brought to the policy's when an optimizer step changed them),
        else with the policy itself. The engine's log-probs of the sampled tokens (vllm) go on the rollout."""
        prompts = self.adapter.prepare_prompts(batch["image"], batch["prompt"]).to(self.device)
        prompt_index = torch.arange(len(prompts)).repeat_interleave(num_generations)
        engine = self.rollout_engine if self.rollout_engine.running else self._policy_sampler
        sync = engine.bring_weights_to(self.model, self.global_step)  # None: nothing to sync
        if sync is not None and self.training:
            self.log("train/time/weight_sync", sync["seconds"], on_step=True, on_epoch=False, batch_size=1)
        sampled = engine.sample(
            self.model, self.adapter, prompts, batch["image"], prompt_index.tolist(), self.sampling, do_sample
        )
        completion_ids = sampled.completion_ids
        eos_ids = self.adapter.eos_token_ids(self.model)
        mask = completion_mask(completion_ids, eos_ids)
        texts = self.adapter.tokenizer.batch_decode(completion_ids * mask, skip_special_tokens=True)
        return Rollout(prompts, prompt_index, completion_ids, mask, texts, sampled.logps)

    def score(self, rollout: Rollout, batch: dict[str, list[Any]]) -> tuple[Tensor, Tensor]:
        """Rewards (N,) and per-function scores (N, F, NaN where a function had no opinion).

        In training the rewards are those the advantages are computed from (``rewards.aggregation``: with
        ``normalize_then_sum`` each function's scores are normalised within their group before the weighted sum);
        in validation and test, where a prompt has one completion, always the plain weighted sum.
        """
        index = rollout.prompt_index.tolist()
        fields = {key: [values[i] for i in index] for key, values in batch.items() if key not in _NON_REWARD_FIELDS}
        solution = fields.pop("solution", [""] * len(index))
        # token counts, for length-aware rewards (``overlong``): each completion's, and the budget it was sampled with
        fields["completion_length"] = rollout.completion_mask.sum(-1).tolist()
        fields["max_completion_length"] = [self.sampling.max_completion_length] * len(index)
        per_func = score_completions(
            self.reward_funcs, rollout.completions, solution, fields, self.rewards.timeout_s, self.global_step
        )
        if self.training:
            aggregation, group_size = self.rewards.aggregation, self.sampling.num_generations
            return combine_rewards(per_func, self.reward_weights, aggregation, group_size).float(), per_func
        return combine_rewards(per_func, self.reward_weights).float(), per_func

    def advantages(self, rewards: Tensor) -> Tensor:
        """Group-relative advantages of this process's rewards (N,), on the module's device.

        Groups are whole on each process, so group means and group stds are the same as on one process. The
        ``batch`` std is over the global batch: every process's rewards are gathered (padded to the largest
        process's count, so a short last batch on some process is fine), scaled together, and each process keeps
        its own rows, as with one process.
        """
        scale, group_size = self.loss.scale_rewards, self.sampling.num_generations
        rewards = rewards.to(self.device)
        world_size = self.trainer.world_size if self._trainer is not None else 1
        if scale != "batch" or world_size == 1:
            return compute_group_advantages(rewards, group_size, scale)
        everyone, sizes = self.gathered(rewards)
        advantages = compute_group_advantages(everyone, group_size, scale)
        start = sum(sizes[: self.global_rank])
        return advantages[start : start + len(rewards)]

    def reference_logps(self, rollout: Rollout) -> Tensor:
        with self.reference() as reference:
            return self.completion_logps(reference, rollout)

    def micro_batches(self, num_sequences: int) -> list[slice]:
        size = self.loss.micro_batch_size
        return [slice(i, min(i + size, num_sequences)) for i in range(0, num_sequences, size)]

    @torch.no_grad()
    def completion_logps(self, model: torch.nn.Module, rollout: Rollout) -> Tensor:
        """Per-token log-probs (N, C) of the rollout's completions under ``model``, without gradients."""
        was_training = model.training
        model.eval()
        logps = torch.cat(
            [
                self._logps(model, rollout, mb, with_entropy=False)[0]
                for mb in self.micro_batches(len(rollout.completions))
            ]
        )
        model.train(was_training)
        return logps

    def _logps(self, model, rollout: Rollout, mb: slice, with_entropy: bool) -> tuple[Tensor, Tensor | None]:
        return self.adapter.completion_logps(
            model,
            rollout.prompts,
            rollout.prompt_index[mb].tolist(),
            rollout.completion_ids[mb],
            rollout.completion_mask[mb],
            temperature=self.sampling.temperature,
            with_entropy=with_entropy,
        )

    def optimize(
        self, rollout: Rollout, advantages: Tensor, ref_logps: Tensor | None, old_logps: Tensor | None
    ) -> dict[str, Tensor]:
        """Micro-batched GRPO loss, backward and ``num_iterations`` optimizer steps; the step's statistics.

        Loss normalisers are totals over the whole batch, so the micro-batch losses add up to the
        whole-batch loss and the gradient does not depend on ``micro_batch_size``.

        With ``loss.mask_truncated_completions`` the completions without EOS leave the loss mask (their advantages,
        computed before, still shaped their groups'); the statistics are token means over the tokens that stay. With
        ``loss.top_entropy_quantile`` below 1 a no-grad pass first measures every completion token's entropy, so that
        the threshold is the whole batch's (every micro-batch, every process) before the first micro-batch's loss; it
        holds (N, C) entropies, not logits, and is measured once per rollout (the sampling policy's), for all
        ``num_iterations`` (TRL takes a threshold per loss call, from the entropies of that micro-batch's pass).

        A rollout with the engine's log-probs (``rollout.engine_logps``, the ``vllm`` engine) gets the engines' gap
        measured on the first iteration's policy pass (no pass of its own): ``engine_logp_diff``, the mean
        |logp_policy - logp_engine| over its completion tokens. With ``vllm.importance_sampling_cap`` C, each token's
        policy term is weighted by ``min(exp(logp_old - logp_engine), C)`` (``logp_old``: ``old_logps``, or the pass's
        own log-probs detached), TRL's truncated importance sampling (:func:`grpo_loss`'s ``importance_weights``).
        """
        config = self.loss
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        gradients = gradient_accumulation(self)
        mask = rollout.completion_mask.float()
        if config.mask_truncated_completions:
            mask = drop_truncated(mask, is_truncated(rollout.completion_ids, self.adapter.eos_token_ids(self.model)))
        num_tokens = mask.sum()
        if loss_normaliser(config.loss_type) == "global_tokens":
            num_tokens = gradients.mean_over_processes(num_tokens)
        loss_options = {
            "loss_type": config.loss_type,
            "beta": config.beta,
            "epsilon_low": config.epsilon_low,
            "epsilon_high": config.epsilon_high,
            "delta": config.delta,
            "importance_sampling_level": config.importance_sampling_level,
            "num_sequences": mask.shape[0],
            "num_tokens": float(num_tokens),
            "max_completion_length": self.sampling.max_completion_length,
            "stats_num_tokens": mask.sum().clamp(min=1),  # the statistics are token means over this batch
        }
        names = ("loss", "kl", "clip_low", "clip_high", "entropy") + (("clip_delta",) if config.delta else ())
        totals = {name: torch.zeros((), device=self.device) for name in names}
        token_entropy = policy_mask = None
        if config.top_entropy_quantile < 1.0:
            token_entropy = self.token_entropies(rollout)
            everyone, _ = self.gathered(token_entropy[mask != 0].float())
            threshold = entropy_quantile_threshold(everyone, config.top_entropy_quantile)
            policy_mask = high_entropy_mask(token_entropy, mask, threshold)
            kept = policy_mask.sum() / mask.sum().clamp(min=1)
            entropy_stats = {"entropy_threshold": threshold, "high_entropy_fraction": kept}
        micro_batches = self.micro_batches(mask.shape[0])
        engine_logps, cap = rollout.engine_logps, self.vllm.importance_sampling_cap
        if engine_logps is not None:
            engine_gap = torch.zeros((), device=self.device)
            sampled_mask = rollout.completion_mask
        for iteration in range(config.num_iterations):
            for index, mb in enumerate(micro_batches):
                measure = iteration == 0 and token_entropy is None
                logps, entropy = self._logps(self.model, rollout, mb, with_entropy=measure)
                if iteration == 0 and token_entropy is not None:
                    entropy = token_entropy[mb]
                old = old_logps[mb] if old_logps is not None else None
                ref = ref_logps[mb] if ref_logps is not None else None
                keep = policy_mask[mb] if policy_mask is not None else None
                weights = None
                if engine_logps is not None:
                    if iteration == 0:  # the gap over every sampled token, each micro-batch's share of the total
                        tokens = sampled_mask[mb].sum()
                        gap = engine_logp_gap(engine_logps[mb], logps.detach(), sampled_mask[mb])
                        engine_gap += gap.float() * tokens / sampled_mask.sum().clamp(min=1)
                    if cap is not None:
                        old_or_detached = old if old is not None else logps.detach()
                        weights = truncated_importance_weights(old_or_detached, engine_logps[mb], mask[mb], cap)
                loss, stats = grpo_loss(
                    logps, old, advantages[mb], mask[mb], ref_logps=ref, entropy=entropy, policy_mask=keep,
                    importance_weights=weights, **loss_options,
                )  # fmt: skip
                with gradients.backward_context(last=index == len(micro_batches) - 1):
                    self.manual_backward(loss)
                for name, value in stats.items():
                    totals[name] += value
            gradients.clip(optimizer, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
        # Averages over the iterations (entropy is measured on the first only).
        stats = {name: value / (1 if name == "entropy" else config.num_iterations) for name, value in totals.items()}
        if policy_mask is not None:
            stats.update(entropy_stats)
        if engine_logps is not None:
            stats["engine_logp_diff"] = engine_gap
        return stats

    @torch.no_grad()
    def token_entropies(self, rollout: Rollout) -> Tensor:
        """Entropy (N, C) of the policy's distribution at every completion position, without gradients."""
        was_training = self.model.training
        self.model.eval()
        entropy = torch.cat(
            [
                self._logps(self.model, rollout, mb, with_entropy=True)[1]
                for mb in self.micro_batches(len(rollout.completions))
            ]
        )
        self.model.train(was_training)
        return entropy

    def gathered(self, values: Tensor) -> tuple[Tensor, list[int]]:
        """The 1-D ``values`` of every process, rank-major (this process's alone with one process), and each process's
        count; counts may differ: each process pads to the largest with NaN for the gather, and the padding is dropped.
        """
        world_size = self.trainer.world_size if self._trainer is not None else 1
        if world_size == 1:
            return values, [len(values)]
        sizes = self.all_gather(torch.tensor(len(values), device=self.device)).reshape(-1).tolist()
        padded = torch.full((max(sizes),), torch.nan, dtype=values.dtype, device=self.device)
        padded[: len(values)] = values
        rows = self.all_gather(padded).reshape(world_size, -1)  # rank-major, each row padded with NaN
        return torch.cat([rows[rank, :size] for rank, size in enumerate(sizes)]), sizes

    def setup(self, stage: str) -> None:
        prepare_rewards(self.reward_funcs)  # their models and data, before the first step: a missing one stops here
        if stage == "fit":
            self.check_reference_sync()
            if self.sampling.dynamic_sampling:
                check_validation_schedule(self.trainer)
        # The strategy's gradient settings that must precede the model's wrapping (DeepSpeed's clipping).
        gradient_accumulation(self).configure(self.loss.max_grad_norm)


__all__ = ["GRPOModule", "PromptBatch"]
