"""Asynchronous rollouts without an engine: the training stream's look-ahead, the weights versions, the old
log-probs of stale completions and the off-policy loss against float64 references, and the options' refusals.

The runs with the vLLM engine (the synchronous step at K = 0, exact resume with rollouts on their way, DDP, faults)
are in ``tests/test_async_engine.py``."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import yaml

from grpo_lightning.algorithms import grpo_loss
from grpo_lightning.config import LossConfig, SamplingConfig, VLLMConfig
from grpo_lightning.data.loading import ResumableDataLoader, ResumableSampler, collate_samples
from grpo_lightning.engines.correction import IMPORTANCE_SAMPLING_MODES
from grpo_lightning.errors import ConfigError
from grpo_lightning.rollout import Rollout, join_groups
from grpo_lightning.stages.async_rollouts import WeightVersions
from grpo_lightning.stages.update import PolicyUpdate
from tests.helpers import ROOT, demo_model_options, make_module


# ------------------------------------------------------------------------------------- the stream's look-ahead
def _loader(num_samples: int = 10, batch_size: int = 2, epoch_length=None) -> ResumableDataLoader:
    samples = [{"id": i} for i in range(num_samples)]
    sampler = ResumableSampler(samples, num_replicas=1, rank=0, shuffle=True, seed=3)
    return ResumableDataLoader(
        samples, batch_size=batch_size, sampler=sampler, collate_fn=collate_samples, epoch_length=epoch_length
    )


def _ids(batches) -> list[list[int]]:
    return [batch["id"] for batch in batches]


def test_upcoming_batches_are_the_next_ones_and_do_not_count_in_the_position():
    straight = _ids(_loader())
    loader = _loader()
    batches = iter(loader)
    assert loader.upcoming(2) == []  # no batch handed out yet: the epoch has not begun
    seen = [next(batches)["id"]]
    assert loader.position == (0, 1)
    assert _ids(loader.upcoming(2)) == straight[1:3]
    assert loader.position == (0, 1) and loader.state_dict() == {"batches_done": 1}
    assert _ids(loader.upcoming(1)) == straight[1:2]  # looking again takes nothing
    seen.append(loader.next_batch()["id"])  # a refill takes the first of them
    assert _ids(loader.upcoming(3)) == straight[2:5]
    seen += [batch["id"] for batch in batches]
    assert seen == straight
    assert loader.state_dict() == {"batches_done": 5, "epoch": 0}


def test_upcoming_stops_at_the_epochs_end_and_at_the_loops_length():
    loader = _loader(num_samples=10, batch_size=2, epoch_length=lambda: 3)
    batches = iter(loader)
    next(batches)
    assert len(loader.upcoming(5)) == 2  # 3 batches in the loop's epoch
    assert len(list(batches)) == 2
    assert loader.upcoming(2) == []


def test_a_resumed_loader_looks_ahead_from_its_saved_position():
    straight = _ids(_loader())
    loader = _loader()
    loader.load_state_dict({"batches_done": 2})
    batches = iter(loader)
    assert next(batches)["id"] == straight[2]
    assert _ids(loader.upcoming(2)) == straight[3:5]
    assert loader.position == (0, 3)


# ------------------------------------------------------------------------------------- weights versions
class _TablePolicy(torch.nn.Module):
    """A policy whose log-probs are a table: position t's distribution over the vocabulary is softmax(theta[t])."""

    def __init__(self, theta: torch.Tensor):
        super().__init__()
        self.theta = torch.nn.Parameter(theta.clone())
        self.frozen = torch.nn.Parameter(torch.ones(3, dtype=theta.dtype), requires_grad=False)


class _TableAdapter:
    """The adapter seam PolicyUpdate's passes use, for :class:`_TablePolicy`."""

    tokenizer = SimpleNamespace(pad_token_id=0)

    def completion_logps(self, model, prompts, index, ids, mask, temperature=1.0, with_entropy=False):
        logps = torch.log_softmax(model.theta[: ids.shape[1]], dim=-1)  # (C, V)
        chosen = logps.unsqueeze(0).expand(ids.shape[0], -1, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        return chosen * mask, None


def test_a_weights_version_is_applied_for_a_block_and_the_weights_come_back_bit_for_bit():
    model = _TablePolicy(torch.randn(4, 5, dtype=torch.float64))
    versions = WeightVersions()
    versions.keep(3, model)
    before = model.theta.detach().clone()
    with torch.no_grad():
        model.theta.add_(1.0)
    moved = model.theta.detach().clone()
    with versions.applied(3, model):
        assert torch.equal(model.theta, before)
    assert torch.equal(model.theta, moved)
    assert set(versions.saved[3]) == {"theta"}  # the trainable weights alone
    versions.keep(4, model)
    versions.keep_only({4})
    assert list(versions.saved) == [4]


# ------------------------------------------------------------------------------------- the off-policy loss
def _versions_of_theta(generator, steps: int, shape) -> list[torch.Tensor]:
    """The table's weights after each of ``steps`` optimizer steps (random moves of a realistic size)."""
    theta = [torch.randn(*shape, generator=generator, dtype=torch.float64)]
    for _ in range(steps):
        theta.append(theta[-1] + 0.3 * torch.randn(*shape, generator=generator, dtype=torch.float64))
    return theta


def _rollout(ids: torch.Tensor, mask: torch.Tensor, versions: list[int], engine_logps: torch.Tensor) -> Rollout:
    prompts = SimpleNamespace()
    return Rollout(
        prompts, torch.zeros(len(ids), dtype=torch.long), ids, mask, [""] * len(ids), engine_logps,
        torch.tensor(versions),
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
@pytest.mark.parametrize("num_iterations", [1, 2])
def test_the_off_policy_loss_with_staleness_1_and_2_matches_a_float64_loop(mode, num_iterations):
    """Step t = 2 trains completions sampled with the weights of steps 2, 1 and 0 (staleness 0, 1, 2, as dynamic
    sampling's rounds can mix them): each completion's old log-probs are the trainer's under the weights that sampled
    it (PolicyUpdate.old_logps with the kept versions); the engines' mismatch correction weighs each token by its
    bounded ratio of those to the engine's log-probs. Loss and gradient equal a float64 loop written from the
    definition, token by token."""
    generator = torch.Generator().manual_seed(7)
    length, vocab, step = 4, 6, 2
    theta = _versions_of_theta(generator, step, (length, vocab))
    model = _TablePolicy(theta[step])
    kept = WeightVersions()
    for version in range(step):
        with torch.no_grad():
            model.theta.copy_(theta[version])
        kept.keep(version, model)
    with torch.no_grad():
        model.theta.copy_(theta[step])
    ids = torch.randint(0, vocab, (6, length), generator=generator)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    versions = [2, 1, 0, 1, 0, 2]
    behaviour = torch.stack([torch.log_softmax(theta[v], -1).gather(-1, ids[i, :, None]).squeeze(-1)
                             for i, v in enumerate(versions)]) * mask  # fmt: skip
    engine = (behaviour + 0.2 * torch.randn(6, length, generator=generator, dtype=torch.float64)) * mask
    advantages = torch.tensor([1.0, -0.5, 0.7, -1.2, 0.3, -0.1], dtype=torch.float64)
    config = LossConfig(beta=0.0, num_iterations=num_iterations, micro_batch_size=4)
    module = SimpleNamespace(model=model, adapter=_TableAdapter(), global_step=step, device=torch.device("cpu"))
    update = PolicyUpdate(module, config, SamplingConfig(), VLLMConfig())
    rollout = _rollout(ids, mask, versions, engine)

    old = update.old_logps(rollout, None, kept)
    torch.testing.assert_close(old, behaviour, rtol=0, atol=0)  # each row's own version, exactly
    assert torch.equal(model.theta.detach(), theta[step])  # and the policy's weights are back

    cap, low = 1.5, 0.6
    logps, _ = _TableAdapter().completion_logps(model, None, None, ids, mask)
    weights = IMPORTANCE_SAMPLING_MODES[mode].weights(old, engine, mask, cap, low)
    loss, _ = grpo_loss(logps, old, advantages, mask, config, importance_weights=weights)
    (gradient,) = torch.autograd.grad(loss, model.theta)

    theta_t = theta[step].clone().requires_grad_(True)
    expected = _loop_loss(theta_t, ids, mask, versions, theta, engine, advantages, mode, cap, low, eps=0.2)
    (expected_gradient,) = torch.autograd.grad(expected, theta_t)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-12, atol=1e-15)


def _loop_loss(theta_t, ids, mask, versions, theta, engine, advantages, mode, cap, low, eps):
    """GRPO's loss (mean over sequences of token means) of the clipped surrogate against the behaviour policy, each
    token's policy term weighed by the engines' bounded ratio, written one token at a time."""
    total = 0.0
    for i in range(ids.shape[0]):
        tokens = [t for t in range(ids.shape[1]) if mask[i, t]]
        log_rho = {}
        for t in tokens:
            behaviour = torch.log_softmax(theta[versions[i]][t], -1)[ids[i, t]]
            log_rho[t] = float(behaviour) - float(engine[i, t])
        sequence_rho = math.exp(sum(log_rho.values()))
        row = 0.0
        for t in tokens:
            logp = torch.log_softmax(theta_t[t], -1)[ids[i, t]]
            behaviour = float(torch.log_softmax(theta[versions[i]][t], -1)[ids[i, t]])
            ratio = torch.exp(logp - behaviour)
            advantage = float(advantages[i])
            surrogate = -torch.minimum(ratio * advantage, torch.clamp(ratio, 1 - eps, 1 + eps) * advantage)
            rho = math.exp(log_rho[t]) if mode.startswith("token") else sequence_rho
            if mode.endswith("truncate"):
                weight = min(max(rho, low), cap)
            else:
                weight = rho if low <= rho <= cap else 0.0
            row = row + weight * surrogate
        total = total + row / len(tokens)
    return total / ids.shape[0]


def test_a_rollout_of_this_steps_weights_keeps_the_synchronous_old_log_probs():
    """Staleness 0 everywhere: no pass of its own at one iteration (the ratio is the pass's own, detached), the
    current weights' pass with more, as the synchronous step."""
    model = _TablePolicy(torch.randn(3, 4, dtype=torch.float64))
    module = SimpleNamespace(model=model, adapter=_TableAdapter(), global_step=5, device=torch.device("cpu"))
    ids, mask = torch.tensor([[1, 2, 3], [0, 1, 2]]), torch.ones(2, 3, dtype=torch.long)
    rollout = _rollout(ids, mask, [5, 5], torch.zeros(2, 3, dtype=torch.float64))
    one = PolicyUpdate(module, LossConfig(beta=0.0), SamplingConfig(), VLLMConfig())
    assert one.old_logps(rollout, None, WeightVersions()) is None
    two = PolicyUpdate(module, LossConfig(beta=0.0, num_iterations=2), SamplingConfig(), VLLMConfig())
    expected, _ = _TableAdapter().completion_logps(model, None, None, ids, mask)
    torch.testing.assert_close(two.old_logps(rollout, None, WeightVersions()), expected, rtol=0, atol=0)


def test_joined_groups_keep_each_completions_weights_version():
    def part(version: int, groups: int) -> Rollout:
        ids = torch.arange(groups * 2 * 3).reshape(groups * 2, 3)
        prompts = SimpleNamespace(
            input_ids=torch.ones(groups, 2, dtype=torch.long), attention_mask=torch.ones(groups, 2, dtype=torch.long),
            visual=[None] * groups, texts=[""] * groups, token_aligned={}, feature_memo=None,
        )  # fmt: skip
        index = torch.arange(groups).repeat_interleave(2)
        versions = torch.full((groups * 2,), version)
        return Rollout(prompts, index, ids, torch.ones_like(ids), [""] * len(ids), None, versions)

    joined = join_groups([(part(4, 2), [1]), (part(5, 2), [0, 1])], num_generations=2, pad_token_id=0)
    assert joined.versions.tolist() == [4, 4, 5, 5, 5, 5]
    with pytest.raises(ValueError, match="weights versions"):
        unversioned = part(4, 1)
        unversioned.versions = None
        join_groups([(part(4, 1), [0]), (unversioned, [0])], num_generations=2, pad_token_id=0)


# ------------------------------------------------------------------------------------- the options
def test_a_negative_staleness_is_refused():
    with pytest.raises(ConfigError, match=r"sampling.max_staleness must be 0 or more, not -1"):
        SamplingConfig(max_staleness=-1)


def test_async_rollouts_with_the_policys_own_sampler_are_refused_in_one_message(assets):
    with pytest.raises(ConfigError, match=r"async_rollouts needs an engine .*model.rollout_engine hf samples"):
        make_module(assets, sampling=dict(async_rollouts=True))


def test_async_options_are_in_fit_help_and_off_by_default(capsys):
    from grpo_lightning.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    assert "--model.sampling.async_rollouts" in text and "--model.sampling.max_staleness" in text
    assert "--model.vllm.cpu_cores" in text
    assert SamplingConfig().async_rollouts is False and SamplingConfig().max_staleness == 1
    assert VLLMConfig().cpu_cores is None


def test_the_async_demo_config_turns_them_on_with_the_engine_on_a_core_of_its_own(tmp_path, capsys):
    overlay = yaml.safe_load((ROOT / "configs" / "demo_async.yaml").read_text(encoding="utf-8"))["model"]
    printed = demo_model_options(tmp_path, capsys, overlay)
    assert printed["rollout_engine"] == "vllm" and printed["vllm"]["cpu_cores"] == "0"
    assert printed["sampling"]["async_rollouts"] is True and printed["sampling"]["max_staleness"] == 1
