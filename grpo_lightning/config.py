"""The settings of :class:`~grpo_lightning.module.GRPOModule`, grouped as a reader thinks of them.

Each group is a typed dataclass; jsonargparse turns a dataclass-typed argument into nested options, so
``sampling: SamplingConfig`` is ``--model.sampling.temperature`` on the command line and
``model: {sampling: {temperature: 1.0}}`` in YAML. A group checks its own values when it is built.

An option that picks a registered variant (``loss.loss_type``, ``loss.policy_loss``, ``loss.scale_rewards``,
``loss.importance_sampling_level``, ``rewards.aggregation``, ``evaluation.protocol``,
``vllm.importance_sampling_mode``; ``rollout_engine`` on the module) is a ``str`` checked against its
:class:`~grpo_lightning.registry.Registry`: the registry is the one list of choices, so a variant registered before
the config is read is selectable from YAML, and an unknown name is refused with the registered ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, Literal

from grpo_lightning.advantages import ADVANTAGE_ESTIMATORS
from grpo_lightning.algorithms import (
    ADVANTAGE_SCALERS,
    IMPORTANCE_SAMPLING_LEVELS,
    KL_ESTIMATORS,
    LOSS_AGGREGATORS,
    POLICY_LOSSES,
)
from grpo_lightning.engines.correction import IMPORTANCE_SAMPLING_MODES
from grpo_lightning.errors import ConfigError
from grpo_lightning.hardware import core_list
from grpo_lightning.metrics import PROTOCOLS
from grpo_lightning.rewards import AGGREGATIONS


@dataclass(frozen=True)
class RewardConfig:
    """What a completion is scored by.

    Args:
        funcs: registered reward names or dotted paths ``pkg.module:function``.
        weights: one weight per reward function (None: all 1.0).
        kwargs: options of reward functions, by name (e.g. ``{explanation: {cider_weight: 0.5}}``).
        aggregation: how the functions' scores become a completion's training reward: ``sum_then_normalize`` (their
            weighted sum; the advantage normalises it) or ``normalize_then_sum`` (GDPO, arXiv 2601.05242; TRL's
            ``multi_objective_aggregation``: each function's scores normalised within the prompt's group first,
            ``(x - group mean) / (group std + 1e-4)`` over the completions it scored, then the weighted sum, which
            the advantage normalises over the batch: it needs ``loss.scale_rewards: batch``). Logged rewards stay the
            plain weighted sum.
        timeout_s: the longest one call of a reward function may take, in seconds; a reward that runs longer stops
            the run with a message naming it and the step (None: no limit).
    """

    funcs: Sequence[str] = ("format",)
    weights: Sequence[float] | None = None
    kwargs: dict[str, dict[str, Any]] | None = None
    aggregation: str = "sum_then_normalize"
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        AGGREGATIONS.check(self.aggregation, "model.rewards.aggregation")
        if self.weights is not None and len(self.weights) != len(self.funcs):
            raise ConfigError(
                f"rewards.weights has {len(self.weights)} entries for {len(self.funcs)} rewards.funcs; "
                "give one weight per reward function."
            )
        unknown = set(self.kwargs or {}) - set(self.funcs)
        if unknown:
            raise ConfigError(
                f"rewards.kwargs names {sorted(unknown)}, which are not in rewards.funcs {list(self.funcs)}; add them "
                "to rewards.funcs, or remove their options."
            )
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ConfigError(
                f"rewards.timeout_s must be a positive number of seconds, not {self.timeout_s}; or null for no limit."
            )


@dataclass(frozen=True)
class SamplingConfig:
    """How the completions of a rollout are sampled.

    Args:
        num_generations: G, completions sampled per prompt.
        max_completion_length: the most tokens a completion may have.
        min_completion_length: EOS is blocked before this many tokens (benchmarks fix the length with it).
        temperature: sampling temperature (log-probs are computed at the same temperature).
        top_p: nucleus sampling threshold.
        top_k: top-k sampling (None: off).
        generation_batch_size: sequences sampled at once (None: all B * G together).
        dynamic_sampling: DAPO's dynamic sampling: leave out the groups whose rewards spread no more than
            ``min_group_reward_std`` (they carry no learning signal) and sample further batches of prompts from the
            training data, in rounds, until the step has B groups with a spread. Off: every group trains.
        min_group_reward_std: a group trains only when the std of its G rewards is above this; 0 leaves out only
            the groups of equal rewards.
        max_refill_rounds: the most extra rounds (one batch of prompts each) a step samples; when they do not find
            B groups with a spread, the step trains those it found and makes up the rest with groups of equal
            rewards (advantage 0), as without dynamic sampling, and a warning names the step.
        async_rollouts: the ``vllm`` engine samples the rollouts of the next ``max_staleness`` steps (the next
            batches of the training stream) while the trainer scores, takes log-probs and updates on this one
            (:mod:`grpo_lightning.stages.async_rollouts`). A rollout sampled with the weights of an earlier optimizer
            step is off-policy by that many steps, its staleness: the ratio's old log-probs are the trainer's under
            the weights that sampled it. Off: sample, then update, one after the other.
        max_staleness: K, how many training steps ahead the engine samples (0: no step ahead, which is the
            synchronous step). A rollout's staleness counts optimizer steps: at most K x ``loss.num_iterations``.
    """

    num_generations: int = 8
    max_completion_length: int = 256
    min_completion_length: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    generation_batch_size: int | None = None
    dynamic_sampling: bool = False
    min_group_reward_std: float = 0.0
    max_refill_rounds: int = 4
    async_rollouts: bool = False
    max_staleness: int = 1

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ConfigError(
                f"sampling.num_generations must be at least 2, not {self.num_generations}: advantages compare the "
                "completions of a prompt's group with each other."
            )
        if self.max_completion_length < 1:
            raise ConfigError(
                f"sampling.max_completion_length must be at least 1 token, not {self.max_completion_length}."
            )
        if not 0 <= self.min_completion_length <= self.max_completion_length:
            raise ConfigError(
                f"sampling.min_completion_length ({self.min_completion_length}) must be between 0 and "
                f"sampling.max_completion_length ({self.max_completion_length})."
            )
        if not self.temperature > 0:
            raise ConfigError(
                f"sampling.temperature must be above 0, not {self.temperature}: GRPO samples several completions "
                "per prompt and divides the logits by it (greedy decoding would give G equal completions). "
                "Use 1.0 for the model's own distribution."
            )
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling.top_p must be in (0, 1], not {self.top_p} (1: no nucleus truncation).")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"sampling.top_k must be at least 1 or null (off), not {self.top_k}.")
        if self.generation_batch_size is not None and self.generation_batch_size < 1:
            raise ConfigError(
                f"sampling.generation_batch_size must be at least 1 or null (all together), not "
                f"{self.generation_batch_size}."
            )
        if self.min_group_reward_std < 0 or self.max_refill_rounds < 0:
            raise ConfigError(
                f"sampling.min_group_reward_std ({self.min_group_reward_std}) and sampling.max_refill_rounds "
                f"({self.max_refill_rounds}) must be 0 or more."
            )
        if self.max_staleness < 0:
            raise ConfigError(
                f"sampling.max_staleness must be 0 or more, not {self.max_staleness}: the steps the engine samples "
                "ahead of the trainer (0: none, the synchronous step)."
            )


@dataclass(frozen=True)
class LossConfig:
    """The GRPO objective and the policy update.

    Args:
        beta: weight of the KL penalty to the reference model; 0 keeps no reference model in memory.
        epsilon_low: lower clip range of the probability ratio.
        epsilon_high: upper clip range (None: same as ``epsilon_low``; larger values are DAPO's clip-higher).
        num_iterations: optimizer steps on each rollout (mu in the GRPO paper); >1 computes old-policy log-probs.
        scale_rewards: divide advantages by the group's std (``group``), the batch's (``batch``; the global batch's
            under data parallelism) or not at all (``none``, Dr. GRPO).
        loss_type: loss aggregation: ``grpo`` (mean of per-sequence token means), ``bnpo`` (token mean over the
            process's batch), ``dr_grpo`` (token sum / (sequences * max_completion_length)), ``dapo`` (token mean over
            the global batch).
        micro_batch_size: sequences per forward/backward pass in the loss computation.
        max_grad_norm: clip the gradient norm to this value before each step (None: no clipping).
        delta: two-sided clipping (INTELLECT-2): the ratio of a negative-advantage token is capped at ``delta``, so it
            stops pushing once past it (None: off; must exceed ``1 + epsilon_high``). Logged as ``clip_ratio/delta``.
        importance_sampling_level: the ratio of the surrogate: ``token`` (GRPO), ``sequence`` (GSPO: the geometric
            mean of the sequence's token ratios, clipped per sequence; with ``loss_type: grpo`` the GSPO objective) or
            ``sequence_token`` (GSPO-token: the sequence ratio's value, each token's own gradient).
        mask_truncated_completions: completions cut at ``max_completion_length`` without EOS get no loss (DAPO's
            overlong filtering); they still count in their group's advantages, and in the normaliser's sequence count
            (``grpo``, ``dr_grpo``) but not its token count (``bnpo``, ``dapo``), as in TRL.
        top_entropy_quantile: rho: only the completion tokens whose entropy is in the top rho fraction of the batch
            (all micro-batches and processes) get the policy term (Wang et al. 2025, TRL's ``top_entropy_quantile``);
            the KL term keeps every token. 1.0: every token, no extra pass; below 1 one no-grad entropy pass per step.
        ref_sync_steps: every this many optimizer steps the reference model becomes
            ``ref_sync_alpha * policy + (1 - ref_sync_alpha) * reference`` (TR-DPO; TRL's ``sync_ref_model``); 0: never.
            Needs ``beta > 0`` and full fine-tuning (with LoRA the reference is the base model itself). Checkpoints
            then hold the reference's weights too (``reference_state_dict``), and a resumed run continues from them.
        ref_sync_alpha: the policy's share in that mix (1.0: the reference becomes a copy of the policy).
        policy_loss: the per-token policy term, apart from its aggregation (``loss_type``), so that each choice is one
            step of the loss and any pair composes: ``ppo`` (the clipped surrogate above), ``cispo`` (MiniMax-M1, arXiv
            2506.13585, TRL's ``cispo``: REINFORCE with the importance weight capped at ``cispo_max_weight``, stop
            gradient), ``sapo`` (arXiv 2511.20347, TRL's ``sapo``: a sigmoid gate of temperature
            ``sapo_temperature_pos``/``sapo_temperature_neg`` instead of the clip) or ``gmpo`` (arXiv 2507.20673,
            verl's ``geo_mean``: the geometric mean of the sequence's token ratios, each clipped in log space to
            ``[-epsilon_low, epsilon_high]``, the paper's 0.4 and 0.4; token level and ``loss_type: grpo`` only).
            ``delta`` and ``dual_clip`` belong to ``ppo``; ``epsilon_*`` are unused by ``cispo`` and ``sapo``.
        dual_clip: dual-clip PPO's c (Ye et al. 2020, arXiv 1912.09729; verl's ``clip_ratio_c``, EasyR1's
            ``clip_ratio_dual``, both 3.0): a negative-advantage token's loss is at most ``-c * A``, so it stops pushing
            once its ratio passes c (None: off; must exceed 1; not with ``delta``). Logged as ``clip_ratio/dual``.
        cispo_max_weight: ``cispo``'s cap of the importance weight (TRL's ``epsilon_high`` with ``cispo``, ScaleRL's
            epsilon_max, recommended 5.0). Logged: ``clip_ratio/cispo``, the tokens whose weight was capped.
        sapo_temperature_pos: ``sapo``'s gate temperature for positive advantages (TRL's default 1.0).
        sapo_temperature_neg: ``sapo``'s gate temperature for the other advantages (TRL's default 1.05). Logged:
            ``sapo/gate``, the mean factor the gate scales the policy gradient by (1 on-policy).
        kl_estimator: the per-token estimate of KL(policy || reference) (Schulman 2020, "Approximating KL
            divergence"; verl's ``kl_penalty``): ``k3`` (``exp(d) - d - 1``, d = ref - policy log-prob; GRPO's),
            ``k1`` (policy - ref log-prob), ``k2`` (half its square), ``abs`` (its absolute value) or ``k3+`` (k3's
            value with k2's gradient, verl's straight-through ``k3+``).
        kl_in_reward: take ``beta`` times each completion's KL (the estimate summed over its tokens, sampling policy
            against reference, no gradient) from its reward before the advantages, and put no KL term in the loss
            (verl's ``use_kl_in_reward``). Needs ``beta > 0``. ``train/kl`` is logged either way.
        kl_bias_correction: weigh each token's KL estimate by the importance ratio ``pi_theta / pi_old`` of
            ``importance_sampling_level``, with its gradient, so that the estimate over tokens the sampling policy drew
            is unbiased for KL(pi_theta || pi_ref) (at the ``token`` level; the sequence levels weigh each token by its
            sequence's ratio, as TRL does; DeepSeek-V3.2, arXiv 2512.02556; TRL's ``use_bias_correction_kl``). At
            ``num_iterations: 1`` the ratio is 1 but its gradient is not: at the token level the KL term's gradient
            gains ``k * grad log pi``. ``train/kl`` is then the corrected estimate. Needs ``beta > 0``, not with
            ``kl_in_reward``.
        advantage_estimator: ``grpo`` (reward minus the group mean, scaled by ``scale_rewards``), ``rloo`` (minus the
            mean of the group's other rewards, Ahmadian et al. 2024; ``scale_rewards`` none or batch, TRL's
            ``normalize_advantages``), ``reinforce_pp`` (the rewards whitened over the global batch, REINFORCE++, Hu et
            al. 2025; ``scale_rewards: batch``), ``reinforce_pp_baseline`` (the group mean subtracted first) or
            ``grpo_passk`` (only each group's best completion gains, by the best reward minus the second best; verl's
            ``grpo_passk``; ``scale_rewards`` group or none).
        entropy_coef: weight of an entropy bonus: the loss less ``entropy_coef`` times the policy's per-token entropy
            (with gradient), aggregated by ``loss_type`` like the rest (verl's ``actor.entropy_coeff``); 0: off, no
            extra cost. With ``adaptive_entropy``, the starting coefficient. Logged as ``entropy_coef``. The bonus
            counts every completion token, as the KL term does: the top-entropy mask and the engines' correction act
            on the policy term only. With ``top_entropy_quantile`` below 1 as well, ``train/entropy`` is the
            training pass's (train mode) instead of the pass before the update.
        adaptive_entropy: adapt the coefficient after each optimizer step (Skywork-OR1, arXiv 2505.22312; TRL's
            ``use_adaptive_entropy``): up by ``entropy_coef_delta`` when the step's mean token entropy (every process)
            is at or below ``entropy_target``, down otherwise, within ``[entropy_coef_min, entropy_coef_max]``; the
            bonus acts only while the last step's entropy is at or below the target. Saved in checkpoints.
        entropy_target: the target mean token entropy in nats (TRL's ``entropy_target``); needed by
            ``adaptive_entropy``.
        entropy_coef_min: the adaptive coefficient's lower bound (TRL's default 0.0).
        entropy_coef_max: its upper bound (TRL's default 1.0).
        entropy_coef_delta: its step per optimizer step (TRL's default 0.005).
        sft_coef: weight of supervision from the gold solution: the loss plus ``sft_coef`` times the token-mean
            negative log-likelihood, under the policy at temperature 1, of each prompt's gold completion (the sample's
            answer and first reference explanation as :func:`~grpo_lightning.task.format_solution` writes them, then
            EOS), over this process's batch; the supervised term that ms-swift's CHORD and verl mix into RL. The gold
            completions join the policy pass of the micro-batch that holds their prompt's first completion: they
            continue from the same prefilled prompt (no second image or prompt encoding) through the chunked head.
            The gold has no ``<think>`` part, which the strict ``format`` reward asks for: the two pull apart, and a
            decay (``sft_decay_steps``) leaves the end of the run to the rewards. 0: off, no extra rows. Logged:
            ``sft/nll`` (the first iteration's, before the step's updates; measured also once the decay has reached 0)
            and ``sft_coef`` (the step's first optimizer step's).
        sft_decay_steps: decay ``sft_coef`` linearly to 0 over this many optimizer steps, ``sft_coef * (1 - step /
            sft_decay_steps)`` at optimizer step ``step`` (0-based); None: constant.
    """

    beta: float = 0.04
    epsilon_low: float = 0.2
    epsilon_high: float | None = None
    num_iterations: int = 1
    scale_rewards: str = "group"
    loss_type: str = "grpo"
    micro_batch_size: int = 8
    max_grad_norm: float | None = 1.0
    delta: float | None = None
    importance_sampling_level: str = "token"
    mask_truncated_completions: bool = False
    top_entropy_quantile: float = 1.0
    ref_sync_steps: int = 0
    ref_sync_alpha: float = 0.6
    policy_loss: str = "ppo"
    dual_clip: float | None = None
    cispo_max_weight: float = 5.0
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    kl_estimator: str = "k3"
    kl_in_reward: bool = False
    kl_bias_correction: bool = False
    advantage_estimator: str = "grpo"
    entropy_coef: float = 0.0
    adaptive_entropy: bool = False
    entropy_target: float | None = None
    entropy_coef_min: float = 0.0
    entropy_coef_max: float = 1.0
    entropy_coef_delta: float = 0.005
    sft_coef: float = 0.0
    sft_decay_steps: int | None = None

    def __post_init__(self) -> None:
        KL_ESTIMATORS.check(self.kl_estimator, "model.loss.kl_estimator")
        ADVANTAGE_ESTIMATORS.check(self.advantage_estimator, "model.loss.advantage_estimator")
        ADVANTAGE_SCALERS.check(self.scale_rewards, "model.loss.scale_rewards")
        LOSS_AGGREGATORS.check(self.loss_type, "model.loss.loss_type")
        IMPORTANCE_SAMPLING_LEVELS.check(self.importance_sampling_level, "model.loss.importance_sampling_level")
        POLICY_LOSSES.check(self.policy_loss, "model.loss.policy_loss")
        if self.num_iterations < 1 or self.micro_batch_size < 1:
            raise ConfigError(
                f"loss.num_iterations ({self.num_iterations}) and loss.micro_batch_size ({self.micro_batch_size}) "
                "must be at least 1."
            )
        if self.beta < 0:
            raise ConfigError(f"loss.beta must be 0 (no KL term) or more, not {self.beta}.")
        if self.epsilon_low < 0 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise ConfigError(
                f"loss.epsilon_low ({self.epsilon_low}) and loss.epsilon_high ({self.epsilon_high}) must be 0 or more: "
                "they are distances of the probability ratio from 1."
            )
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"loss.max_grad_norm must be above 0 or null (no clipping), not {self.max_grad_norm}.")
        epsilon_high = self.epsilon_low if self.epsilon_high is None else self.epsilon_high
        if self.delta is not None and not self.delta > 1.0 + epsilon_high:
            raise ConfigError(
                f"loss.delta ({self.delta}) must be above 1 + epsilon_high ({1.0 + epsilon_high:g}): below it, it "
                "would also clip positive-advantage tokens. Raise it, or remove it."
            )
        if not 0.0 <= self.top_entropy_quantile <= 1.0:
            raise ConfigError(
                "loss.top_entropy_quantile must be in [0, 1] (the fraction of tokens kept), "
                f"not {self.top_entropy_quantile}."
            )
        if self.ref_sync_steps < 0:
            raise ConfigError(f"loss.ref_sync_steps must be 0 (never) or a number of steps, not {self.ref_sync_steps}.")
        if not 0.0 < self.ref_sync_alpha <= 1.0:
            raise ConfigError(f"loss.ref_sync_alpha must be in (0, 1], not {self.ref_sync_alpha}.")
        self._check_policy_loss()
        if self.ref_sync_steps and self.beta == 0:
            raise ConfigError(
                "loss.ref_sync_steps is set but loss.beta is 0: with no KL term there is no reference model to "
                "update. Set loss.beta above 0, or loss.ref_sync_steps to 0."
            )
        self._check_kl_in_reward()
        self._check_advantage_estimator()
        self._check_entropy_control()
        self._check_gold_supervision()

    def _check_gold_supervision(self) -> None:
        if not self.sft_coef >= 0:
            raise ConfigError(
                f"loss.sft_coef must be 0 (no gold supervision) or more, not {self.sft_coef}: it weighs the gold "
                "solution's negative log-likelihood, which a negative weight would push down."
            )
        if self.sft_decay_steps is not None and (self.sft_coef == 0 or self.sft_decay_steps < 1):
            raise ConfigError(
                f"loss.sft_decay_steps ({self.sft_decay_steps}) is the number of optimizer steps over which "
                f"loss.sft_coef ({self.sft_coef}) decays to 0: it must be at least 1, with loss.sft_coef above 0. "
                "Set both, or leave loss.sft_decay_steps out (null)."
            )

    @property
    def entropy_bonus(self) -> bool:
        """Whether the loss has an entropy term: a coefficient above 0, or an adaptive one (which may come back)."""
        return self.entropy_coef > 0 or self.adaptive_entropy

    def _check_entropy_control(self) -> None:
        if not self.entropy_coef >= 0:
            raise ConfigError(
                f"loss.entropy_coef must be 0 (no entropy bonus) or more, not {self.entropy_coef}: a negative "
                "coefficient would reward the policy for collapsing its entropy."
            )
        names = ("entropy_target", "entropy_coef_min", "entropy_coef_max", "entropy_coef_delta")
        adaptive_only = {field.name: field.default for field in fields(self) if field.name in names}
        if not self.adaptive_entropy:
            changed = [f"loss.{name}" for name, default in adaptive_only.items() if getattr(self, name) != default]
            if changed:
                raise ConfigError(
                    f"{', '.join(changed)} only steer the adaptive entropy coefficient, and loss.adaptive_entropy is "
                    "false; set loss.adaptive_entropy: true, or leave them out."
                )
            return
        if self.entropy_target is None or not self.entropy_target >= 0:
            raise ConfigError(
                f"loss.adaptive_entropy needs loss.entropy_target, the mean token entropy in nats to hold (0 or more; "
                f"TRL's default is 0.2), not {self.entropy_target}. Set it, or set loss.adaptive_entropy: false."
            )
        if not 0 <= self.entropy_coef_min <= self.entropy_coef_max:
            raise ConfigError(
                f"loss.entropy_coef_min ({self.entropy_coef_min}) must be 0 or more and at most loss.entropy_coef_max "
                f"({self.entropy_coef_max}): they bound the adaptive entropy coefficient."
            )
        if not self.entropy_coef_delta > 0:
            raise ConfigError(
                f"loss.entropy_coef_delta must be above 0, not {self.entropy_coef_delta}: it is the adaptive "
                "coefficient's step per optimizer step (TRL's default is 0.005)."
            )
        if not self.entropy_coef_min <= self.entropy_coef <= self.entropy_coef_max:
            raise ConfigError(
                f"loss.entropy_coef ({self.entropy_coef}), where the adaptive coefficient starts, must lie within "
                f"loss.entropy_coef_min ({self.entropy_coef_min}) and loss.entropy_coef_max ({self.entropy_coef_max})."
            )

    def _check_kl_in_reward(self) -> None:
        if self.kl_in_reward and self.beta == 0:
            raise ConfigError(
                "loss.kl_in_reward is set but loss.beta is 0: the penalty taken from the rewards is beta times the KL, "
                "so nothing would change. Set loss.beta above 0, or loss.kl_in_reward to false."
            )
        if self.kl_bias_correction and (self.beta == 0 or self.kl_in_reward):
            raise ConfigError(
                "loss.kl_bias_correction weighs the KL term of the loss by the importance ratio, and "
                + ("loss.beta is 0: there is no KL term. Set loss.beta above 0" if self.beta == 0 else
                   "with loss.kl_in_reward the KL is a reward of the sampling policy, whose ratio is 1 with no "
                   "gradient. Set loss.kl_in_reward: false")
                + ", or loss.kl_bias_correction: false."
            )  # fmt: skip
        if self.kl_in_reward and self.kl_estimator == "k3+":
            raise ConfigError(
                "loss.kl_estimator k3+ differs from k3 only in its gradient, and with loss.kl_in_reward the KL is a "
                "reward, with no gradient. Use loss.kl_estimator: k3."
            )

    def _check_advantage_estimator(self) -> None:
        accepted = ADVANTAGE_ESTIMATORS[self.advantage_estimator].scalings
        if self.scale_rewards not in accepted:
            raise ConfigError(
                f"model.loss.advantage_estimator {self.advantage_estimator} is defined with model.loss.scale_rewards "
                f"{' or '.join(accepted)}, not {self.scale_rewards} (rloo: a group std would only rescale GRPO; "
                "reinforce_pp: it whitens over the batch; grpo_passk: verl scales by the group std or not at all). "
                f"Set model.loss.scale_rewards: {accepted[0]}."
            )

    def _check_policy_loss(self) -> None:
        """Refuse the policy-loss options out of range, and the pairs that do not compose."""
        if self.dual_clip is not None and not self.dual_clip > 1.0:
            raise ConfigError(
                f"loss.dual_clip ({self.dual_clip}) must be above 1: it bounds a negative-advantage token's loss at "
                "-dual_clip * A, past the clip range (verl's default is 3.0). Raise it, or remove it."
            )
        if self.dual_clip is not None and self.delta is not None:
            raise ConfigError(
                "loss.dual_clip and loss.delta both bound the loss of negative-advantage tokens whose ratio has grown; "
                "set one of them."
            )
        for name in ("cispo_max_weight", "sapo_temperature_pos", "sapo_temperature_neg"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"loss.{name} must be above 0, not {getattr(self, name)}.")
        if self.policy_loss == "ppo":
            return
        for name in ("delta", "dual_clip"):
            if getattr(self, name) is not None:
                raise ConfigError(
                    f"loss.{name} is an option of loss.policy_loss: ppo (the clipped surrogate), not of "
                    f"loss.policy_loss: {self.policy_loss}. Remove loss.{name}, or set loss.policy_loss: ppo."
                )
        if self.policy_loss != "gmpo":
            return
        refused = {
            "importance_sampling_level": (self.importance_sampling_level != "token", "token", "GMPO forms its own "
                                          "sequence ratio, the geometric mean of the clipped token ratios"),
            "loss_type": (self.loss_type != "grpo", "grpo", "GMPO's objective is a mean over sequences; a token-sum "
                          "aggregation would weigh each sequence by its length"),
            "top_entropy_quantile": (self.top_entropy_quantile < 1.0, "1.0", "GMPO's loss is one per sequence, not "
                                     "one per token that a token selection could keep"),
        }  # fmt: skip
        for name, (wrong, needed, why) in refused.items():
            if wrong:
                raise ConfigError(
                    f"loss.policy_loss: gmpo with loss.{name}: {getattr(self, name)}: {why}. Set loss.{name}: "
                    f"{needed}, or another loss.policy_loss."
                )


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters: which weights train.

    Args:
        r: LoRA rank; 0 trains all weights. With LoRA only the adapters train, and the reference model is the same
            network with its adapters disabled (no second copy in memory).
        alpha: LoRA scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the LoRA branch.
        target_modules: projection names that get adapters, inside the language model only (None: every attention and
            MLP projection, the vision tower excluded); a string is used as peft's own regex over full module names,
            which can reach the vision tower too.
    """

    r: int = 0
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: Sequence[str] | str | None = None


@dataclass(frozen=True)
class ImageConfig:
    """Image resolution. The options of one model family are refused for another.

    Args:
        crop_to_patches: InternVL: split each image into tiles of the checkpoint's tile size (448 px for InternVL3) on
            the grid closest to its aspect ratio, plus a thumbnail of the whole image when there are several (dynamic
            resolution); false: one tile per image. None: as the checkpoint's processor does (InternVL's tiles).
        min_patches: InternVL: the fewest tiles per image, thumbnail not counted (None: the checkpoint's).
        max_patches: InternVL: the most tiles per image, thumbnail not counted (None: the checkpoint's, 12 for
            InternVL3). Each tile is the processor's ``image_seq_length`` prompt tokens (256 for InternVL3).
        min_pixels: Qwen2-VL: smaller images are scaled up, aspect kept, to at least this many pixels (None: the
            checkpoint's).
        max_pixels: Qwen2-VL: larger images are scaled down, aspect kept, to at most this many pixels; every 28x28
            pixels are one prompt token (None: the checkpoint's).
    """

    crop_to_patches: bool | None = None
    min_patches: int | None = None
    max_patches: int | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        for name in ("min_patches", "max_patches", "min_pixels", "max_pixels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"image.{name} must be at least 1, not {value}.")


@dataclass(frozen=True)
class LoggingConfig:
    """What a training step logs besides its metrics.

    Args:
        completions_every_n_steps: every this many steps, log sampled completions with their rewards as text (0: never).
        num_completions: how many completions that log shows.
        rollouts_every_n_steps: every this many steps, write the step's rollouts (prompts, every completion, each
            reward's score, advantages, which groups dynamic sampling left out) to ``<log_dir>/rollouts/step=N.jsonl``
            for ``python -m grpo_lightning.report --rollouts <log_dir>`` (0: never).
    """

    completions_every_n_steps: int = 50
    num_completions: int = 4
    rollouts_every_n_steps: int = 0

    def __post_init__(self) -> None:
        if self.rollouts_every_n_steps < 0:
            raise ConfigError(
                f"logging.rollouts_every_n_steps must be 0 (never) or more, not {self.rollouts_every_n_steps}."
            )


@dataclass(frozen=True)
class EvalConfig:
    """Validation, test and predict.

    Args:
        protocol: how answers and explanations are compared: ``normalized`` (NFC, lowercase, punctuation stripped,
            yes/no synonyms) or ``raw`` (the published ViVQA-X baselines' protocol).
        metrics: explanation metrics (``bleu``, ``meteor``, ``rouge``, ``cider``; ``meteor`` needs Java and is left out
            with a message without it).
        predictions_file: where ``predict`` writes its predictions JSON (None: ``<log_dir>/predictions.json``).
    """

    protocol: str = "normalized"
    metrics: Sequence[str] = ("bleu", "meteor", "rouge", "cider")
    predictions_file: str | None = None

    def __post_init__(self) -> None:
        PROTOCOLS.check(self.protocol, "model.evaluation.protocol")


@dataclass(frozen=True)
class VLLMConfig:
    """The ``vllm`` rollout engine (``rollout_engine: vllm``): vLLM in a process of its own, under its own Python
    environment; ignored by the ``hf`` engine.

    Args:
        python: the engine environment's python (``make vllm-env`` creates ``.venv-vllm``; a relative path starts from
            the current folder).
        dtype: the engine's weights and compute dtype (``auto``: the policy's ``dtype``).
        max_model_len: the longest prompt plus completion the engine accepts, in tokens (None: the model's
            ``max_position_embeddings``).
        max_num_seqs: sequences the engine samples at once.
        gpu_memory_utilization: on a GPU, the share of its memory the engine takes (weights and KV cache), beside the
            trainer's on the same device.
        kv_cache_gib: on a CPU, the engine's KV cache in GiB (a whole number).
        enforce_eager: run the engine's model eagerly, without CUDA graphs or compilation (None: eager on a machine
            without CUDA).
        startup_timeout: seconds the engine may take to start before the fit stops with its log.
        request_timeout: seconds the engine may take to answer one request (a rollout's sampling, a weight update)
            before the fit stops with its log (None: wait as long as it takes).
        shm_dir: the folder, in memory, of the engine's socket, model config and weight updates; it needs room for
            the policy's weights in the engine's dtype (``/dev/shm``: a container's is often small, see docker's
            ``--shm-size``).
        importance_sampling_cap: C, the upper bound of the importance-sampling correction of the engines' mismatch,
            which weights each completion token's policy loss by the ratio ``rho = exp(logp_old - logp_vllm)`` bounded
            as ``importance_sampling_mode`` says (None: no correction). vLLM's log-probs are those of the distribution
            it samples from, after top-p and top-k, while the policy's apply the temperature only: the correction
            needs ``sampling.top_p`` 1 and no ``sampling.top_k``.
        importance_sampling_mode: how the ratio is bounded (TRL's ``vllm_importance_sampling_mode``): ``token_truncate``
            ``clamp(rho_t, min, C)`` per token; ``token_mask`` ``rho_t``, or 0 (the token's policy term left out)
            outside ``[min, C]``; ``sequence_truncate`` and ``sequence_mask`` the same with the sequence's ratio
            ``exp(sum_t log rho_t)`` on each of its tokens. Masked tokens still count in the loss's normaliser and
            statistics, as in TRL. Needs ``importance_sampling_cap``.
        importance_sampling_min: the lower bound of the ratio (TRL's ``vllm_importance_sampling_clip_min``; IcePop's
            two-sided mask with a mask mode), in ``(0, importance_sampling_cap)``: the truncate modes raise a smaller
            ratio to it, the mask modes drop it (None: no lower bound).
        off_policy_mask_threshold: delta of DeepSeek-V3.2's off-policy sequence masking (TRL's
            ``off_policy_mask_threshold``): a completion with a negative advantage whose mean ``logp_vllm - logp`` over
            its tokens exceeds delta loses its policy term (None: off); independent of the cap.
        lora_sync: with LoRA (``model.lora.r > 0``), what a weight update sends the engine: ``merged`` (the adapted
            layers with their LoRA merged in, the whole of each module vLLM packs) or ``adapter`` (the adapters alone,
            which the engine applies as a vLLM LoRA: megabytes instead of the adapted layers; the base weights go once,
            at the first update). vLLM 0.32 serves transformers-format InternVL without vision-tower LoRA: with
            ``adapter`` the vision tower's adapted layers go merged at every update. ``adapter`` needs adapters in the
            language model's decoder layers, no embedding or output-head adapters, and nothing but the adapters
            training.
        cpu_cores: the CPU cores the engine process runs on, as a list such as ``0`` or ``0-3,8`` (its CPU affinity,
            with as many torch threads); None: the trainer's cores, and vLLM's own thread count. On a CPU with
            ``sampling.async_rollouts`` the engine samples while the trainer updates: give each cores of its own (the
            trainer's with ``taskset -c``, say), or they take turns on the same ones.
    """

    python: str = ".venv-vllm/bin/python"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int | None = None
    max_num_seqs: int = 256
    gpu_memory_utilization: float = 0.3
    kv_cache_gib: int = 4
    enforce_eager: bool | None = None
    startup_timeout: float = 900.0
    request_timeout: float | None = 1800.0
    shm_dir: str = "/dev/shm"
    importance_sampling_cap: float | None = None
    importance_sampling_mode: str = "token_truncate"
    importance_sampling_min: float | None = None
    off_policy_mask_threshold: float | None = None
    lora_sync: Literal["merged", "adapter"] = "merged"
    cpu_cores: str | None = None

    def __post_init__(self) -> None:
        if self.cpu_cores is not None:
            core_list(self.cpu_cores)  # refused here, before anything starts
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"vllm.gpu_memory_utilization must be in (0, 1], not {self.gpu_memory_utilization}.")
        if self.kv_cache_gib <= 0 or self.startup_timeout <= 0 or self.max_num_seqs < 1:
            raise ConfigError(
                f"vllm.kv_cache_gib ({self.kv_cache_gib}), vllm.startup_timeout ({self.startup_timeout}) and "
                f"vllm.max_num_seqs ({self.max_num_seqs}) must be positive."
            )
        if self.request_timeout is not None and not self.request_timeout > 0:
            raise ConfigError(
                f"vllm.request_timeout must be positive, not {self.request_timeout}; or None to wait as long as the "
                "engine takes."
            )
        if self.importance_sampling_cap is not None and not self.importance_sampling_cap > 0:
            raise ConfigError(
                f"vllm.importance_sampling_cap must be positive, not "
                f"{self.importance_sampling_cap}; or None to turn the correction off."
            )
        self._check_mismatch_correction()

    def _check_mismatch_correction(self) -> None:
        mode, cap, low = self.importance_sampling_mode, self.importance_sampling_cap, self.importance_sampling_min
        IMPORTANCE_SAMPLING_MODES.check(mode, "model.vllm.importance_sampling_mode")
        if cap is None and (mode != "token_truncate" or low is not None):
            chosen = f"importance_sampling_mode {mode}" if low is None else f"importance_sampling_min {low}"
            raise ConfigError(
                f"model.vllm.{chosen} has no effect without model.vllm.importance_sampling_cap, which turns the "
                "correction on: set a cap (TRL's default is 3.0), or leave the mode and the minimum at their defaults."
            )
        if low is not None and not 0 < low < cap:
            raise ConfigError(
                f"model.vllm.importance_sampling_min ({low}) must be positive and less than "
                f"model.vllm.importance_sampling_cap ({cap}); or None for no lower bound."
            )
        threshold = self.off_policy_mask_threshold
        if threshold is not None and not threshold >= 0:
            raise ConfigError(
                f"model.vllm.off_policy_mask_threshold must be 0 or more (a mean KL), not {threshold}; or None to "
                "keep every completion's policy term."
            )


def check_option_groups(rewards: RewardConfig, loss: LossConfig, sampling: SamplingConfig | None = None) -> None:
    """Refuse the options of different groups that do not work together (each group checks its own when built).

    ``rewards.aggregation: normalize_then_sum`` is GDPO (arXiv 2601.05242) only with ``loss.scale_rewards: batch``:
    GDPO normalises each reward function's scores within the group, sums them, and normalises that sum over the
    batch. With ``group`` the sum would be normalised within each group once more, with ``none`` not scaled at all;
    neither is GDPO, and TRL's ``normalize_then_sum`` always normalises over the batch.

    ``loss.advantage_estimator: reinforce_pp`` gives a group of equal rewards advantages other than 0 (there is no
    group baseline), so ``sampling.dynamic_sampling``, which leaves such groups out as carrying no signal and makes up
    shortfalls with them as if their advantages were 0, would be wrong about both.

    Raises:
        ConfigError: such a combination, naming both options and the fix.
    """
    if rewards.aggregation == "normalize_then_sum" and loss.scale_rewards != "batch":
        scaled = "normalised within each group again" if loss.scale_rewards == "group" else "not scaled"
        raise ConfigError(
            f"model.rewards.aggregation normalize_then_sum (GDPO) needs model.loss.scale_rewards batch, not "
            f"{loss.scale_rewards}: GDPO normalises the summed rewards over the whole batch, and with "
            f"{loss.scale_rewards} the sum would be {scaled}. Set model.loss.scale_rewards: batch (or "
            "model.rewards.aggregation: sum_then_normalize for GRPO's own normalisation)."
        )
    if sampling is not None and sampling.dynamic_sampling and loss.advantage_estimator == "reinforce_pp":
        raise ConfigError(
            "model.sampling.dynamic_sampling leaves out groups of equal rewards as carrying no signal, but "
            "model.loss.advantage_estimator reinforce_pp has no group baseline and gives them advantages too. Use "
            "advantage_estimator: reinforce_pp_baseline (group mean first), or turn dynamic_sampling off."
        )


#: The module's grouped arguments and their types, by argument name.
GROUPS: dict[str, type] = {
    "rewards": RewardConfig,
    "sampling": SamplingConfig,
    "loss": LossConfig,
    "lora": LoRAConfig,
    "image": ImageConfig,
    "logging": LoggingConfig,
    "evaluation": EvalConfig,
    "vllm": VLLMConfig,
}


#: Option names of checkpoints written before the options were grouped: flat name -> (group, field).
FLAT_OPTION_NAMES: dict[str, tuple[str, str]] = {
    "reward_funcs": ("rewards", "funcs"),
    "reward_weights": ("rewards", "weights"),
    "reward_kwargs": ("rewards", "kwargs"),
    **{
        name: ("sampling", name)
        for name in (
            "num_generations",
            "max_completion_length",
            "min_completion_length",
            "temperature",
            "top_p",
            "top_k",
            "generation_batch_size",
        )
    },
    **{
        name: ("loss", name)
        for name in (
            "beta",
            "epsilon_low",
            "epsilon_high",
            "num_iterations",
            "scale_rewards",
            "loss_type",
            "micro_batch_size",
            "max_grad_norm",
        )
    },
    "lora_r": ("lora", "r"),
    "lora_alpha": ("lora", "alpha"),
    "lora_dropout": ("lora", "dropout"),
    "lora_target_modules": ("lora", "target_modules"),
    **{name: ("image", name) for name in ("crop_to_patches", "min_patches", "max_patches", "min_pixels", "max_pixels")},
    "log_completions_every_n_steps": ("logging", "completions_every_n_steps"),
    "num_completions_to_log": ("logging", "num_completions"),
    "eval_protocol": ("evaluation", "protocol"),
    "eval_metrics": ("evaluation", "metrics"),
    "predictions_file": ("evaluation", "predictions_file"),
}


def regrouped(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Saved hyperparameters with the flat option names of older checkpoints moved into their groups."""
    result = {key: value for key, value in hparams.items() if key not in FLAT_OPTION_NAMES}
    for key, value in hparams.items():
        if key in FLAT_OPTION_NAMES:
            group, name = FLAT_OPTION_NAMES[key]
            saved = result.get(group)
            result[group] = {**(asdict(saved) if is_dataclass(saved) else saved or {}), name: value}
    return result


def as_group(name: str, value: Any) -> Any:
    """An option group given as a mapping (saved hyperparameters, a Python caller) as its dataclass."""
    return GROUPS[name](**value) if isinstance(value, Mapping) else value


def plain_hyperparameters(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """``hparams`` with every group as a plain dict: what a checkpoint stores and the command line parses back."""
    return {key: asdict(value) if is_dataclass(value) else value for key, value in hparams.items()}


def grouped_arguments(hparams: Mapping[str, Any], accepted: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Saved hyperparameters (groups as dicts) as constructor arguments (groups as their dataclasses).

    Args:
        hparams: what a checkpoint saved.
        accepted: the constructor's argument names.

    Returns:
        The arguments, and the saved options (dotted names, e.g. ``sampling.old_option``) that this version does not
        know and left out.
    """
    hparams = regrouped(hparams)
    arguments = {key: value for key, value in hparams.items() if key in accepted}
    unknown = sorted(set(hparams) - set(accepted))
    for key, group in GROUPS.items():
        value = arguments.get(key)
        if isinstance(value, Mapping):
            known = {f.name for f in fields(group)}
            unknown += sorted(f"{key}.{name}" for name in set(value) - known)
            arguments[key] = group(**{name: option for name, option in value.items() if name in known})
    return arguments, unknown


__all__ = [
    "FLAT_OPTION_NAMES",
    "GROUPS",
    "EvalConfig",
    "ImageConfig",
    "LoRAConfig",
    "LoggingConfig",
    "LossConfig",
    "RewardConfig",
    "SamplingConfig",
    "VLLMConfig",
    "as_group",
    "check_option_groups",
    "grouped_arguments",
    "plain_hyperparameters",
    "regrouped",
]
