"""The policy-loss options (``loss.policy_loss``: CISPO, SAPO, GMPO; ``loss.dual_clip``) against float64 loops written
from their definitions, in value, gradient and statistics; over micro-batches; off by default; on the command line,
in a YAML file and in a training step."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from grpo_lightning.algorithms import POLICY_LOSSES, BatchTotals, aggregate_loss, clipped_surrogate, grpo_loss
from grpo_lightning.cli import main
from grpo_lightning.config import LossConfig
from grpo_lightning.errors import ConfigError
from scripts.tb_scalars import read_scalars
from tests.helpers import ROOT, demo_model_options, fit, make_module
from tests.tolerances import F32_RTOL

F64 = {"rtol": 1e-12, "atol": 1e-12}
LEVELS = ["token", "sequence", "sequence_token"]
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]
#: Each policy loss with its options at values that are not their defaults, and the statistic it logs.
POLICIES = {
    "dual_clip": ({"policy_loss": "ppo", "dual_clip": 1.6}, "clip_ratio/dual"),
    "cispo": ({"policy_loss": "cispo", "cispo_max_weight": 1.3}, "clip_ratio/cispo"),
    "sapo": ({"policy_loss": "sapo", "sapo_temperature_pos": 1.5, "sapo_temperature_neg": 2.5}, "sapo/gate"),
    "gmpo": ({"policy_loss": "gmpo", "epsilon_low": 0.3, "epsilon_high": 0.4}, "clip_ratio/gmpo"),
}


def _combinations():
    """(policy, loss_type, level) that the config accepts: GMPO only at the token level with ``grpo``."""
    for policy in POLICIES:
        for loss_type in LOSS_TYPES:
            for level in LEVELS:
                if policy != "gmpo" or (loss_type == "grpo" and level == "token"):
                    yield policy, loss_type, level


COMBINATIONS = list(_combinations())


def _loss(logps, old_logps, advantages, mask, *, totals=BatchTotals(), ref_logps=None, **options):  # noqa: B008
    config = LossConfig(beta=0.0 if ref_logps is None else 0.04, **options)
    return grpo_loss(logps, old_logps, advantages, mask, config, ref_logps=ref_logps, totals=totals)


# ----------------------------------------------------------------------------------------------------------------
# The float64 reference: Python floats and the math module, from each definition
# ----------------------------------------------------------------------------------------------------------------


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _ref_token_term(policy, options, r, a, logp):
    """(loss, d loss / d log r through the ratio, d loss / d logp directly, statistic) of one token's policy term."""
    if policy == "dual_clip":
        eps_low, eps_high, c = 0.2, 0.2, options["dual_clip"]
        clipped = min(max(r, 1 - eps_low), 1 + eps_high)
        surrogate = max(-r * a, -clipped * a)
        gradient_kept = not ((r < 1 - eps_low and a < 0) or (r > 1 + eps_high and a > 0))
        dual = a < 0 and surrogate > -c * a
        loss = min(surrogate, -c * a) if a < 0 else surrogate
        return loss, (-a * r if gradient_kept and not dual else 0.0), 0.0, float(dual)
    if policy == "cispo":
        cap = options["cispo_max_weight"]
        weight = min(r, cap)
        return -weight * a * logp, 0.0, -weight * a, float(r > cap)
    if policy == "sapo":
        tau = options["sapo_temperature_pos"] if a > 0 else options["sapo_temperature_neg"]
        s = _sigmoid(tau * (r - 1))
        return -(4 / tau) * s * a, -a * 4 * s * (1 - s) * r, 0.0, 4 * s * (1 - s)
    raise AssertionError(policy)


def _ref_gmpo(options, lp, olp, a, mask_row):
    """(sequence loss, its gradient per token, clipped flag per token) of GMPO: ``-A exp(mean pessimistic clip)``."""
    eps_low, eps_high = options["epsilon_low"], options["epsilon_high"]
    tokens = [t for t, m in enumerate(mask_row) if m]
    logs, active = {}, {}
    for t in tokens:
        x = lp[t] - olp[t]
        clamped = min(max(x, -eps_low), eps_high)
        logs[t] = min(x, clamped) if a > 0 else max(x, clamped) if a < 0 else 0.0
        active[t] = (a > 0 and x > eps_high) or (a < 0 and x < -eps_low)
    ratio = math.exp(sum(logs.values()) / max(len(tokens), 1))
    loss = -a * ratio
    grad = [0.0] * len(lp)
    for t in tokens:
        if a != 0 and not active[t]:
            grad[t] = -a * ratio / len(tokens)
    return loss, grad, [bool(active.get(t, False)) for t in range(len(lp))]


def _ref(policy, options, loss_type, level, lp, olp, adv, mask, max_len=None, num_sequences=None, num_tokens=None):
    """Loss, d loss / d logp and the statistic's token mean, in float64 loops (the weights of each aggregation as in
    ``tests/test_algorithms.py``)."""
    batch, length = len(lp), len(lp[0])
    counts = [sum(1 for m in row if m) for row in mask]
    num_sequences = batch if num_sequences is None else num_sequences
    num_tokens = sum(counts) if num_tokens is None else num_tokens
    weight = {
        "grpo": lambda i: 1.0 / (max(counts[i], 1) * num_sequences),
        "bnpo": lambda i: 1.0 / max(num_tokens, 1),
        "dapo": lambda i: 1.0 / max(num_tokens, 1),
        "dr_grpo": lambda i: 1.0 / (num_sequences * max_len),
    }[loss_type]
    loss, grad, stat = 0.0, [[0.0] * length for _ in range(batch)], 0.0
    for i in range(batch):
        a, w = adv[i], weight(i)
        if policy == "gmpo":
            seq_loss, seq_grad, clipped = _ref_gmpo(options, lp[i], olp[i], a, mask[i])
            loss += w * counts[i] * seq_loss
            grad[i] = [w * counts[i] * g for g in seq_grad]
            stat += sum(1.0 for t in range(length) if mask[i][t] and clipped[t])
            continue
        log_s = sum(lp[i][t] - olp[i][t] for t in range(length) if mask[i][t]) / max(counts[i], 1)
        for t in range(length):
            if not mask[i][t]:
                continue
            r = math.exp(lp[i][t] - olp[i][t]) if level == "token" else math.exp(log_s)
            value, through_ratio, direct, observed = _ref_token_term(policy, options, r, a, lp[i][t])
            loss += w * value
            stat += observed
            grad[i][t] += w * direct
            if level == "sequence":  # log s is the mean of the sequence's log ratios
                for u in range(length):
                    if mask[i][u]:
                        grad[i][u] += w * through_ratio / counts[i]
            else:  # token: its own log ratio; sequence_token: its own log-prob plus a constant
                grad[i][t] += w * through_ratio
    return loss, grad, stat / max(sum(counts), 1)


def _inputs(dtype=torch.float64):
    """8 sequences whose log ratios leave every clip range on both sides (up to +-0.9 per token), both advantage signs,
    a zero advantage (row 5) and a row with no token (row 0)."""
    gen = torch.Generator().manual_seed(5)
    batch, length = 8, 7
    logps = -3 * torch.rand(batch, length, generator=gen, dtype=dtype)
    shift = torch.tensor([0.0, 0.55, -0.5, 0.45, -0.45, 0.3, 0.6, -0.6], dtype=dtype)
    old_logps = logps - shift[:, None] + 0.3 * torch.randn(batch, length, generator=gen, dtype=dtype)
    advantages = torch.tensor([0.7, -1.0, 0.8, 1.2, -0.6, 0.0, -1.5, 0.9], dtype=dtype)
    lengths = torch.tensor([0, 7, 3, 5, 7, 4, 6, 2])
    mask = (torch.arange(length) < lengths[:, None]).long()
    return logps, old_logps, advantages, mask


def _check_against_reference(policy, loss_type, level, logps, old_logps, advantages, mask):
    options, stat = POLICIES[policy]
    inputs = logps.clone().requires_grad_(True)
    loss, stats = _loss(inputs, old_logps, advantages, mask, loss_type=loss_type, importance_sampling_level=level,
                        totals=BatchTotals(max_completion_length=mask.shape[1]), **options)  # fmt: skip
    (grad,) = torch.autograd.grad(loss, inputs)
    lists = [t.tolist() for t in (logps, old_logps, advantages, mask)]
    expected_loss, expected_grad, expected_stat = _ref(policy, options, loss_type, level, *lists, max_len=mask.shape[1])
    torch.testing.assert_close(loss, torch.tensor(expected_loss, dtype=torch.float64), **F64)
    torch.testing.assert_close(grad, torch.tensor(expected_grad, dtype=torch.float64), **F64)
    torch.testing.assert_close(stats[stat], torch.tensor(expected_stat, dtype=torch.float64), **F64)
    return stats, expected_stat


@pytest.mark.parametrize(("policy", "loss_type", "level"), COMBINATIONS)
def test_each_policy_loss_matches_its_float64_definition_in_value_gradient_and_statistic(policy, loss_type, level):
    logps, old_logps, advantages, mask = _inputs()
    stats, expected_stat = _check_against_reference(policy, loss_type, level, logps, old_logps, advantages, mask)
    _, stat = POLICIES[policy]
    assert stat in stats and not {"clip_low", "clip_high"} & set(stats) or policy == "dual_clip"
    if stat != "sapo/gate":
        assert expected_stat > 0, "the inputs must make the clip bind"


#: Edge rows: (log ratio of every token, advantage, tokens kept of 4).
EDGES = {
    "zero_advantage": ([0.9, -0.9, 0.1, 0.0], 0.0, 4),
    "all_masked": ([3.0, -3.0, 0.5, 0.2], 1.0, 0),
    "far_above_positive": ([3.0, 2.5, 4.0, 3.0], 1.3, 4),
    "far_above_negative": ([3.0, 2.5, 4.0, 3.0], -1.3, 3),
    "far_below_positive": ([-3.0, -2.5, -4.0, -3.0], 0.8, 4),
    "far_below_negative": ([-3.0, -2.5, -4.0, -3.0], -0.8, 2),
    "inside_positive": ([0.01, -0.02, 0.03, 0.0], 0.5, 4),
    "inside_negative": ([0.01, -0.02, 0.03, 0.0], -0.5, 4),
}


@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("policy", POLICIES)
def test_edge_rows_match_the_definition(policy, edge):
    """One edge row beside an ordinary one, so that the batch counts are not the edge's alone."""
    log_ratio, advantage, kept = EDGES[edge]
    logps = torch.tensor([[-1.0, -2.0, -0.5, -1.5], [-0.7, -1.1, -2.2, -0.3]], dtype=torch.float64)
    old_logps = logps - torch.tensor([log_ratio, [0.1, -0.1, 0.05, 0.0]], dtype=torch.float64)
    advantages = torch.tensor([advantage, 0.4], dtype=torch.float64)
    mask = torch.tensor([[1] * kept + [0] * (4 - kept), [1, 1, 1, 1]])
    for loss_type in ("grpo", "dapo"):
        if policy == "gmpo" and loss_type != "grpo":
            continue
        _check_against_reference(policy, loss_type, "token", logps, old_logps, advantages, mask)
    inputs = logps.clone().requires_grad_(True)
    loss, _ = _loss(inputs, old_logps, advantages, mask, **POLICIES[policy][0])
    (grad,) = torch.autograd.grad(loss, inputs)
    if advantage == 0 or kept == 0:
        assert torch.equal(grad[0], torch.zeros(4, dtype=torch.float64)), "the row moves nothing"
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_hand_computed_values():
    """One token each, ratio e^0.5 = 1.6487 (positive advantage 2) or e^-0.5 (negative advantage -2)."""
    up, down = math.exp(0.5), math.exp(-0.5)
    logps = torch.tensor([[-1.0], [-1.0]], dtype=torch.float64)
    old_logps = logps - torch.tensor([[0.5], [-0.5]], dtype=torch.float64)
    advantages = torch.tensor([2.0, -2.0], dtype=torch.float64)
    mask = torch.ones(2, 1)

    def per_token(**options):
        loss, stats = _loss(logps, old_logps, advantages, mask, **{"loss_type": "bnpo", **options})
        return 2 * loss.item(), stats  # two sequences of one token: twice the loss is the sum of the two terms

    # CISPO, cap 1.5: -min(r, 1.5) * A * logp, the first capped
    total, stats = per_token(policy_loss="cispo", cispo_max_weight=1.5)
    assert total == pytest.approx(-1.5 * 2 * -1.0 + -down * -2 * -1.0, rel=1e-14) and stats["clip_ratio/cispo"] == 0.5
    # SAPO: -(4 / tau) sigmoid(tau (r - 1)) A, tau 1 for A > 0, 1.05 otherwise
    total, _ = per_token(policy_loss="sapo")
    expected = -4 * _sigmoid(up - 1) * 2 + (4 / 1.05) * _sigmoid(1.05 * (down - 1)) * 2
    assert total == pytest.approx(expected, rel=1e-14)
    # GMPO, log range (-0.4, 0.4): -A exp(clip(log r)) with one token, both clipped: -2 e^0.4 + 2 e^-0.4
    total, stats = per_token(policy_loss="gmpo", epsilon_low=0.4, epsilon_high=0.4, loss_type="grpo")
    assert total == pytest.approx(-2 * math.exp(0.4) + 2 * math.exp(-0.4), rel=1e-14)
    assert stats["clip_ratio/gmpo"] == 1.0
    # dual clip c = 1.2 on the negative row at ratio e^0.5 > c
    old_logps_dual = logps - torch.tensor([[0.5], [0.5]], dtype=torch.float64)
    loss, stats = _loss(logps, old_logps_dual, advantages, mask, loss_type="bnpo", dual_clip=1.2, epsilon_low=0.2)
    assert 2 * loss.item() == pytest.approx(-1.2 * 2 + 1.2 * 2, abs=1e-14)  # clipped to 1.2 above, bounded at 1.2 * 2
    assert stats["clip_ratio/dual"] == 0.5


def test_gmpo_hand_computed():
    logps = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    old_logps = logps - torch.tensor([[0.8, -0.2]], dtype=torch.float64)
    loss, stats = _loss(logps, old_logps, torch.tensor([2.0], dtype=torch.float64), torch.ones(1, 2),
                        policy_loss="gmpo", epsilon_low=0.4, epsilon_high=0.4)  # fmt: skip
    # log ratios 0.8 (capped at 0.4 for A > 0) and -0.2: -2 * exp((0.4 - 0.2) / 2)
    assert loss.item() == pytest.approx(-2 * math.exp(0.1), rel=1e-14) and stats["clip_ratio/gmpo"] == 0.5


# ----------------------------------------------------------------------------------------------------------------
# Micro-batches, num_iterations > 1, off by default
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "loss_type", "level"), COMBINATIONS)
@pytest.mark.parametrize("num_iterations_gt_1", [False, True], ids=["ratio_1", "old_logps"])
def test_micro_batches_sum_to_the_whole_batch_loss_gradient_and_statistics(policy, loss_type, level,
                                                                           num_iterations_gt_1):  # fmt: skip
    """float32, micro-batches of 3 with the whole batch's counts, as the update stage calls it, with the KL term."""
    logps, old_logps, advantages, mask = _inputs(torch.float32)
    ref_logps = logps + 0.2
    old_logps = old_logps if num_iterations_gt_1 else None
    mask = mask.float()
    totals = BatchTotals(8, mask.sum(), 7, mask.sum())
    options = {**POLICIES[policy][0], "loss_type": loss_type, "importance_sampling_level": level}
    whole_input = logps.clone().requires_grad_(True)
    whole, whole_stats = _loss(whole_input, old_logps, advantages, mask, totals=totals, ref_logps=ref_logps, **options)
    whole.backward()
    micro_input = logps.clone().requires_grad_(True)
    total, sums = torch.zeros(()), {}
    for mb in (slice(0, 3), slice(3, 6), slice(6, 8)):
        old = None if old_logps is None else old_logps[mb]
        loss, stats = _loss(micro_input[mb], old, advantages[mb], mask[mb], totals=totals, ref_logps=ref_logps[mb],
                            **options)  # fmt: skip
        loss.backward()
        total = total + loss.detach()
        for name, value in stats.items():
            sums[name] = sums.get(name, 0) + value
    scale = whole_input.grad.abs().max()
    torch.testing.assert_close(total, whole.detach(), rtol=F32_RTOL * 8, atol=1e-6)
    torch.testing.assert_close(micro_input.grad, whole_input.grad, rtol=F32_RTOL * 8, atol=1e-6 * scale)
    assert sums.keys() == whole_stats.keys()
    for name in sums:
        torch.testing.assert_close(sums[name], whole_stats[name], rtol=F32_RTOL * 8, atol=1e-6, msg=name)


@pytest.mark.parametrize("policy", POLICIES)
def test_at_ratio_one_each_policy_loss_has_the_plain_policy_gradient(policy):
    """num_iterations = 1: every ratio is 1, no clip binds, and each term's gradient is ``-A`` per token (GMPO's
    through its sequence mean: ``-A / |o|`` per token, times ``|o|`` tokens under ``grpo``)."""
    logps, _, advantages, mask = _inputs()
    inputs = logps.clone().requires_grad_(True)
    loss, stats = _loss(inputs, None, advantages, mask, loss_type="grpo", **POLICIES[policy][0])
    (grad,) = torch.autograd.grad(loss, inputs)
    counts = mask.sum(dim=1, keepdim=True).clamp_min(1)
    torch.testing.assert_close(grad, -advantages[:, None] * mask / counts / 8, **F64)
    _, stat = POLICIES[policy]
    assert stats[stat] == (1.0 if stat == "sapo/gate" else 0.0)


def test_the_defaults_are_todays_surrogate_bit_for_bit():
    """``policy_loss: ppo`` without ``dual_clip`` is :func:`clipped_surrogate` as before; so is a dual bound that never
    binds (the same numbers, by ``minimum``), in float32, in value, gradient and statistics."""
    logps, old_logps, advantages, mask = _inputs(torch.float32)
    assert LossConfig().policy_loss == "ppo" and LossConfig().dual_clip is None
    results = []
    for options in ({}, {"dual_clip": 1e6}, None):
        inputs = logps.clone().requires_grad_(True)
        if options is None:  # today's composition
            per_token, clipped = clipped_surrogate(inputs, old_logps, advantages, 0.2, None, mask=mask)
            loss = aggregate_loss(per_token, mask, "grpo")
            stats = {name: (value.float() * mask).sum() / mask.sum() for name, value in clipped.items()}
        else:
            loss, stats = _loss(inputs, old_logps, advantages, mask, **options)
            stats = {name: stats[name] for name in ("clip_low", "clip_high")}
        loss.backward()
        results.append((loss.detach(), inputs.grad, stats))
    (loss, grad, stats), (dual_loss, dual_grad, _), (today_loss, today_grad, today_stats) = results
    assert torch.equal(loss, today_loss) and torch.equal(grad, today_grad)
    assert torch.equal(dual_loss, today_loss) and torch.equal(dual_grad, today_grad)
    assert all(torch.equal(stats[name], today_stats[name]) for name in today_stats)


def test_policy_losses_registry_holds_the_documented_variants():
    assert POLICY_LOSSES.names() == ("ppo", "cispo", "sapo", "gmpo")


# ----------------------------------------------------------------------------------------------------------------
# Refusals, the command line, YAML and a training step
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dual_clip": 1.0}, r"loss.dual_clip \(1.0\) must be above 1"),
        ({"dual_clip": 0.5}, r"loss.dual_clip \(0.5\) must be above 1"),
        ({"dual_clip": 3.0, "delta": 1.5}, r"loss.dual_clip and loss.delta both bound"),
        ({"policy_loss": "reinforce"}, r"Unknown model.loss.policy_loss 'reinforce'; known values are: ppo, cispo"),
        ({"policy_loss": "cispo", "dual_clip": 3.0}, r"loss.dual_clip is an option of loss.policy_loss: ppo"),
        ({"policy_loss": "sapo", "delta": 1.5}, r"loss.delta is an option of loss.policy_loss: ppo .* sapo"),
        ({"policy_loss": "gmpo", "importance_sampling_level": "sequence"}, r"gmpo with loss.importance_sampling_level"),
        ({"policy_loss": "gmpo", "loss_type": "dapo"}, r"gmpo with loss.loss_type: dapo: .* Set loss.loss_type: grpo"),
        ({"policy_loss": "gmpo", "top_entropy_quantile": 0.2}, r"gmpo with loss.top_entropy_quantile"),
        ({"cispo_max_weight": 0.0}, r"loss.cispo_max_weight must be above 0"),
        ({"sapo_temperature_neg": -1.0}, r"loss.sapo_temperature_neg must be above 0"),
    ],
)
def test_options_that_cannot_work_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        LossConfig(**options)


def test_clipped_surrogate_refuses_a_dual_clip_of_one_or_with_delta():
    args = (torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1))
    with pytest.raises(ValueError, match="dual_clip must be above 1"):
        clipped_surrogate(*args, dual_clip=1.0)
    with pytest.raises(ValueError, match="dual_clip and delta"):
        clipped_surrogate(*args, dual_clip=3.0, delta=2.0)


NEW_OPTIONS = ("policy_loss", "dual_clip", "cispo_max_weight", "sapo_temperature_pos", "sapo_temperature_neg")


def test_fit_help_documents_the_policy_loss_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for name in NEW_OPTIONS:
        assert f"--model.loss.{name} " in out, name
    for words in ("MiniMax-M1", "2511.20347", "geo_mean", "dual-clip PPO"):
        assert words in out, words


@pytest.mark.parametrize(
    "loss",
    [
        {"policy_loss": "sapo", "sapo_temperature_pos": 0.9, "sapo_temperature_neg": 1.2, "cispo_max_weight": 4.0},
        {"policy_loss": "ppo", "dual_clip": 3.0},
        {"policy_loss": "gmpo", "epsilon_low": 0.4, "epsilon_high": 0.4},
    ],
    ids=["sapo", "dual_clip", "gmpo"],
)
def test_a_config_yaml_sets_the_policy_loss_options(tmp_path, capsys, loss):
    parsed = demo_model_options(tmp_path, capsys, {"loss": loss})["loss"]
    assert {name: parsed[name] for name in loss} == loss
    assert LossConfig(**parsed) == LossConfig(**{**parsed, **loss})


def test_a_refused_pair_in_a_yaml_file_is_one_error_line(tmp_path, capsys):
    overlay = tmp_path / "loss.yaml"
    overlay.write_text(yaml.safe_dump({"model": {"loss": {"policy_loss": "cispo", "delta": 1.5}}}), encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--config", str(overlay)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and "loss.delta is an option of" in err
    assert "Traceback" not in err


@pytest.mark.usefixtures("one_torch_thread")
def test_a_policy_loss_reaches_the_step_and_logs_its_statistic(assets, data_kwargs, tmp_path):
    """SAPO with two optimizer steps on one rollout (num_iterations 2): its gate is logged, below 1 once the policy
    has moved from the sampling one, and the weights change."""
    loss = {"policy_loss": "sapo", "num_iterations": 2, "micro_batch_size": 3}
    module = make_module(assets, loss=loss, sampling=dict(max_completion_length=16))
    module.configure_model()
    before = [p.detach().clone() for p in module.model.parameters()]
    trainer = fit(module, data_kwargs, tmp_path, steps=2)
    scalars = read_scalars(trainer.logger.log_dir)
    assert "train/sapo/gate" in scalars and not {"train/clip_ratio/low", "train/clip_ratio/high"} & scalars.keys()
    assert all(0 < value <= 1 for _, value in scalars["train/sapo/gate"])
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, module.model.parameters(), strict=True))
