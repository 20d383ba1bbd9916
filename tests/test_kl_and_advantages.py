"""The KL estimators (``loss.kl_estimator``, ``loss.kl_in_reward``) and the advantage estimators
(``loss.advantage_estimator``) against float64 references written from their definitions, their gradients against
autograd of those references, the defaults against today's formulas bit for bit, and the config's refusals."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from grpo_lightning.advantages import ADVANTAGE_ESTIMATORS, compute_advantages
from grpo_lightning.algorithms import (
    KL_ESTIMATORS,
    compute_group_advantages,
    grpo_loss,
    kl_estimate,
    kl_k3,
    sequence_kl_penalty,
)
from grpo_lightning.cli import main
from grpo_lightning.config import LossConfig, RewardConfig, SamplingConfig, VLLMConfig, check_option_groups
from grpo_lightning.errors import ConfigError
from grpo_lightning.stages.update import PolicyUpdate
from tests.helpers import demo_model_options
from tests.tolerances import F32_RTOL

F64 = {"rtol": 1e-12, "atol": 1e-12}
NAN = math.nan

# ----------------------------------------------------------------------------------------------------------------
# KL estimators: each one's value and gradient, written from Schulman's definitions (d = log pi_theta - log pi_ref)
# ----------------------------------------------------------------------------------------------------------------


def _kl_value(name: str, logp: float, ref: float) -> float:
    d = logp - ref
    return {
        "k1": d,
        "k2": 0.5 * d * d,
        "k3": math.exp(-d) + d - 1,
        "abs": abs(d),
        "k3+": math.exp(-d) + d - 1,  # the value of k3
    }[name]


def _kl_gradient(name: str, logp: float, ref: float) -> float:
    """d estimate / d logp, by hand."""
    d = logp - ref
    return {
        "k1": 1.0,
        "k2": d,
        "k3": 1 - math.exp(-d),
        "abs": math.copysign(1.0, d),
        "k3+": d,  # the gradient of k2 (straight-through)
    }[name]


def _log_probs(seed: int, shape=(4, 6)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logps = -3 * torch.rand(*shape, generator=gen, dtype=torch.float64)
    ref = logps + torch.randn(*shape, generator=gen, dtype=torch.float64)
    return logps, ref


def test_the_registry_offers_the_five_estimators_with_k3_first():
    assert KL_ESTIMATORS.names() == ("k3", "k1", "k2", "abs", "k3+")


@pytest.mark.parametrize("name", ["k1", "k2", "k3", "abs", "k3+"])
def test_each_kl_estimator_value_and_gradient_match_the_float64_definition(name):
    logps, ref = _log_probs(3)
    logps.requires_grad_(True)
    value = kl_estimate(logps, ref, name)
    torch.testing.assert_close(value, _elementwise(_kl_value, name, logps, ref), **F64)
    (gradient,) = torch.autograd.grad(value.sum(), logps)
    torch.testing.assert_close(gradient, _elementwise(_kl_gradient, name, logps, ref), **F64)


def _elementwise(formula, name: str, logps: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    rows = zip(logps.tolist(), ref.tolist(), strict=True)
    return torch.tensor([[formula(name, lp, r) for lp, r in zip(*row, strict=True)] for row in rows], dtype=ref.dtype)


def test_the_straight_through_gradient_is_autograd_of_k2_and_the_value_k3s():
    logps, ref = _log_probs(5)
    k3_plus = logps.clone().requires_grad_(True)
    k2 = logps.clone().requires_grad_(True)
    (grad_plus,) = torch.autograd.grad(kl_estimate(k3_plus, ref, "k3+").sum(), k3_plus)
    (grad_k2,) = torch.autograd.grad((0.5 * (k2 - ref).square()).sum(), k2)
    assert torch.equal(grad_plus, grad_k2)
    assert torch.equal(kl_estimate(logps, ref, "k3+"), kl_k3(logps, ref))


def test_k3_is_todays_kl_k3_bit_for_bit_including_its_clamp_in_float32():
    logps = -3 * torch.rand(32, 32, generator=torch.Generator().manual_seed(7))
    ref = logps + 1e-6 * torch.randn(32, 32, generator=torch.Generator().manual_seed(8))
    assert torch.equal(kl_estimate(logps, ref), kl_k3(logps, ref))
    assert (kl_estimate(logps, ref, "k3") >= 0).all()


def test_kl_estimators_are_zero_where_the_policies_agree_and_refuse_other_shapes():
    logps, _ = _log_probs(9)
    for name in KL_ESTIMATORS:
        assert torch.equal(kl_estimate(logps, logps, name), torch.zeros_like(logps))
        with pytest.raises(ValueError, match="same shape"):
            kl_estimate(torch.zeros(2, 3), torch.zeros(3, 2), name)


@pytest.mark.parametrize("name", ["k1", "k2", "k3", "abs"])
def test_the_sequence_penalty_sums_the_estimate_over_each_completions_tokens_without_gradient(name):
    logps, ref = _log_probs(11)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [0] * 6, [1, 0, 1, 0, 1, 0]])
    logps.requires_grad_(True)
    penalty = sequence_kl_penalty(logps, ref, mask, name)
    expected = [
        sum(_kl_value(name, lp, r) for lp, r, m in zip(*rows, strict=True) if m)
        for rows in zip(logps.tolist(), ref.tolist(), mask.tolist(), strict=True)
    ]
    torch.testing.assert_close(penalty, torch.tensor(expected, dtype=torch.float64), **F64)
    assert not penalty.requires_grad


# ----------------------------------------------------------------------------------------------------------------
# grpo_loss: the estimator in the loss, or the KL in the reward and none in the loss
# ----------------------------------------------------------------------------------------------------------------


def _loss_inputs(seed: int):
    logps, ref = _log_probs(seed)
    advantages = torch.tensor([1.0, -0.5, 0.25, 0.0], dtype=torch.float64)
    mask = torch.ones_like(logps)
    mask[1, 4:] = 0
    return logps, ref, advantages, mask


def test_the_default_loss_is_todays_k3_loss_bit_for_bit():
    logps, ref, advantages, mask = _loss_inputs(13)
    loss, stats = grpo_loss(logps, None, advantages, mask, LossConfig(), ref_logps=ref)
    explicit, _ = grpo_loss(logps, None, advantages, mask, LossConfig(kl_estimator="k3"), ref_logps=ref)
    assert torch.equal(loss, explicit)
    pg, _ = grpo_loss(logps, None, advantages, mask, LossConfig(beta=0.0))
    per_token_kl = kl_k3(logps, ref)
    sequence_means = (torch.where(mask != 0, per_token_kl, 0.0).sum(1) / mask.sum(1)).mean()
    torch.testing.assert_close(loss, pg + 0.04 * sequence_means, **F64)
    torch.testing.assert_close(stats["kl"], (per_token_kl * mask).sum() / mask.sum(), **F64)


@pytest.mark.parametrize("name", ["k1", "k2", "abs", "k3+"])
def test_the_loss_adds_beta_times_the_chosen_estimate(name):
    logps, ref, advantages, mask = _loss_inputs(17)
    config = LossConfig(beta=0.1, kl_estimator=name)
    loss, stats = grpo_loss(logps, None, advantages, mask, config, ref_logps=ref)
    pg, _ = grpo_loss(logps, None, advantages, mask, LossConfig(beta=0.0))
    per_token_kl = kl_estimate(logps, ref, name)
    sequence_means = (torch.where(mask != 0, per_token_kl, 0.0).sum(1) / mask.sum(1)).mean()
    torch.testing.assert_close(loss, pg + 0.1 * sequence_means, **F64)
    torch.testing.assert_close(stats["kl"], (per_token_kl * mask).sum() / mask.sum(), **F64)


def test_with_the_kl_in_the_reward_the_loss_has_no_kl_term_and_still_logs_the_kl():
    logps, ref, advantages, mask = _loss_inputs(19)
    config = LossConfig(beta=0.1, kl_in_reward=True)
    logps.requires_grad_(True)
    loss, stats = grpo_loss(logps, None, advantages, mask, config, ref_logps=ref)
    pg, _ = grpo_loss(logps, None, advantages, mask, LossConfig(beta=0.0))
    assert torch.equal(loss, pg)
    torch.testing.assert_close(stats["kl"], (kl_k3(logps, ref) * mask).sum() / mask.sum(), **F64)


def _corrected_kl_loss_float64(logps, old, ref, advantages, mask, beta, level, estimator):
    """The loss of ``loss.kl_bias_correction``, a loop over the tokens from the definition (DeepSeek-V3.2's unbiased
    KL: the estimate times pi_theta / pi_old) with the plain policy gradient of ``ppo`` at ratios near 1 left to
    ``grpo_loss`` with ``beta=0``: the mean over sequences of each one's token mean of ``beta * r * k``, ``r`` the
    token's ratio (``token``) or the sequence's geometric-mean ratio (``sequence``)."""
    total = logps.new_zeros(())
    for i in range(logps.shape[0]):
        kept = [t for t in range(logps.shape[1]) if mask[i, t]]
        sequence_log_ratio = sum(logps[i, t] - old[i, t] for t in kept) / len(kept)
        row = logps.new_zeros(())
        for t in kept:
            d = logps[i, t] - ref[i, t]
            k = {"k3": torch.exp(-d) + d - 1, "k1": d, "k2": 0.5 * d * d}[estimator]
            ratio = torch.exp(logps[i, t] - old[i, t] if level == "token" else sequence_log_ratio)
            row = row + beta * ratio * k
        total = total + row / len(kept)
    return total / logps.shape[0]


@pytest.mark.parametrize("estimator", ["k3", "k1", "k2"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("moved", [False, True], ids=["one_step", "policy_moved"])
def test_the_bias_corrected_kl_matches_the_float64_definition_in_value_and_gradient(estimator, level, moved):
    logps, ref, advantages, mask = _loss_inputs(23)
    gen = torch.Generator().manual_seed(29)
    old = logps + 0.3 * torch.randn(logps.shape, generator=gen, dtype=torch.float64) if moved else logps.clone()
    options = dict(beta=0.1, kl_estimator=estimator, importance_sampling_level=level)
    config = LossConfig(kl_bias_correction=True, **options)
    policy = logps.clone().requires_grad_(True)
    loss, stats = grpo_loss(policy, old if moved else None, advantages, mask, config, ref_logps=ref)
    (grad,) = torch.autograd.grad(loss, policy)

    reference_policy = logps.clone().requires_grad_(True)
    pg, _ = grpo_loss(reference_policy, old if moved else None, advantages, mask, LossConfig(**options | {"beta": 0}))
    reference = pg + _corrected_kl_loss_float64(reference_policy, old, ref, advantages, mask, 0.1, level, estimator)
    (reference_grad,) = torch.autograd.grad(reference, reference_policy)
    torch.testing.assert_close(loss, reference, **F64)
    torch.testing.assert_close(grad, reference_grad, **F64)
    # the logged KL is the corrected estimate, a token mean
    log_ratio = logps - old if level == "token" else ((logps - old) * mask).sum(1, keepdim=True) / mask.sum(1, True)
    corrected = torch.exp(log_ratio) * kl_estimate(logps, ref, estimator)
    torch.testing.assert_close(stats["kl"], (corrected * mask).sum() / mask.sum(), **F64)


def test_at_one_step_the_correction_keeps_the_value_and_adds_k_times_grad_log_pi_to_the_gradient():
    """Ratio 1: the loss is the uncorrected one to the bit; d(r k)/d logp = k + dk/dlogp per token (token means)."""
    logps, ref, advantages, mask = _loss_inputs(31)
    policy = logps.clone().requires_grad_(True)
    plain = LossConfig(beta=0.1)
    corrected, _ = grpo_loss(
        policy, None, advantages, mask, LossConfig(beta=0.1, kl_bias_correction=True), ref_logps=ref
    )
    uncorrected, _ = grpo_loss(policy, None, advantages, mask, plain, ref_logps=ref)
    assert torch.equal(corrected, uncorrected)
    (grad,) = torch.autograd.grad(corrected, policy)
    (plain_grad,) = torch.autograd.grad(uncorrected, policy)
    weight = mask / mask.sum(1, keepdim=True) / mask.shape[0]  # d loss / d per-token term under loss_type grpo
    torch.testing.assert_close(grad - plain_grad, 0.1 * weight * kl_k3(logps, ref), **F64)


@pytest.mark.parametrize(("num_iterations", "name"), [(2, "k3"), (2, "k1"), (2, "k2")])
def test_the_update_takes_beta_times_each_completions_kl_from_its_reward(num_iterations, name):
    """With the sampling policy's log-probs at hand (``num_iterations > 1``), the reward minus beta times the summed
    estimate over every completion token; NaN (no reward) stays NaN."""
    old, ref = _log_probs(23)
    mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4, [1] * 5 + [0], [1] * 6])
    rewards = torch.tensor([1.0, -2.0, NAN, 0.5], dtype=torch.float64)
    config = LossConfig(beta=0.05, kl_in_reward=True, kl_estimator=name, num_iterations=num_iterations)
    update = PolicyUpdate(SimpleNamespace(), config, SamplingConfig(num_generations=2), VLLMConfig())
    got = update.rewards_with_kl(rewards, SimpleNamespace(completion_mask=mask), ref, old)
    expected = [
        reward - 0.05 * sum(_kl_value(name, lp, r) for lp, r, m in zip(*rows, strict=True) if m)
        for reward, *rows in zip(rewards.tolist(), old.tolist(), ref.tolist(), mask.tolist(), strict=True)
    ]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), equal_nan=True, **F64)
    off = PolicyUpdate(SimpleNamespace(), LossConfig(), SamplingConfig(num_generations=2), VLLMConfig())
    assert off.rewards_with_kl(rewards, SimpleNamespace(completion_mask=mask), ref, old) is rewards


# ----------------------------------------------------------------------------------------------------------------
# Advantage estimators: float64 loops over groups, from each paper's (and verl's / TRL's) definition
# ----------------------------------------------------------------------------------------------------------------


def _mean(xs):
    return sum(xs) / len(xs)


def _std(xs):  # unbiased; 0 for fewer than two
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _groups(rewards, g):
    return [rewards[i : i + g] for i in range(0, len(rewards), g)]


def _ref_rloo(rewards, g, scale, eps):
    out = []
    for group in _groups(rewards, g):
        given = [r for r in group if not math.isnan(r)]
        for r in group:
            if math.isnan(r) or len(given) < 2:
                out.append(NAN if math.isnan(r) else 0.0)
            else:
                out.append(r - (sum(given) - r) / (len(given) - 1))
    if scale == "batch":
        given = [a for a, r in zip(out, rewards, strict=True) if not math.isnan(r)]
        m, s = _mean(given), _std(given)
        out = [(a - m) / (s + eps) if not math.isnan(a) else a for a in out]
    return [0.0 if math.isnan(a) else a for a in out]


def _ref_whiten(values, eps):
    given = [v for v in values if not math.isnan(v)]
    m, var = _mean(given), _std(given) ** 2
    if len(set(given)) == 1:
        return [0.0] * len(values)
    return [0.0 if math.isnan(v) else (v - m) / math.sqrt(var + eps**2) for v in values]


def _ref_reinforce_pp(rewards, g, scale, eps):
    return _ref_whiten(rewards, eps)


def _ref_reinforce_pp_baseline(rewards, g, scale, eps):
    centred = []
    for group in _groups(rewards, g):
        given = [r for r in group if not math.isnan(r)]
        baseline = _mean(given) if len(given) > 1 else 0.0  # verl: a lone response has no baseline
        centred += [r - baseline for r in group]
    return _ref_whiten(centred, eps)


def _ref_grpo_passk(rewards, g, scale, eps):
    out = []
    for group in _groups(rewards, g):
        given = sorted([r for r in group if not math.isnan(r)], reverse=True)
        advantages = [0.0] * len(group)
        if len(given) >= 2:
            gap = given[0] - given[1]
            if scale == "group":
                gap /= _std(given) + eps
            advantages[group.index(given[0])] = gap  # the first completion with the best reward
        out += advantages
    return out


def _ref_grpo(rewards, g, scale, eps):
    return compute_group_advantages(torch.tensor(rewards, dtype=torch.float64), g, scale, eps).tolist()


REFERENCES = {
    "grpo": _ref_grpo,
    "rloo": _ref_rloo,
    "reinforce_pp": _ref_reinforce_pp,
    "reinforce_pp_baseline": _ref_reinforce_pp_baseline,
    "grpo_passk": _ref_grpo_passk,
}
CASES = {
    "spread": ([1.0, 0.0, 0.5, 0.25, 3.0, 2.0, 2.0, 7.0], 4),
    "equal_groups": ([1.0, 1.0, 1.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0], 3),
    "g2": ([1.0, 0.0, 0.0, 0.0, 2.0, 5.0, -1.0, 3.0], 2),
    "negative": ([-3.0, -1.0, -2.0, -2.0, -0.5, -7.0], 3),
    "no_reward": ([1.0, NAN, 0.0, 2.0, NAN, NAN, 0.5, 1.5], 4),
    "tie_at_top": ([2.0, 2.0, 0.0, 1.0, 1.0, 0.0], 3),
}
ESTIMATOR_SCALINGS = [(name, scale) for name in ADVANTAGE_ESTIMATORS for scale in ADVANTAGE_ESTIMATORS[name].scalings]


def test_the_registry_lists_the_estimators_and_the_scalings_each_accepts():
    assert {name: ADVANTAGE_ESTIMATORS[name].scalings for name in ADVANTAGE_ESTIMATORS} == {
        "grpo": ("group", "batch", "none"),
        "rloo": ("none", "batch"),
        "reinforce_pp": ("batch",),
        "reinforce_pp_baseline": ("batch",),
        "grpo_passk": ("group", "none"),
    }


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("estimator", "scale"), ESTIMATOR_SCALINGS)
def test_each_estimator_matches_its_float64_definition(estimator, scale, case):
    rewards, g = CASES[case]
    got = compute_advantages(torch.tensor(rewards, dtype=torch.float64), g, estimator, scale)
    expected = torch.tensor(REFERENCES[estimator](rewards, g, scale, 1e-4), dtype=torch.float64)
    torch.testing.assert_close(got, expected, **F64)
    assert got.dtype == torch.float64 and not got.isnan().any()


@pytest.mark.parametrize(("estimator", "scale"), ESTIMATOR_SCALINGS)
def test_each_estimator_in_float32_is_the_float64_one_to_a_few_ulps(estimator, scale):
    rewards, g = CASES["spread"]
    got = compute_advantages(torch.tensor(rewards), g, estimator, scale)
    expected = compute_advantages(torch.tensor(rewards, dtype=torch.float64), g, estimator, scale)
    torch.testing.assert_close(got, expected.float(), rtol=F32_RTOL, atol=1e-6)


@pytest.mark.parametrize(("estimator", "scale"), ESTIMATOR_SCALINGS)
def test_groups_of_equal_rewards_get_exactly_zero_where_the_estimator_has_a_group_baseline(estimator, scale):
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    got = compute_advantages(rewards, 3, estimator, scale)
    if estimator == "reinforce_pp":  # no group baseline: the batch's mean and std only
        assert not torch.equal(got, torch.zeros(6))
    else:
        assert torch.equal(got, torch.zeros(6))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_is_compute_group_advantages_bit_for_bit(scale):
    rewards = torch.randn(24, generator=torch.Generator().manual_seed(29))
    assert torch.equal(compute_advantages(rewards, 4, "grpo", scale), compute_group_advantages(rewards, 4, scale))


def test_rloo_is_grpo_without_scaling_times_g_over_g_minus_one():
    """A_i = r_i - (S - r_i)/(G-1) = G/(G-1) (r_i - mean): the identity of the RLOO paper's eq. 6."""
    rewards = torch.randn(12, generator=torch.Generator().manual_seed(31), dtype=torch.float64)
    torch.testing.assert_close(
        compute_advantages(rewards, 4, "rloo", "none"), compute_group_advantages(rewards, 4, "none") * 4 / 3, **F64
    )


def test_an_estimator_refuses_a_scaling_it_is_not_defined_with():
    with pytest.raises(ValueError, match="takes scale_rewards batch"):
        compute_advantages(torch.zeros(4), 2, "reinforce_pp", "group")


# ----------------------------------------------------------------------------------------------------------------
# The config: defaults, refusals, --help and YAML
# ----------------------------------------------------------------------------------------------------------------


def test_the_defaults_are_todays_objective():
    config = LossConfig()
    assert (config.kl_estimator, config.kl_in_reward, config.advantage_estimator) == ("k3", False, "grpo")
    assert config.kl_bias_correction is False


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(kl_in_reward=True, beta=0.0), "loss.kl_in_reward is set but loss.beta is 0"),
        (dict(kl_in_reward=True, kl_estimator="k3+"), "differs from k3 only in its gradient"),
        (dict(kl_estimator="k4"), "Unknown model.loss.kl_estimator 'k4'"),
        (dict(kl_bias_correction=True, beta=0.0), "loss.beta is 0: there is no KL term"),
        (dict(kl_bias_correction=True, kl_in_reward=True), "a reward of the sampling policy, whose ratio is 1"),
        (dict(advantage_estimator="gae"), "Unknown model.loss.advantage_estimator 'gae'"),
        (dict(advantage_estimator="rloo"), "rloo is defined with model.loss.scale_rewards none or batch"),
        (dict(advantage_estimator="reinforce_pp"), "Set model.loss.scale_rewards: batch"),
        (dict(advantage_estimator="reinforce_pp_baseline", scale_rewards="none"), "scale_rewards batch, not none"),
        (dict(advantage_estimator="grpo_passk", scale_rewards="batch"), "scale_rewards group or none, not batch"),
    ],
)
def test_the_config_refuses_meaningless_combinations(options, message):
    with pytest.raises(ConfigError, match=message):
        LossConfig(**options)


def test_reinforce_pp_without_a_baseline_refuses_dynamic_sampling_and_the_baseline_variant_takes_it():
    loss = LossConfig(advantage_estimator="reinforce_pp", scale_rewards="batch")
    with pytest.raises(ConfigError, match="reinforce_pp has no group baseline"):
        check_option_groups(RewardConfig(), loss, SamplingConfig(dynamic_sampling=True))
    check_option_groups(RewardConfig(), loss, SamplingConfig())
    baseline = LossConfig(advantage_estimator="reinforce_pp_baseline", scale_rewards="batch")
    check_option_groups(RewardConfig(), baseline, SamplingConfig(dynamic_sampling=True))


@pytest.mark.parametrize("estimator", ["rloo", "reinforce_pp", "reinforce_pp_baseline"])
def test_gdpo_composes_with_the_estimators_that_normalise_over_the_batch(estimator):
    check_option_groups(
        RewardConfig(aggregation="normalize_then_sum"),
        LossConfig(advantage_estimator=estimator, scale_rewards="batch"),
        SamplingConfig(),
    )


def test_fit_help_lists_the_new_loss_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("kl_estimator", "kl_in_reward", "kl_bias_correction", "advantage_estimator"):
        assert f"--model.loss.{option}" in out
    assert "straight-through" in out and "use_bias_correction_kl" in out


def test_the_options_are_read_from_yaml(tmp_path, capsys):
    options = {"beta": 0.02, "kl_estimator": "k2", "kl_in_reward": True}
    options |= {"advantage_estimator": "rloo", "scale_rewards": "none"}
    loss = demo_model_options(tmp_path, capsys, {"loss": options})["loss"]
    assert (loss["kl_estimator"], loss["kl_in_reward"], loss["advantage_estimator"]) == ("k2", True, "rloo")
    corrected = demo_model_options(tmp_path, capsys, {"loss": {"beta": 0.02, "kl_bias_correction": True}})["loss"]
    assert corrected["kl_bias_correction"] is True
