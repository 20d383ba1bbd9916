"""The rollout stage: the rollout engine (start, stop, its checks and weight sync), the rounds of sampling of a
training step (dynamic sampling's refills), and the scoring of completions with the rewards.

The engine (:mod:`grpo_lightning.engines`: the policy's own ``generate``, or vLLM in a process of its own) samples the
training rollouts while a fit runs it; validation, test and predict outside a fit sample with the policy. With
dynamic sampling (DAPO), groups of equal rewards are left out and further prompts sampled until B groups have a spread
(:mod:`grpo_lightning.dynamic_sampling`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from grpo_lightning.algorithms import completion_mask
from grpo_lightning.config import RewardConfig, SamplingConfig, VLLMConfig
from grpo_lightning.dynamic_sampling import ShortfallWarnings, choose_groups, informative_groups
from grpo_lightning.engines import HFEngine, RolloutEngine, build_engine
from grpo_lightning.errors import ConfigError
from grpo_lightning.rewards import (
    RewardOpinions,
    combine_rewards,
    get_reward,
    mark_unscored,
    reward_name,
    score_completions,
)
from grpo_lightning.rollout import Rollout, ScoredRollout, TrainedGroups, decode_completions, join_groups
from grpo_lightning.stages.async_rollouts import ASYNC_STATE_KEY, AsyncRollouts, WeightVersions

if TYPE_CHECKING:
    import lightning as L

# Batch fields that are not passed on to reward functions (they hold pixels, not text).
_NON_REWARD_FIELDS = ("image",)


class RolloutStage:
    """Sampling and scoring, for ``module`` (a LightningModule with ``model`` and ``adapter``).

    Args:
        module: the LightningModule (its model, adapter, device, step and trainer).
        sampling: how completions are sampled.
        rewards: the reward functions, their weights and options.
        engine: the registered engine that samples the training rollouts (``model.rollout_engine``).
        vllm: the options of engines that run beside the policy (``model.vllm``).
    """

    def __init__(
        self, module: L.LightningModule, sampling: SamplingConfig, rewards: RewardConfig, engine: str, vllm: VLLMConfig
    ) -> None:
        self.module, self.sampling, self.rewards = module, sampling, rewards
        options = rewards.kwargs or {}
        self.reward_funcs = [(reward_name(name), get_reward(name, **options.get(name, {}))) for name in rewards.funcs]
        self.reward_names = [name for name, _ in self.reward_funcs]
        self.reward_weights = list(rewards.weights) if rewards.weights is not None else [1.0] * len(rewards.funcs)
        self.engine: RolloutEngine = build_engine(engine, vllm)  # started per fit (start_engine), stopped at teardown
        self.policy_sampler = HFEngine()  # what samples without the engine: validation, test and predict
        self.opinions = RewardOpinions(self.reward_names)
        self.shortfalls = ShortfallWarnings(sampling)
        self.pipeline: AsyncRollouts | None = None  # sampling.async_rollouts: the rollouts on their way
        if sampling.async_rollouts:
            if not self.engine.samples_in_background:
                raise ConfigError(
                    f"model.sampling.async_rollouts needs an engine that samples while the trainer updates "
                    f"(model.rollout_engine vllm); model.rollout_engine {engine} samples with the policy itself. Set "
                    "model.rollout_engine: vllm, or model.sampling.async_rollouts: false."
                )
            self.pipeline = AsyncRollouts(self, sampling.max_staleness)

    # ------------------------------------------------------------------------------------------ engine
    def start_engine(self) -> None:
        """Start the engine for a fit (every process its own: each samples its own prompts); nothing to start for
        ``hf``, nor outside a fit (validate, test and predict sample with the policy)."""
        module = self.module
        fitting = module._trainer is not None and module.trainer.state.fn == "fit"
        if fitting and not self.engine.running and self.engine is not self.policy_sampler:
            self.engine.check_fit(module.trainer.strategy, self.sampling)
            # the trainer's device: a module configured before the fit still has its weights on the CPU here
            device = module.trainer.strategy.root_device
            self.engine.start(module.model, module.adapter, module.weights_dtype, device=device)

    def stop(self) -> None:
        """The fit's end: the engine stops, and the rollouts it sampled past the last step are dropped with the
        weights that sampled them (a checkpoint saved before holds what a resumed run needs)."""
        self.engine.stop()
        if self.pipeline is not None:
            self.pipeline.reset()

    def generate(self, batch: dict[str, list[Any]], num_generations: int, do_sample: bool) -> Rollout:
        """Sample ``num_generations`` completions for each prompt of the batch (prompt-major order), with the rollout
        engine while a fit runs it (its weights first brought to the policy's when an optimizer step changed them),
        else with the policy itself. The engine's log-probs of the sampled tokens (vllm) go on the rollout."""
        module = self.module
        if self.pipeline is not None and module.training and do_sample:  # a training round: taken from the pipeline
            taken = self.pipeline.take(batch, num_generations)
            prompts, prompt_index, sampled = taken.prompts, taken.prompt_index, taken.sampled
            versions = torch.full((len(prompt_index),), taken.version, dtype=torch.long)
        else:
            prompts = module.adapter.prepare_prompts(batch["image"], batch["prompt"]).to(module.device)
            prompt_index = torch.arange(len(prompts)).repeat_interleave(num_generations)
            self.bring_engine_weights()
            engine = self.engine if self.engine.running else self.policy_sampler
            sampled = engine.sample(
                module.model, module.adapter, prompts, batch["image"], prompt_index.tolist(), self.sampling, do_sample
            )
            versions = None
        completion_ids = sampled.completion_ids
        mask = completion_mask(completion_ids, module.adapter.eos_token_ids(module.model))
        texts = decode_completions(module.adapter.tokenizer, completion_ids, mask)
        return Rollout(prompts, prompt_index, completion_ids, mask, texts, sampled.logps, versions)

    def bring_engine_weights(self, wait: bool = True, step: int | None = None) -> None:
        """Bring the running engine's weights to the policy's, those of optimizer step ``step`` (None: the module's
        step), once per step; in training, log the update's seconds and megabytes. ``wait``: until the engine has
        loaded them (False: the engine loads them after the requests sent before, while the trainer goes on)."""
        module = self.module
        engine = self.engine if self.engine.running else self.policy_sampler
        step = module.global_step if step is None else step
        sync = engine.bring_weights_to(module.model, step, wait=wait)  # None: nothing to sync
        if sync is not None and module.training:
            module.log("train/time/weight_sync", sync["seconds"], on_step=True, on_epoch=False, batch_size=1)
            if "megabytes" in sync:  # what the update wrote for the engine (vllm.lora_sync: adapter sends less)
                module.log("train/engine/sync_megabytes", sync["megabytes"], on_step=True, on_epoch=False, batch_size=1)

    # ------------------------------------------------------------------------------------------ async rollouts
    @property
    def weights_versions(self) -> WeightVersions | None:
        """The copies of the weights that sampled the rollouts not trained yet (None: rollouts are synchronous)."""
        return None if self.pipeline is None else self.pipeline.versions

    def trained(self) -> None:
        """The step's rollouts are trained: the weights that sampled them alone are let go."""
        if self.pipeline is not None:
            self.pipeline.trained()

    def save_state(self, checkpoint: dict[str, Any]) -> None:
        """Asynchronous rollouts: put those on their way at the step's end, and their weights, in ``checkpoint``."""
        if self.pipeline is not None:
            checkpoint[ASYNC_STATE_KEY] = self.pipeline.state(self.module.global_step, self.module.trainer.world_size)

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Take back a checkpoint's rollouts on their way; the first step sends them again (none saved: none)."""
        state = checkpoint.get(ASYNC_STATE_KEY)
        if self.pipeline is not None and state is not None:
            module = self.module
            attached = module._trainer is not None
            world_size, rank = (module.trainer.world_size, module.global_rank) if attached else (1, 0)
            self.pipeline.load(state, world_size, rank)

    def async_stats(self, rollout: Rollout, step: int) -> dict[str, Tensor]:
        """With ``sampling.async_rollouts``, the ``async/*`` statistics (:meth:`AsyncRollouts.stats`) of the step that
        began at optimizer step ``step``, for the completions it trained; nothing without."""
        if self.pipeline is None or rollout.versions is None:
            return {}
        stats = self.pipeline.stats(rollout.versions, step, self.engine.idle_seconds())
        return {name: value.to(self.module.device) for name, value in stats.items()}

    # ------------------------------------------------------------------------------------------ scoring
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
        step = self.module.global_step
        per_func = score_completions(
            self.reward_funcs, rollout.completions, solution, fields, self.rewards.timeout_s, step
        )
        if self.module.training:
            aggregation, group_size = self.rewards.aggregation, self.sampling.num_generations
            return combine_rewards(per_func, self.reward_weights, aggregation, group_size).float(), per_func
        return combine_rewards(per_func, self.reward_weights).float(), per_func

    def shown_rewards(self, rewards: Tensor, per_func: Tensor) -> Tensor:
        """The reward as a user reads it: the weighted sum, also where training normalises each function first."""
        if self.rewards.aggregation == "sum_then_normalize":
            return rewards
        return combine_rewards(per_func, self.reward_weights).float()

    # ------------------------------------------------------------------------------------------ rounds
    def sample_rounds(self, batch: dict[str, list[Any]], seconds: dict[str, float]) -> list[ScoredRollout]:
        """The step's rounds of sampling: its own batch, and with dynamic sampling further batches until B groups
        have a reward spread; the rewards' opinions are watched over all of them."""
        sampled = [self.sample_and_score(batch, seconds)]
        if self.sampling.dynamic_sampling:
            sampled = self.sample_until_informative(sampled[0], seconds)
        self.watch_reward_opinions(self.module.global_step, sampled)
        return sampled

    def sample_and_score(self, batch: dict[str, list[Any]], seconds: dict[str, float]) -> ScoredRollout:
        """One round of sampling: G completions per prompt of ``batch``, their rewards, and which groups spread."""
        num_generations = self.sampling.num_generations
        with self.module.timed("rollout", seconds):
            rollout = self.generate(batch, num_generations, do_sample=True)
        with self.module.timed("reward", seconds):
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
        module = self.module
        strategy = module._trainer.strategy if module._trainer is not None else None

        def opinions_everywhere(count: int) -> int:
            if strategy is None:
                return count
            return int(strategy.reduce(torch.tensor(float(count), device=module.device), reduce_op="sum"))

        per_func = torch.cat([round_.per_func for round_ in sampled])
        ids = [i for round_ in sampled for i in _completion_ids(round_)]
        self.opinions.observe(per_func, step, ids, opinions_everywhere)

    def sample_until_informative(self, first: ScoredRollout, seconds: dict[str, float]) -> list[ScoredRollout]:
        """Dynamic sampling: further batches of the training data, one per round, until this process has as many
        groups with a reward spread as its batch has prompts, or ``sampling.max_refill_rounds`` extra rounds.

        The batches come from the training loader's own epoch (``ResumableDataLoader.next_batch``): the loop's next
        batch follows them, and a resumed run neither repeats nor skips them. Every process runs the same rounds
        (they agree on each with an all-reduce, since sampling and scoring hold collectives) and takes its next
        batch in each, so the data positions of the processes stay equal.
        """
        trainer = self.module.trainer
        loader = trainer.train_dataloader
        if not callable(getattr(loader, "next_batch", None)):
            raise ConfigError(
                "sampling.dynamic_sampling takes further prompts in a step from the training dataloader, which must "
                f"be a grpo_lightning.data.ResumableDataLoader (ViVQAXDataModule's), not {type(loader).__name__}; "
                "use that data module or set model.sampling.dynamic_sampling: false."
            )
        strategy, quota = trainer.strategy, len(first.rollout.prompts)
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

    def trained_groups(self, sampled: list[ScoredRollout]) -> TrainedGroups:
        """The groups the step trains (``dynamic_sampling.choose_groups``): the first round's own objects when it is
        all of them, else the chosen groups of every round joined into one rollout."""
        group_size, quota = self.sampling.num_generations, len(sampled[0].rollout.prompts)
        where = [(r, p) for r, round_ in enumerate(sampled) for p in range(len(round_.informative))]
        indices, _ = choose_groups([bool(flag) for round_ in sampled for flag in round_.informative], quota)
        chosen = [where[i] for i in indices]
        solutions = None
        if all("solution" in round_.batch for round_ in sampled):
            solutions = [sampled[r].batch["solution"][p] for r, p in chosen]
        if chosen == where[:quota]:  # the step's own batch, as it is
            return TrainedGroups(sampled[0].rollout, sampled[0].rewards, sampled[0].per_func, chosen, solutions)
        parts = [(round_.rollout, [p for k, p in chosen if k == r]) for r, round_ in enumerate(sampled)]
        rollout = join_groups(parts, group_size, self.module.adapter.tokenizer.pad_token_id)
        rows = [torch.arange(p * group_size, (p + 1) * group_size) for _, p in chosen]
        rewards = torch.cat([sampled[r].rewards[row] for (r, _), row in zip(chosen, rows, strict=True)])
        per_func = torch.cat([sampled[r].per_func[row] for (r, _), row in zip(chosen, rows, strict=True)])
        return TrainedGroups(rollout, rewards, per_func, chosen, solutions)

    def warn_of_shortfall(self, step: int, sampled: list[ScoredRollout], chosen: list[tuple[int, int]]) -> None:
        """Dynamic sampling: warn (at the 1st, 2nd, 4th, ... such step) when the step had to train groups without a
        reward spread because its rounds ran out; counted over every process."""
        module = self.module
        filled = sum(not bool(sampled[r].informative[p]) for r, p in chosen)
        counts = torch.tensor([float(filled), float(len(chosen))], device=module.device)
        filled_everywhere, trained_everywhere = (
            int(v) for v in module.trainer.strategy.reduce(counts, reduce_op="sum")
        )
        self.shortfalls.observe(step, filled_everywhere, trained_everywhere, len(sampled) - 1)


def _completion_ids(round_: ScoredRollout) -> list[Any]:
    """The sample id of each completion of a round (none when the batch has no ids)."""
    ids = round_.batch.get("id")
    return [] if ids is None else [ids[i] for i in round_.rollout.prompt_index.tolist()]


__all__ = ["RolloutStage"]
