"""The update stage: advantages, the policy's log-prob and entropy passes, the GRPO loss over micro-batches, the
backward passes and the optimizer steps.

Loss normalisers are totals over the whole batch (:class:`~grpo_lightning.algorithms.BatchTotals`), so the
micro-batch losses add up to the whole-batch loss and the gradient does not depend on ``micro_batch_size``. The loss
options reach :func:`~grpo_lightning.algorithms.grpo_loss` as the typed ``LossConfig``, whole; what an option needs
prepared from the model or the batch (a mask, a weight) is one small method here, named for the option:

* ``loss.advantage_estimator`` (:meth:`PolicyUpdate.advantages`): the registered estimator
  (:func:`~grpo_lightning.advantages.compute_advantages`), over every process's rewards when it looks at the batch;
* ``loss.kl_in_reward`` (:meth:`PolicyUpdate.rewards_with_kl`): each reward minus ``beta`` times its completion's KL
  to the reference, before the advantages (so the reference pass comes first in every step; without the option the
  order changes nothing, the advantages depending on the rewards alone);

* ``loss.mask_truncated_completions`` (:meth:`PolicyUpdate.loss_mask`): completions without EOS leave the loss mask
  (their advantages, computed before, still shaped their groups'); statistics are token means over the tokens left;
* ``loss.top_entropy_quantile`` below 1 (:meth:`PolicyUpdate.high_entropy_tokens`): a no-grad pass first measures
  every completion token's entropy, so that the threshold is the whole batch's (every micro-batch, every process)
  before the first micro-batch's loss; it holds (N, C) entropies, not logits, and is measured once per rollout (the
  sampling policy's), for all ``num_iterations`` (TRL takes a threshold per loss call, from that micro-batch's pass);
* a rollout with the engine's log-probs (the ``vllm`` engine, :class:`EngineMismatch`): the engines' mismatch is
  measured on the first iteration's policy pass (no pass of its own) over every completion token: ``engine_logp_diff``,
  the mean |logp_policy - logp_engine| (a mean of the processes' means), and the KL, chi2, effective sample size and
  perplexity ratio of :func:`~grpo_lightning.engines.correction.mismatch_metrics` (over the global batch: their sums
  are added over the processes). With ``vllm.importance_sampling_cap`` each token's policy term is weighted by the
  ratio ``exp(logp_old - logp_engine)`` (``logp_old``: the old log-probs, or the pass's own detached) bounded by
  ``vllm.importance_sampling_mode`` (:data:`~grpo_lightning.engines.correction.IMPORTANCE_SAMPLING_MODES`), TRL's
  ``vllm_importance_sampling_mode``; with ``vllm.off_policy_mask_threshold`` the policy term of a completion with a
  negative advantage whose mean ``logp_engine - logp`` exceeds the threshold is left out, at each iteration's pass
  (DeepSeek-V3.2's off-policy sequence masking, as TRL's). Both act on the policy term only: a masked token keeps its
  KL term and still counts in the normaliser and the statistics, as in TRL, which multiplies its per-token policy loss
  by them.
* ``loss.sft_coef`` above 0 (:class:`~grpo_lightning.stages.supervision.GoldSupervision`): each prompt's gold
  completion joins the policy pass of the micro-batch holding its first sampled completion, scored at temperature 1,
  and the micro-batch's loss gains its share of ``sft_coef`` (decayed by the optimizer step) times the batch's gold
  token-mean NLL, at every iteration (still measured once the decay reached 0, so that its curve goes on);
* ``loss.entropy_coef`` above 0 or ``loss.adaptive_entropy`` (:class:`EntropyControl`): every policy pass also gives
  the entropy, with its gradient, through the chunked head; the coefficient is state of this stage, adapted after
  each optimizer step from the step's mean token entropy over every process, and saved in checkpoints
  (:meth:`PolicyUpdate.save_state`, :meth:`PolicyUpdate.restore`) so that a resumed run goes on with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from grpo_lightning.accumulation import GradientAccumulation, gradient_accumulation
from grpo_lightning.advantages import compute_advantages
from grpo_lightning.algorithms import (
    BatchTotals,
    adaptive_entropy_coef,
    drop_truncated,
    entropy_quantile_threshold,
    gated_entropy_coef,
    grpo_loss,
    high_entropy_mask,
    is_truncated,
    loss_normaliser,
    sequence_kl_penalty,
)
from grpo_lightning.engines.correction import (
    IMPORTANCE_SAMPLING_MODES,
    MISMATCH_SUMS,
    engine_logp_gap,
    mismatch_metrics,
    mismatch_sums,
    off_policy_sequence_mask,
)
from grpo_lightning.rollout import Rollout
from grpo_lightning.stages.supervision import GoldRows, GoldSupervision, with_gold_rows

if TYPE_CHECKING:
    import lightning as L

    from grpo_lightning.config import LossConfig, SamplingConfig, VLLMConfig
    from grpo_lightning.stages.async_rollouts import WeightVersions


@dataclass(frozen=True)
class HighEntropyTokens:
    """The tokens ``loss.top_entropy_quantile`` keeps in the policy term, from the batch's entropies."""

    entropy: Tensor  # (N, C) the entropy of every completion position, under the sampling policy
    mask: Tensor  # (N, C) the tokens above the batch's threshold
    stats: dict[str, Tensor]  # entropy_threshold, high_entropy_fraction


class EngineMismatch:
    """The rollout engine's log-probs against the policy's: the mismatch statistics, the importance weights and the
    off-policy sequence mask, for one step.

    Args:
        engine_logps: (N, C) the engine's log-probs of the sampled tokens.
        sampled_mask: (N, C) the completion tokens (before any loss mask).
        cap: ``vllm.importance_sampling_cap`` (None: no weights).
        device: where the statistics are summed.
        mode: ``vllm.importance_sampling_mode``.
        minimum: ``vllm.importance_sampling_min``.
        threshold: ``vllm.off_policy_mask_threshold`` (None: no off-policy mask).
        sampling_logps: (N, C) the policy's log-probs under the weights that sampled the rollout, which the mismatch
            statistics compare the engine's with (None: those of the first iteration's pass).
    """

    def __init__(
        self,
        engine_logps: Tensor,
        sampled_mask: Tensor,
        cap: float | None,
        device: torch.device,
        mode: str = "token_truncate",
        minimum: float | None = None,
        threshold: float | None = None,
        sampling_logps: Tensor | None = None,
    ) -> None:
        self.engine_logps, self.sampled_mask, self.cap = engine_logps, sampled_mask, cap
        self.sampling_logps = sampling_logps
        self.mode, self.minimum, self.threshold = IMPORTANCE_SAMPLING_MODES[mode], minimum, threshold
        self.gap = torch.zeros((), device=device)
        # mismatch_sums over the micro-batches; the tokens of the loss mask that the importance weights and the
        # off-policy mask left out, and the tokens they saw
        self.sums = torch.zeros(len(MISMATCH_SUMS), dtype=torch.float64, device=device)
        self.counts = torch.zeros(4, dtype=torch.float64, device=device)

    def weights(self, mb: slice, logps: Tensor, old: Tensor | None, mask: Tensor, measure: bool) -> Tensor | None:
        """The micro-batch's importance weights (None without a cap); ``measure``: add its share of the gap and of the
        mismatch sums, over every sampled token (the first iteration's pass)."""
        if measure:
            policy = logps.detach() if self.sampling_logps is None else self.sampling_logps[mb]
            tokens = self.sampled_mask[mb].sum()
            gap = engine_logp_gap(self.engine_logps[mb], policy, self.sampled_mask[mb])
            self.gap += gap.float() * tokens / self.sampled_mask.sum().clamp(min=1)
            self.sums += mismatch_sums(policy, self.engine_logps[mb], self.sampled_mask[mb]).to(self.sums.device)
        if self.cap is None:
            return None
        old_or_detached = old if old is not None else logps.detach()
        weights = self.mode.weights(old_or_detached, self.engine_logps[mb], mask[mb], self.cap, self.minimum)
        if self.mode.masks:
            counted = mask[mb] != 0
            self.counts[0] += (counted & (weights == 0)).sum().to(self.counts)
            self.counts[1] += counted.sum().to(self.counts)
        return weights

    def policy_mask(self, mb: slice, logps: Tensor, advantages: Tensor, mask: Tensor) -> Tensor | None:
        """(B, C) the micro-batch's tokens whose sequence keeps its policy term under the off-policy sequence mask,
        measured against the current pass (None without a threshold)."""
        if self.threshold is None:
            return None
        engine_logps = self.engine_logps[mb].to(logps.device)
        keep = off_policy_sequence_mask(advantages, logps, engine_logps, mask[mb], self.threshold)
        counted = mask[mb] != 0
        self.counts[2] += (counted & ~keep[:, None]).sum().to(self.counts)
        self.counts[3] += counted.sum().to(self.counts)
        return keep[:, None].expand_as(counted)

    def stats(self, summed: Tensor) -> dict[str, Tensor]:
        """The step's statistics, from ``summed``: :attr:`sums` and :attr:`counts` concatenated and summed over the
        processes."""
        sums, counts = summed[: len(self.sums)], summed[len(self.sums) :]
        stats = {"engine_logp_diff": self.gap}
        stats.update({f"engine_{name}": value.float() for name, value in mismatch_metrics(sums).items()})
        if self.cap is not None and self.mode.masks:
            stats["engine_masked_fraction"] = (counts[0] / counts[1].clamp(min=1)).float()
        if self.threshold is not None:
            stats["engine_off_policy_masked_fraction"] = (counts[2] / counts[3].clamp(min=1)).float()
        return stats


#: The checkpoint entry of :class:`EntropyControl`'s state (``loss.adaptive_entropy``).
ENTROPY_CONTROL_KEY = "entropy_control"


class EntropyControl:
    """The entropy bonus's coefficient: ``loss.entropy_coef``, or with ``loss.adaptive_entropy`` the coefficient that
    :func:`~grpo_lightning.algorithms.adaptive_entropy_coef` moves after each optimizer step and the last step's
    entropy that gates it (:func:`~grpo_lightning.algorithms.gated_entropy_coef`), as TRL keeps them.

    The step's entropy is the mean over the completion tokens of the loss mask of every micro-batch and every process
    (entropy sums and token counts reduced together, so processes with more tokens weigh more), measured on the passes
    that take the gradient: every process moves the coefficient the same way.
    """

    def __init__(self, config: LossConfig) -> None:
        self.config = config
        self.coef = config.entropy_coef
        self.last_entropy = math.inf  # TRL's start: no bonus before the first measurement
        self.window: Tensor | None = None  # [entropy sum, token count] of the optimizer step so far

    def applied(self) -> float:
        """The coefficient of this optimizer step's loss."""
        config = self.config
        if not config.adaptive_entropy:
            return self.coef
        return gated_entropy_coef(self.coef, self.last_entropy, config.entropy_target)

    def measure(self, entropy: Tensor, mask: Tensor) -> None:
        """Add a micro-batch's entropy (N, C) over its loss mask to the step's sums (adaptive only)."""
        if not self.config.adaptive_entropy:
            return
        keep = mask != 0
        sums = torch.stack([torch.where(keep, entropy.detach().float(), 0.0).sum(), keep.float().sum()])
        self.window = sums if self.window is None else self.window + sums

    def after_step(self, gradients: GradientAccumulation) -> None:
        """Move the adaptive coefficient by the step's entropy over every process, and start the next step's sums."""
        window, self.window = self.window, None
        if not self.config.adaptive_entropy or window is None:
            return
        total = gradients.mean_over_processes(window)  # the same ratio as the sums
        self.last_entropy = float(total[0] / total[1].clamp(min=1))
        config = self.config
        self.coef = adaptive_entropy_coef(
            self.coef, self.last_entropy, config.entropy_target, config.entropy_coef_min, config.entropy_coef_max,
            config.entropy_coef_delta,
        )  # fmt: skip

    def state_dict(self) -> dict[str, float]:
        return {"entropy_coef": self.coef, "last_entropy": self.last_entropy}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.coef, self.last_entropy = float(state["entropy_coef"]), float(state["last_entropy"])


@dataclass(frozen=True)
class _UpdateInputs:
    """What every micro-batch of a step's update reads: the rollout, its advantages, the reference's and the sampling
    policy's log-probs, the loss mask and the batch's counts, and each option's part (None: off)."""

    rollout: Rollout
    advantages: Tensor
    ref_logps: Tensor | None
    old_logps: Tensor | None
    mask: Tensor
    totals: BatchTotals
    high_entropy: HighEntropyTokens | None
    engine: EngineMismatch | None
    gold: GoldSupervision | None


class PolicyUpdate:
    """The update of one training step, for ``module`` (a LightningModule with ``model`` and ``adapter``, attached to
    its trainer when it runs).

    Args:
        module: the LightningModule (its model, device, collectives, optimizer and manual backward).
        loss: the objective and the update's options.
        sampling: the sampling options the passes share (temperature, G, the completion budget).
        vllm: the engines' mismatch correction (``vllm.importance_sampling_*``, ``vllm.off_policy_mask_threshold``;
            :meth:`engine_mismatch`).
    """

    def __init__(
        self,
        module: L.LightningModule,
        loss: LossConfig,
        sampling: SamplingConfig,
        vllm: VLLMConfig,
    ) -> None:
        self.module, self.config, self.sampling, self.vllm = module, loss, sampling, vllm
        self.entropy = EntropyControl(loss)

    # ------------------------------------------------------------------------------------ checkpoints
    def save_state(self, checkpoint: dict[str, Any]) -> None:
        """Put the adaptive entropy coefficient in ``checkpoint`` (``loss.adaptive_entropy``; nothing else changes)."""
        if self.config.adaptive_entropy:
            checkpoint[ENTROPY_CONTROL_KEY] = self.entropy.state_dict()

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Take the adaptive entropy coefficient back from ``checkpoint`` (one saved without it: the configured one)."""
        state = checkpoint.get(ENTROPY_CONTROL_KEY)
        if self.config.adaptive_entropy and state is not None:
            self.entropy.load_state_dict(state)

    # ------------------------------------------------------------------------------------ advantages
    def advantages(self, rewards: Tensor) -> Tensor:
        """Advantages of this process's rewards (N,) by ``loss.advantage_estimator``, on the module's device.

        Groups are whole on each process, so group means and group stds are the same as on one process. What is over
        the batch (``scale_rewards: batch``, which the REINFORCE++ estimators require) is over the global batch: every
        process's rewards are gathered (padded to the largest process's count, so a short last batch on some process
        is fine), scaled together, and each process keeps its own rows.
        """
        config, group_size = self.config, self.sampling.num_generations

        def estimate(values: Tensor) -> Tensor:
            return compute_advantages(values, group_size, config.advantage_estimator, config.scale_rewards)

        rewards = rewards.to(self.module.device)
        if config.scale_rewards != "batch" or self.world_size == 1:
            return estimate(rewards)
        everyone, sizes = self.gathered(rewards)
        start = sum(sizes[: self.module.global_rank])
        return estimate(everyone)[start : start + len(rewards)]

    def rewards_with_kl(
        self, rewards: Tensor, rollout: Rollout, ref_logps: Tensor | None, old_logps: Tensor | None
    ) -> Tensor:
        """The rewards the advantages are computed from: ``rewards`` (N,) themselves, or with ``loss.kl_in_reward``
        minus ``beta`` times each completion's KL to the reference (:func:`~grpo_lightning.algorithms.
        sequence_kl_penalty`), measured with the sampling policy's log-probs (``old_logps``, or a no-grad pass of the
        policy when there are none) over every completion token, as verl's ``apply_kl_penalty`` does."""
        if not self.config.kl_in_reward or ref_logps is None:
            return rewards
        sampling_logps = old_logps if old_logps is not None else self.completion_logps(self.module.model, rollout)
        mask = rollout.completion_mask.to(ref_logps.device)
        penalty = sequence_kl_penalty(sampling_logps, ref_logps, mask, self.config.kl_estimator)
        return rewards.to(penalty.device) - self.config.beta * penalty.to(rewards.dtype)

    # ------------------------------------------------------------------------------------ passes
    def micro_batches(self, num_sequences: int) -> list[slice]:
        size = self.config.micro_batch_size
        return [slice(i, min(i + size, num_sequences)) for i in range(0, num_sequences, size)]

    def completion_logps(self, model: torch.nn.Module, rollout: Rollout) -> Tensor:
        """Per-token log-probs (N, C) of the rollout's completions under ``model``, without gradients."""
        return self._pass_without_grad(model, rollout, entropy=False)

    def old_logps(
        self, rollout: Rollout, solutions: list[str] | None = None, versions: WeightVersions | None = None
    ) -> Tensor | None:
        """The sampling policy's log-probs when ``loss.num_iterations`` steps move the policy away from it, or when
        weights of earlier optimizer steps sampled the rollout (``sampling.async_rollouts``: each completion's from a
        pass under the weights of its ``rollout.versions``, kept in ``versions``); None: one step on a rollout of
        this step's weights, whose ratio is the pass's own log-probs detached. With ``loss.sft_coef`` the gold
        completions of ``solutions`` ride along as in the update's passes, so that the sampled rows' log-probs come
        from passes of the same rows and width as the first iteration's: its ratio stays 1 to the rounding of the
        passes without them."""
        stale = self.stale_versions(rollout)
        if self.config.num_iterations == 1 and not stale:
            return None
        model = self.module.model
        gold = self.gold_supervision(rollout, solutions, self.micro_batches(len(rollout.completions)))
        if not stale:
            return self._pass_without_grad(model, rollout, entropy=False, gold=gold)
        current = rollout.versions == self.module.global_step
        old = None
        if current.any():
            old = self._pass_without_grad(model, rollout, entropy=False, gold=gold)
        for version in stale:
            with versions.applied(version, model):
                values = self._pass_without_grad(model, rollout, entropy=False, gold=gold)
            rows = (rollout.versions == version).to(values.device)
            old = values if old is None else torch.where(rows[:, None], values, old)
        return old

    def stale_versions(self, rollout: Rollout) -> list[int]:
        """The earlier optimizer steps whose weights sampled completions of ``rollout`` (asynchronous rollouts)."""
        if rollout.versions is None:
            return []
        return sorted({int(v) for v in rollout.versions.tolist() if v != self.module.global_step})

    def token_entropies(self, rollout: Rollout) -> Tensor:
        """Entropy (N, C) of the policy's distribution at every completion position, without gradients."""
        return self._pass_without_grad(self.module.model, rollout, entropy=True)

    @torch.no_grad()
    def _pass_without_grad(
        self, model: torch.nn.Module, rollout: Rollout, entropy: bool, gold: GoldSupervision | None = None
    ) -> Tensor:
        """The log-probs (or, with ``entropy``, the entropies) of every completion token, in eval mode, micro-batch by
        micro-batch (with ``gold``'s rows in the passes, their own values left out)."""
        was_training = model.training
        model.eval()
        mbs = self.micro_batches(len(rollout.completions))
        values = []
        for index, mb in enumerate(mbs):
            rows = gold.rows(index) if gold is not None else None
            values.append(self.logps_with_gold(model, rollout, mb, entropy, rows)[int(entropy)])
        model.train(was_training)
        return torch.cat(values)

    def logps(
        self, model, rollout: Rollout, mb: slice, with_entropy: bool | Literal["grad"]
    ) -> tuple[Tensor, Tensor | None]:
        """Log-probs (and entropies, with gradient for ``"grad"``) of micro-batch ``mb``'s completions under ``model``,
        with gradients if enabled."""
        logps, entropy, _ = self.logps_with_gold(model, rollout, mb, with_entropy, None)
        return logps, entropy

    def logps_with_gold(
        self, model, rollout: Rollout, mb: slice, with_entropy: bool | Literal["grad"], gold: GoldRows | None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """:meth:`logps`, and in the same pass the log-probs of ``gold``'s completions at temperature 1 (None: no
        gold rows), which continue from prompts of the micro-batch."""
        ids, mask = rollout.completion_ids[mb], rollout.completion_mask[mb]
        index, temperature = rollout.prompt_index[mb].tolist(), self.sampling.temperature
        rows, width = ids.shape
        if gold is not None:
            pad = self.module.adapter.tokenizer.pad_token_id
            ids, mask, index = with_gold_rows(ids, mask, index, gold, pad)
            temperature = [temperature] * rows + [1.0] * len(gold.prompt_index)
        logps, entropy = self.module.adapter.completion_logps(
            model, rollout.prompts, index, ids, mask, temperature=temperature, with_entropy=with_entropy
        )
        if gold is None:
            return logps, entropy, None
        gold_logps = logps[rows:, : gold.ids.shape[1]]
        return logps[:rows, :width], None if entropy is None else entropy[:rows, :width], gold_logps

    # ------------------------------------------------------------------------------ each option's part
    def loss_mask(self, rollout: Rollout) -> Tensor:
        """The completion tokens the loss counts: all of them, or with ``loss.mask_truncated_completions`` those of the
        completions that ended with EOS."""
        mask = rollout.completion_mask.float()
        if self.config.mask_truncated_completions:
            eos = self.module.adapter.eos_token_ids(self.module.model)
            mask = drop_truncated(mask, is_truncated(rollout.completion_ids, eos))
        return mask

    def batch_totals(self, mask: Tensor, gradients: GradientAccumulation) -> BatchTotals:
        """The whole batch's counts; the global batch's token count for a loss that needs it (``dapo``)."""
        num_tokens = mask.sum()
        if loss_normaliser(self.config.loss_type) == "global_tokens":
            num_tokens = gradients.mean_over_processes(num_tokens)
        return BatchTotals(
            num_sequences=mask.shape[0],
            num_tokens=float(num_tokens),
            max_completion_length=self.sampling.max_completion_length,
            stats_num_tokens=mask.sum().clamp(min=1),  # the statistics are token means over this batch
        )

    def high_entropy_tokens(self, rollout: Rollout, mask: Tensor) -> HighEntropyTokens | None:
        """``loss.top_entropy_quantile`` below 1: the tokens whose entropy is in the batch's top fraction (None: 1)."""
        quantile = self.config.top_entropy_quantile
        if quantile >= 1.0:
            return None
        entropy = self.token_entropies(rollout)
        everyone, _ = self.gathered(entropy[mask != 0].float())
        threshold = entropy_quantile_threshold(everyone, quantile)
        keep = high_entropy_mask(entropy, mask, threshold)
        kept = keep.sum() / mask.sum().clamp(min=1)
        return HighEntropyTokens(entropy, keep, {"entropy_threshold": threshold, "high_entropy_fraction": kept})

    def engine_mismatch(self, rollout: Rollout, old_logps: Tensor | None = None) -> EngineMismatch | None:
        """The engine's log-probs of a rollout another engine sampled (None: the policy sampled it). The mismatch
        statistics compare them with the policy's first pass, or for a rollout that earlier weights sampled with
        ``old_logps``, the policy's under those weights (the first pass would hold how far the policy moved since)."""
        if rollout.engine_logps is None:
            return None
        vllm = self.vllm
        options = dict(
            mode=vllm.importance_sampling_mode,
            minimum=vllm.importance_sampling_min,
            threshold=vllm.off_policy_mask_threshold,
            sampling_logps=old_logps if self.stale_versions(rollout) else None,
        )
        cap = vllm.importance_sampling_cap
        return EngineMismatch(rollout.engine_logps, rollout.completion_mask, cap, self.module.device, **options)

    # ------------------------------------------------------------------------------------ the update
    def gold_supervision(
        self, rollout: Rollout, solutions: list[str] | None, micro_batches: list[slice]
    ) -> GoldSupervision | None:
        """``loss.sft_coef`` above 0: the step's gold completions (None: off)."""
        if not self.config.sft_coef:
            return None
        adapter, model = self.module.adapter, self.module.model
        eos, suppressed = adapter.eos_token_ids(model)[0], adapter.suppressed_token_ids(model)
        return GoldSupervision.of(self.config, adapter.tokenizer, eos, rollout, solutions, micro_batches, suppressed)

    def optimize(
        self,
        rollout: Rollout,
        advantages: Tensor,
        ref_logps: Tensor | None,
        old_logps: Tensor | None,
        solutions: list[str] | None = None,
    ) -> dict[str, Tensor]:
        """Micro-batched GRPO loss, backward and ``num_iterations`` optimizer steps; the step's statistics (the
        iterations' mean; the entropy and the gold NLL are the first iteration's, measured on the sampling policy;
        with an entropy bonus ``entropy_coef``, the coefficient after the last step). ``solutions``: each prompt's
        gold solution, for ``loss.sft_coef``."""
        module, config, bonus = self.module, self.config, self.config.entropy_bonus
        gradients = gradient_accumulation(module)
        mask = self.loss_mask(rollout)
        micro_batches = self.micro_batches(mask.shape[0])
        step = _UpdateInputs(
            rollout, advantages, ref_logps, old_logps, mask, self.batch_totals(mask, gradients),
            self.high_entropy_tokens(rollout, mask), self.engine_mismatch(rollout, old_logps),
            self.gold_supervision(rollout, solutions, micro_batches),
        )  # fmt: skip
        sums: dict[str, Tensor] = {}
        for iteration in range(config.num_iterations):
            first = iteration == 0
            entropy_coef = self.entropy.applied() if bonus else None  # one coefficient for the optimizer step
            sft_coef = step.gold.coef(config, module.global_step) if step.gold is not None else 0.0
            if first and step.gold is not None:
                sums["sft_coef"] = torch.tensor(sft_coef, device=module.device)
            for index, mb in enumerate(micro_batches):
                loss, stats = self.micro_batch_loss(step, index, mb, first, entropy_coef, sft_coef)
                with gradients.backward_context(last=index == len(micro_batches) - 1):
                    module.manual_backward(loss)
                for name, value in stats.items():
                    if name in _FIRST_ITERATION_STATS and not first:
                        continue  # the sampling policy's; later iterations measure theirs for their terms only
                    sums[name] = sums.get(name, torch.zeros((), device=module.device)) + value
            self.step(gradients)
            self.entropy.after_step(gradients)
        stats = {
            name: value / (1 if name in _FIRST_ITERATION_STATS else config.num_iterations)
            for name, value in sums.items()
        }
        if step.high_entropy is not None:
            stats.update(step.high_entropy.stats)
        if step.engine is not None:
            stats.update(
                step.engine.stats(self.summed_over_processes(torch.cat([step.engine.sums, step.engine.counts])))
            )
        if bonus:
            stats["entropy_coef"] = torch.tensor(self.entropy.coef, device=module.device)
        return stats

    def micro_batch_loss(
        self, step: _UpdateInputs, index: int, mb: slice, first: bool, entropy_coef: float | None, sft_coef: float
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Micro-batch ``index``'s loss (its share of the batch's) and statistics, from a pass of the policy with
        gradients; ``first``: the step's first iteration (which measures the engines' mismatch)."""
        config, bonus, mask, engine = self.config, self.config.entropy_bonus, step.mask, step.engine
        with_entropy = "grad" if bonus else first and step.high_entropy is None
        gold_rows = step.gold.rows(index) if step.gold is not None else None
        logps, entropy, gold_logps = self.logps_with_gold(self.module.model, step.rollout, mb, with_entropy, gold_rows)
        if first and step.high_entropy is not None and not bonus:
            entropy = step.high_entropy.entropy[mb]
        if bonus:
            self.entropy.measure(entropy, mask[mb])
        old = _rows(step.old_logps, mb)
        policy_mask = step.high_entropy.mask[mb] if step.high_entropy is not None else None
        weights = None
        if engine is not None:
            weights = engine.weights(mb, logps, old, mask, first)
            policy_mask = _both(policy_mask, engine.policy_mask(mb, logps, step.advantages[mb], mask))
        loss, stats = grpo_loss(
            logps, old, step.advantages[mb], mask[mb], config, ref_logps=_rows(step.ref_logps, mb), entropy=entropy,
            policy_mask=policy_mask, importance_weights=weights, totals=step.totals, entropy_coef=entropy_coef,
        )  # fmt: skip
        if gold_rows is not None:
            term, stats["sft/nll"] = step.gold.term(gold_logps, gold_rows, sft_coef)
            loss = loss + term
            stats["loss"] = loss.detach()
        return loss, stats

    def step(self, gradients: GradientAccumulation) -> None:
        """Clip, step the optimizer and the learning-rate scheduler, and clear the gradients."""
        optimizer, scheduler = self.module.optimizers(), self.module.lr_schedulers()
        gradients.clip(optimizer, self.config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()

    # ------------------------------------------------------------------------------------ collectives
    @property
    def world_size(self) -> int:
        return self.module.trainer.world_size if self.module._trainer is not None else 1

    def summed_over_processes(self, values: Tensor) -> Tensor:
        """``values`` summed over the processes (themselves with one process)."""
        if self.world_size == 1:
            return values
        return self.module.trainer.strategy.reduce(values.clone(), reduce_op="sum")

    def gathered(self, values: Tensor) -> tuple[Tensor, list[int]]:
        """The 1-D ``values`` of every process, rank-major (this process's alone with one process), and each process's
        count; counts may differ: each process pads to the largest with NaN for the gather, and the padding is dropped.
        """
        world_size, module = self.world_size, self.module
        if world_size == 1:
            return values, [len(values)]
        sizes = module.all_gather(torch.tensor(len(values), device=module.device)).reshape(-1).tolist()
        padded = torch.full((max(sizes),), torch.nan, dtype=values.dtype, device=module.device)
        padded[: len(values)] = values
        rows = module.all_gather(padded).reshape(world_size, -1)  # rank-major, each row padded with NaN
        return torch.cat([rows[rank, :size] for rank, size in enumerate(sizes)]), sizes


#: The statistics measured on the first iteration's passes only: the sampling policy's entropy and gold NLL, and the
#: gold term's coefficient at the step's first optimizer step.
_FIRST_ITERATION_STATS = frozenset({"entropy", "sft/nll", "sft_coef"})


def _rows(values: Tensor | None, mb: slice) -> Tensor | None:
    return values[mb] if values is not None else None


def _both(first: Tensor | None, second: Tensor | None) -> Tensor | None:
    """The tokens two policy masks both keep (either alone when the other is None)."""
    if first is None or second is None:
        return second if first is None else first
    return (first != 0) & (second != 0)


__all__ = ["ENTROPY_CONTROL_KEY", "EngineMismatch", "EntropyControl", "HighEntropyTokens", "PolicyUpdate"]
