"""The entropy bonus (``loss.entropy_coef``) and adaptive entropy control (``loss.adaptive_entropy``): the loss with its
entropy term against a float64 loop reference (value, and gradient by hand against autograd), micro-batches that add
up to the whole batch, the default against the loss without the term bit for bit, the adaptive rule as a table, the
coefficient shared by every process and kept through a checkpoint, and the config's refusals, ``--help`` and YAML."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from grpo_lightning.algorithms import BatchTotals, adaptive_entropy_coef, gated_entropy_coef, grpo_loss
from grpo_lightning.cli import main
from grpo_lightning.config import LossConfig, SamplingConfig
from grpo_lightning.errors import ConfigError
from grpo_lightning.stages.update import ENTROPY_CONTROL_KEY, EntropyControl, PolicyUpdate
from scripts.tb_scalars import read_scalars
from tests.helpers import demo_model_options, fit, make_module
from tests.tolerances import F32_RTOL

F64 = {"rtol": 1e-12, "atol": 1e-12}
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]
EPS, BETA, COEF, MAX_LENGTH = 0.2, 0.05, 0.3, 9


def _inputs(seed: int, batch: int = 6, length: int = 7):
    """float64 log-probs far enough from the old ones that some tokens are clipped, entropies, and a padding mask
    with a fully padded row."""
    gen = torch.Generator().manual_seed(seed)
    logps = -2 * torch.rand(batch, length, generator=gen, dtype=torch.float64)
    old = logps + 0.3 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    ref = logps + 0.5 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    entropy = 3 * torch.rand(batch, length, generator=gen, dtype=torch.float64)
    advantages = torch.randn(batch, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    lengths[0] = 0
    mask = (torch.arange(length) < lengths[:, None]).long()
    return logps, old, ref, entropy, advantages, mask


def _token_weights(mask: list[list[int]], loss_type: str, num_tokens: float) -> list[list[float]]:
    """What each token's loss is multiplied by in the scalar (0 for padding), from each aggregation's definition."""
    num_sequences = len(mask)
    weights = []
    for row in mask:
        length = sum(row)
        per = {
            "grpo": 1 / (num_sequences * max(length, 1)),
            "bnpo": 1 / max(num_tokens, 1),
            "dapo": 1 / max(num_tokens, 1),
            "dr_grpo": 1 / (num_sequences * MAX_LENGTH),
        }[loss_type]
        weights.append([per * m for m in row])
    return weights


def _reference(logps, old, ref, entropy, advantages, mask, loss_type, num_tokens):
    """The loss ``sum w * (pg + beta * k3 - coef * H)`` and its gradients with respect to the log-probs and the
    entropies, written out token by token in Python floats."""
    weights = _token_weights(mask.tolist(), loss_type, num_tokens)
    loss, grad_logps, grad_entropy = 0.0, [], []
    for i, (lp_row, old_row, ref_row, h_row, w_row) in enumerate(
        zip(logps.tolist(), old.tolist(), ref.tolist(), entropy.tolist(), weights, strict=True)
    ):
        a = advantages[i].item()
        grad_logps.append([])
        grad_entropy.append([])
        for lp, lp_old, lp_ref, h, w in zip(lp_row, old_row, ref_row, h_row, w_row, strict=True):
            ratio = math.exp(lp - lp_old)
            clipped = min(max(ratio, 1 - EPS), 1 + EPS)
            unclipped_term, clipped_term = -ratio * a, -clipped * a
            pg = max(unclipped_term, clipped_term)
            d = lp_ref - lp
            kl = math.exp(d) - d - 1
            loss += w * (pg + BETA * kl - COEF * h)
            d_pg = -ratio * a if unclipped_term >= clipped_term else 0.0
            grad_logps[-1].append(w * (d_pg + BETA * (1 - math.exp(d))))
            grad_entropy[-1].append(-COEF * w)
    as_tensor = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    return as_tensor(loss), as_tensor(grad_logps), as_tensor(grad_entropy)


def _loss(logps, old, ref, entropy, advantages, mask, loss_type, totals, **options):
    config = LossConfig(loss_type=loss_type, beta=BETA, epsilon_low=EPS, **options)
    return grpo_loss(logps, old, advantages, mask, config, ref_logps=ref, entropy=entropy, totals=totals)


@pytest.mark.parametrize("num_iterations", [1, 2])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_the_loss_with_its_entropy_term_matches_the_float64_reference_value_and_gradient(loss_type, num_iterations):
    """``num_iterations`` 2: the old log-probs differ from the policy's (ratios off 1, some clipped); 1: the pass's own,
    detached (every ratio 1)."""
    logps, old, ref, entropy, advantages, mask = _inputs(3)
    old = old if num_iterations > 1 else logps.clone()
    num_tokens = float(mask.sum())
    totals = BatchTotals(mask.shape[0], num_tokens, MAX_LENGTH)
    logps.requires_grad_(True)
    entropy.requires_grad_(True)
    loss, stats = _loss(
        logps, old if num_iterations > 1 else None, ref, entropy, advantages, mask, loss_type, totals,
        entropy_coef=COEF, num_iterations=num_iterations,
    )  # fmt: skip
    loss.backward()
    expected, grad_logps, grad_entropy = _reference(logps, old, ref, entropy, advantages, mask, loss_type, num_tokens)
    torch.testing.assert_close(loss.detach(), expected, **F64)
    torch.testing.assert_close(logps.grad, grad_logps, **F64)
    torch.testing.assert_close(entropy.grad, grad_entropy, **F64)
    assert grad_entropy.abs().sum() > 0 and (grad_entropy[mask == 0] == 0).all()
    torch.testing.assert_close(stats["entropy"], (entropy * mask).sum() / mask.sum(), **F64)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_micro_batches_with_the_entropy_term_add_up_to_the_whole_batch(loss_type):
    logps, old, ref, entropy, advantages, mask = _inputs(5)
    totals = BatchTotals(mask.shape[0], float(mask.sum()), MAX_LENGTH)
    options = dict(entropy_coef=COEF, num_iterations=2)

    whole_logps, whole_entropy = logps.clone().requires_grad_(True), entropy.clone().requires_grad_(True)
    whole, _ = _loss(whole_logps, old, ref, whole_entropy, advantages, mask, loss_type, totals, **options)
    whole.backward()
    micro_logps, micro_entropy = logps.clone().requires_grad_(True), entropy.clone().requires_grad_(True)
    total = torch.zeros((), dtype=torch.float64)
    for mb in (slice(0, 2), slice(2, 5), slice(5, 6)):
        part, _ = _loss(
            micro_logps[mb], old[mb], ref[mb], micro_entropy[mb], advantages[mb], mask[mb], loss_type, totals, **options
        )
        part.backward()  # one backward pass per micro-batch, as the update does
        total = total + part.detach()
    torch.testing.assert_close(total, whole.detach(), **F64)
    torch.testing.assert_close(micro_logps.grad, whole_logps.grad, **F64)
    torch.testing.assert_close(micro_entropy.grad, whole_entropy.grad, **F64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_without_a_coefficient_the_loss_and_its_gradient_are_those_without_the_term_bit_for_bit(dtype):
    logps, old, ref, entropy, advantages, mask = (x.to(dtype) if x.is_floating_point() else x for x in _inputs(7))
    config = LossConfig()
    assert (config.entropy_coef, config.adaptive_entropy, config.entropy_bonus) == (0.0, False, False)
    results = []
    for given, coef in ((None, None), (entropy, None), (entropy, 0.0)):
        lp = logps.clone().requires_grad_(True)
        loss, _ = grpo_loss(lp, old, advantages, mask, config, ref_logps=ref, entropy=given, entropy_coef=coef)
        loss.backward()
        results.append((loss.detach(), lp.grad))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


def test_the_coefficient_given_overrides_the_configs_and_a_bonus_needs_the_entropy():
    logps, old, ref, entropy, advantages, mask = _inputs(9)
    config = LossConfig(beta=0.0, entropy_coef=0.5)
    base, _ = grpo_loss(logps, old, advantages, mask, LossConfig(beta=0.0))
    with_config, _ = grpo_loss(logps, old, advantages, mask, config, entropy=entropy)
    overridden, _ = grpo_loss(logps, old, advantages, mask, config, entropy=entropy, entropy_coef=0.25)
    term = (entropy * mask).sum(1) / mask.sum(1).clamp(min=1)  # grpo: mean over sequences of token means
    torch.testing.assert_close(with_config, base - 0.5 * term.sum() / len(term), **F64)
    torch.testing.assert_close(overridden, base - 0.25 * term.sum() / len(term), **F64)
    with pytest.raises(ValueError, match="entropy_coef=0.5 weighs an entropy term, which needs entropy"):
        grpo_loss(logps, old, advantages, mask, config)


# ----------------------------------------------------------------------------------------------------------------
# Adaptive control: TRL's rule, every process the same, kept in checkpoints
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coef", "entropy", "target", "bounds", "expected"),
    [
        (0.10, 0.10, 0.2, (0.0, 1.0), 0.15),  # below the target: up by delta
        (0.10, 0.30, 0.2, (0.0, 1.0), 0.05),  # above: down by delta
        (0.10, 0.20, 0.2, (0.0, 1.0), 0.15),  # at the target: up (TRL's entropy <= target)
        (0.98, 0.10, 0.2, (0.0, 1.0), 1.00),  # clamped at the maximum
        (0.03, 0.90, 0.2, (0.0, 1.0), 0.00),  # clamped at the minimum
        (0.50, 0.90, 0.2, (0.5, 0.6), 0.50),  # at the minimum already
        (0.60, 0.00, 0.2, (0.5, 0.6), 0.60),  # at the maximum already
    ],
)
def test_the_adaptive_coefficient_moves_by_delta_towards_the_target_within_its_bounds(
    coef, entropy, target, bounds, expected
):
    assert adaptive_entropy_coef(coef, entropy, target, *bounds, delta=0.05) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize(("last_entropy", "applied"), [(math.inf, 0.0), (0.3, 0.0), (0.2, 0.4), (0.1, 0.4), (0.0, 0.4)])
def test_the_adaptive_coefficient_applies_only_while_the_last_entropy_is_at_or_below_the_target(last_entropy, applied):
    assert gated_entropy_coef(0.4, last_entropy, 0.2) == applied


class _TwoProcesses:
    """Both processes' ``mean_over_processes`` of the step's [entropy sum, token count], as a strategy's all-reduce
    gives it: the sum over the two windows, divided by 2."""

    def __init__(self, controls: list[EntropyControl]) -> None:
        self.total = sum(control.window for control in controls)

    def mean_over_processes(self, value: torch.Tensor) -> torch.Tensor:
        return self.total / 2


def test_every_process_moves_the_coefficient_by_the_global_token_mean():
    """Process 0 has 4 tokens of entropy 1.0, process 1 one token of 0.0: the global mean 0.8 is above the target
    0.7 (down on both), where the mean of the processes' means, 0.5, would have moved it up."""
    config = LossConfig(adaptive_entropy=True, entropy_target=0.7, entropy_coef=0.2, entropy_coef_delta=0.05)
    controls = [EntropyControl(config), EntropyControl(config)]
    assert [control.applied() for control in controls] == [0.0, 0.0]  # no measurement yet: no bonus
    controls[0].measure(torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 5.0]]), torch.tensor([[1, 1, 1], [1, 0, 0]]))
    controls[1].measure(torch.tensor([[0.0, 9.0]]), torch.tensor([[1, 0]]))
    processes = _TwoProcesses(controls)
    for control in controls:
        control.after_step(processes)
    for control in controls:
        assert control.last_entropy == pytest.approx(0.8, abs=1e-7)
        assert control.coef == pytest.approx(0.15, abs=1e-15)
        assert control.applied() == 0.0 and control.window is None


def test_the_update_saves_and_restores_the_adaptive_state_and_a_fixed_coefficient_saves_nothing():
    sampling = SamplingConfig(num_generations=2)
    adaptive = LossConfig(adaptive_entropy=True, entropy_target=0.5)
    update = PolicyUpdate(SimpleNamespace(), adaptive, sampling, None)
    update.entropy.coef, update.entropy.last_entropy = 0.125, 0.25
    checkpoint: dict = {}
    update.save_state(checkpoint)
    assert checkpoint == {ENTROPY_CONTROL_KEY: {"entropy_coef": 0.125, "last_entropy": 0.25}}
    resumed = PolicyUpdate(SimpleNamespace(), adaptive, sampling, None)
    resumed.restore(checkpoint)
    assert (resumed.entropy.coef, resumed.entropy.last_entropy, resumed.entropy.applied()) == (0.125, 0.25, 0.125)
    fixed = PolicyUpdate(SimpleNamespace(), LossConfig(entropy_coef=0.01), sampling, None)
    nothing: dict = {}
    fixed.save_state(nothing)
    fixed.restore(checkpoint)
    assert nothing == {} and fixed.entropy.coef == 0.01 and fixed.entropy.applied() == 0.01


def test_a_fit_with_the_bonus_logs_the_coefficient_and_trains_other_weights(assets, data_kwargs, tmp_path):
    """One rollout, micro-batches of 3 and two iterations on it (two optimizer steps, Lightning's ``max_steps=2``): the
    adaptive coefficient (the tiny random model's entropy far below a target of 50 nats) goes up after each optimizer
    step, applies from the second (the first has no measurement yet), and changes the weights."""

    def trained(name: str, **loss):
        module = make_module(assets, loss=dict(micro_batch_size=3, num_iterations=2, **loss))
        fit(module, data_kwargs, tmp_path / name, steps=2)
        return module, read_scalars(tmp_path / name / "run" / "version_0")

    plain, plain_scalars = trained("plain")
    bonus, bonus_scalars = trained("bonus", adaptive_entropy=True, entropy_target=50.0, entropy_coef=0.1)
    assert "train/entropy_coef" not in plain_scalars
    # two optimizer steps in the training step, each 0.005 up; logged once, after the last
    assert [v for _, v in bonus_scalars["train/entropy_coef"]] == pytest.approx([0.11], rel=F32_RTOL)
    assert bonus.update.entropy.coef == pytest.approx(0.11, abs=1e-12)
    assert bonus.update.entropy.last_entropy < 50.0
    # the same samples (nothing had changed the weights yet), then other weights
    assert bonus_scalars["train/reward"] == plain_scalars["train/reward"]
    difference = [(p - q).abs().max() for p, q in zip(plain.model.parameters(), bonus.model.parameters(), strict=True)]
    assert max(difference) > 0


# ----------------------------------------------------------------------------------------------------------------
# The config: refusals, --help and YAML
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(entropy_coef=-0.01), "loss.entropy_coef must be 0 .no entropy bonus. or more, not -0.01"),
        (dict(adaptive_entropy=True), "loss.adaptive_entropy needs loss.entropy_target"),
        (dict(adaptive_entropy=True, entropy_target=-1.0), "loss.adaptive_entropy needs loss.entropy_target"),
        (
            dict(adaptive_entropy=True, entropy_target=0.2, entropy_coef_min=0.5, entropy_coef_max=0.1),
            r"loss.entropy_coef_min \(0.5\) must be 0 or more and at most loss.entropy_coef_max \(0.1\)",
        ),
        (dict(adaptive_entropy=True, entropy_target=0.2, entropy_coef_delta=0.0), "entropy_coef_delta must be above 0"),
        (dict(adaptive_entropy=True, entropy_target=0.2, entropy_coef_delta=-1), "entropy_coef_delta must be above 0"),
        (
            dict(entropy_coef=0.01, entropy_target=0.2, entropy_coef_max=0.5),
            r"^loss.entropy_target, loss.entropy_coef_max only steer the adaptive entropy coefficient, and "
            r"loss.adaptive_entropy is false",
        ),
        (
            dict(adaptive_entropy=True, entropy_target=0.2, entropy_coef=0.8, entropy_coef_max=0.5),
            r"loss.entropy_coef \(0.8\), where the adaptive coefficient starts, must lie within",
        ),
    ],
)
def test_the_config_refuses_meaningless_entropy_options(options, message):
    with pytest.raises(ConfigError, match=message):
        LossConfig(**options)


def test_fit_help_lists_the_entropy_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("entropy_coef", "adaptive_entropy", "entropy_target", "entropy_coef_min", "entropy_coef_max"):
        assert f"--model.loss.{name} " in out
    assert "--model.loss.entropy_coef_delta" in out and "Skywork-OR1" in out


def test_the_entropy_options_are_read_from_yaml(tmp_path, capsys):
    options = {"entropy_coef": 0.01, "adaptive_entropy": True, "entropy_target": 0.3}
    options |= {"entropy_coef_min": 0.001, "entropy_coef_max": 0.5, "entropy_coef_delta": 0.002}
    loss = demo_model_options(tmp_path, capsys, {"loss": options})["loss"]
    assert {name: loss[name] for name in loss if "entropy" in name and name != "top_entropy_quantile"} == {
        "entropy_coef": 0.01,
        "adaptive_entropy": True,
        "entropy_target": 0.3,
        "entropy_coef_min": 0.001,
        "entropy_coef_max": 0.5,
        "entropy_coef_delta": 0.002,
    }
