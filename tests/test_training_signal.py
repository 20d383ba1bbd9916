"""The training-signal options of GRPOModule on the tiny offline models: the two-sided ``delta`` clip, GSPO's
importance-sampling levels, truncated completions left out of the loss, the top-entropy tokens, GDPO's reward
aggregation, the ``overlong`` reward's fields, and the reference sync; each on the command line and in a YAML file.

The formulas themselves are checked against float64 loops in ``tests/test_algorithms.py`` and
``tests/test_reward_aggregation.py``; here: that each option reaches the step, over the whole batch, and changes it.
"""

from __future__ import annotations

import dataclasses
import math

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger

from grpo_lightning import module as module_file
from grpo_lightning.algorithms import is_truncated
from grpo_lightning.cli import main
from grpo_lightning.config import LossConfig
from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.errors import ConfigError
from grpo_lightning.rollout import Rollout
from grpo_lightning.stages import update as update_stage
from scripts.tb_scalars import read_scalars
from tests.helpers import ROOT, fit, flat_params, make_module, quiet_trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


#: Every option, a value that is not its default, and where it lives.
OPTIONS = {
    ("loss", "delta"): 1.5,
    ("loss", "importance_sampling_level"): "sequence_token",
    ("loss", "mask_truncated_completions"): True,
    ("loss", "top_entropy_quantile"): 0.2,
    ("loss", "ref_sync_steps"): 64,
    ("loss", "ref_sync_alpha"): 0.9,
    ("rewards", "aggregation"): "normalize_then_sum",
    ("loss", "scale_rewards"): "batch",  # what normalize_then_sum (GDPO) needs
    ("loss", "kl_estimator"): "k2",
    ("loss", "kl_in_reward"): True,
    ("loss", "advantage_estimator"): "rloo",  # RLOO whitened over the batch, as GDPO's batch normalisation
}


def test_fit_help_documents_every_training_signal_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # help wraps its lines
    for group, name in OPTIONS:
        assert f"--model.{group}.{name} " in out, name
    cited = ("two-sided clipping", "GSPO-token", "overlong filtering", "Wang et al. 2025", "TR-DPO", "GDPO", "k3+")
    for words in cited + ("use_kl_in_reward", "REINFORCE++", "grpo_passk"):
        assert words in out, words


def _fit_command(tmp_path, capsys, model_options: dict, *extra: str) -> tuple[int, object]:
    """``fit --config configs/demo.yaml --config <tmp>/signal.yaml *extra``: its exit status and output."""
    overlay = tmp_path / "signal.yaml"
    overlay.write_text(yaml.safe_dump({"model": model_options}), encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--config", str(overlay), *extra])
    return exit_info.value.code, capsys.readouterr()


def test_a_config_yaml_sets_every_training_signal_option(tmp_path, capsys):
    options: dict = {}
    for (group, name), value in OPTIONS.items():
        options.setdefault(group, {})[name] = value
    # rewards that need no file: the demo's explanation reward reads its CIDEr-D corpus, the demo assets' train split
    options["rewards"].update(funcs=["format", "accuracy"], weights=None, kwargs=None)
    code, printed = _fit_command(tmp_path, capsys, options, "--print_config")
    assert code == 0, printed.err
    model = yaml.safe_load(printed.out)["model"]
    for (group, name), value in OPTIONS.items():
        assert model[group][name] == value, name
    built = module_file.GRPOModule(model["model_name_or_path"], rewards=model["rewards"], loss=model["loss"])
    for (group, name), value in OPTIONS.items():
        assert getattr(getattr(built, group), name) == value, name


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delta": 1.2}, r"loss.delta \(1.2\) must be above 1 \+ epsilon_high \(1.2\)"),
        ({"delta": 1.25, "epsilon_high": 0.28}, r"loss.delta \(1.25\) must be above 1 \+ epsilon_high \(1.28\)"),
        ({"top_entropy_quantile": 1.5}, r"loss.top_entropy_quantile must be in \[0, 1\]"),
        ({"ref_sync_steps": -1}, r"loss.ref_sync_steps must be 0 \(never\) or a number of steps, not -1"),
        ({"ref_sync_steps": 4, "ref_sync_alpha": 0.0}, r"loss.ref_sync_alpha must be in \(0, 1\], not 0.0"),
        ({"ref_sync_steps": 4, "beta": 0.0}, r"loss.ref_sync_steps is set but loss.beta is 0"),
    ],
)
def test_training_signal_options_that_cannot_work_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        LossConfig(**options)


def test_a_bad_option_in_a_yaml_file_is_one_error_line(tmp_path, capsys):
    code, printed = _fit_command(tmp_path, capsys, {"loss": {"delta": 1.1}})
    assert code == 2
    assert printed.err.startswith("error: ") and "loss.delta (1.1) must be above 1 + epsilon_high (1.2)" in printed.err
    assert "Traceback" not in printed.err


# --------------------------------------------------------------------------------------------------------------
# The options reach the step
# --------------------------------------------------------------------------------------------------------------


class _Spy:
    """Records every call of the update stage's ``grpo_loss`` (the loss options as the fields of its config), and the
    rollout and rewards of the step."""

    def __init__(self, monkeypatch, module):
        self.calls: list[dict] = []
        self.rollouts: list = []
        self.scored: list = []
        self.advantage_inputs: list = []
        original_loss = update_stage.grpo_loss

        def grpo_loss(logps, old, advantages, mask, config, **kwargs):
            self.calls.append({"mask": mask.detach().clone(), "old": old, **dataclasses.asdict(config), **kwargs})
            return original_loss(logps, old, advantages, mask, config, **kwargs)

        monkeypatch.setattr(update_stage, "grpo_loss", grpo_loss)
        optimize, score, advantages = module.update.optimize, module.rollouts.score, module.update.advantages

        def spy_optimize(rollout, *args):
            self.rollouts.append(rollout)
            return optimize(rollout, *args)

        def spy_score(*args):
            result = score(*args)
            self.scored.append(result)
            return result

        def spy_advantages(rewards):
            self.advantage_inputs.append(rewards.detach().clone())
            return advantages(rewards)

        monkeypatch.setattr(module.update, "optimize", spy_optimize)
        monkeypatch.setattr(module.rollouts, "score", spy_score)
        monkeypatch.setattr(module.update, "advantages", spy_advantages)


def _ref_threshold(values: list[float], rho: float) -> float:
    ordered = sorted(values)
    position = (1 - rho) * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def test_delta_gspo_and_top_entropy_reach_every_micro_batch_with_the_whole_batchs_threshold(
    assets, data_kwargs, tmp_path, monkeypatch
):
    loss = {
        "delta": 1.5, "importance_sampling_level": "sequence_token", "top_entropy_quantile": 0.3,
        "micro_batch_size": 3, "num_iterations": 2,
    }  # fmt: skip
    module = make_module(assets, loss=loss, sampling=dict(max_completion_length=24))
    module.configure_model()
    spy = _Spy(monkeypatch, module)
    trainer = fit(module, data_kwargs, tmp_path, steps=2)  # one rollout, two optimizer steps on it
    assert len(spy.rollouts) == 1 and len(spy.calls) == 2 * 3  # 8 sequences in micro-batches of 3, twice
    for call in spy.calls:
        assert call["delta"] == 1.5 and call["importance_sampling_level"] == "sequence_token"
        assert call["old"] is not None  # num_iterations 2: ratios against the sampling policy
    first = spy.calls[:3]
    entropy = torch.cat([call["entropy"] for call in first]).double()
    mask = torch.cat([call["mask"] for call in first])
    policy_mask = torch.cat([call["policy_mask"] for call in first])
    assert torch.equal(torch.cat([call["policy_mask"] for call in spy.calls[3:]]), policy_mask)  # once per rollout
    threshold = _ref_threshold(entropy[mask != 0].tolist(), 0.3)
    assert policy_mask.tolist() == ((entropy >= threshold) & (mask != 0)).tolist()
    kept = policy_mask.sum().item() / mask.sum().item()
    assert 0.2 < kept <= 0.35  # about rho of the batch's tokens: one threshold for all micro-batches
    # negative control: a threshold of each micro-batch's own would choose other tokens
    own = [
        (c["entropy"] >= _ref_threshold(c["entropy"][c["mask"] != 0].tolist(), 0.3)) & (c["mask"] != 0) for c in first
    ]
    assert not torch.equal(torch.cat(own), policy_mask)
    scalars = read_scalars(trainer.logger.log_dir)
    assert scalars["train/top_entropy/kept_fraction"][0][1] == pytest.approx(kept, abs=1e-6)
    assert scalars["train/top_entropy/threshold"][0][1] == pytest.approx(threshold, rel=1e-5)
    assert "train/clip_ratio/delta" in scalars
    assert all(0 <= value <= 1 for _, value in scalars["train/clip_ratio/delta"])


def test_default_options_log_no_new_statistic_and_pass_todays_arguments(assets, data_kwargs, tmp_path, monkeypatch):
    module = make_module(assets)
    module.configure_model()
    spy = _Spy(monkeypatch, module)
    trainer = fit(module, data_kwargs, tmp_path, steps=1)
    for call in spy.calls:
        assert call["delta"] is None and call["importance_sampling_level"] == "token" and call["policy_mask"] is None
    torch.testing.assert_close(torch.cat([c["mask"] for c in spy.calls]), spy.rollouts[0].completion_mask.float())
    scalars = read_scalars(trainer.logger.log_dir)
    assert not {"train/clip_ratio/delta", "train/top_entropy/threshold", "train/ref_sync/distance"} & scalars.keys()


#: A reward that tells every completion apart, so that a step always has a gradient.
TEXT_LENGTH = "tests.test_training_signal:text_length"


def text_length(completions: list[str], **kwargs) -> list[float]:
    return [len(text) / 10 for text in completions]


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_truncated_completions_get_no_loss_only_when_asked(assets, data_kwargs, tmp_path, monkeypatch, loss_type):
    """4-token completions are all cut at the budget: with the option no token is trained (beta 0, SGD: no weight
    moves), without it every one is."""
    changed = {}
    for masked in (True, False):
        module = make_module(
            assets,
            optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
            sampling=dict(max_completion_length=4),
            loss=dict(beta=0.0, mask_truncated_completions=masked, loss_type=loss_type),
            rewards=dict(funcs=[TEXT_LENGTH]),
        )
        module.configure_model()
        spy = _Spy(monkeypatch, module)
        before = flat_params(module)
        trainer = fit(module, data_kwargs, tmp_path / str(masked), steps=1)
        rollout = spy.rollouts[0]
        truncated = is_truncated(rollout.completion_ids, module.adapter.eos_token_ids(module.model))
        assert truncated.all()
        mask = torch.cat([call["mask"] for call in spy.calls])
        assert (mask == 0).all() if masked else torch.equal(mask, rollout.completion_mask.float())
        changed[masked] = not torch.equal(before, flat_params(module))
        scalars = read_scalars(trainer.logger.log_dir)
        assert scalars["train/truncated_fraction"][0][1] == 1.0
        assert spy.advantage_inputs[0].shape == (8,)  # every completion still has its reward and advantage
    assert changed == {True: False, False: True}


def test_truncation_masking_leaves_the_completions_that_ended(assets, data_kwargs, tmp_path, monkeypatch):
    module = make_module(assets, sampling=dict(max_completion_length=40), loss=dict(mask_truncated_completions=True))
    module.configure_model()
    spy = _Spy(monkeypatch, module)
    fit(module, data_kwargs, tmp_path, steps=1)
    rollout = spy.rollouts[0]
    truncated = is_truncated(rollout.completion_ids, module.adapter.eos_token_ids(module.model))
    expected = rollout.completion_mask.float() * (~truncated).float()[:, None]
    torch.testing.assert_close(torch.cat([call["mask"] for call in spy.calls]), expected, rtol=0, atol=0)
    assert truncated.any()


def _update(assets, data_kwargs, tmp_path, micro_batch_size: int, **loss) -> torch.Tensor:
    module = make_module(
        assets,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05),
        sampling=dict(max_completion_length=24),
        loss=dict(micro_batch_size=micro_batch_size, max_grad_norm=None, num_iterations=2, **loss),
    )
    module.configure_model()
    before = flat_params(module)
    fit(module, data_kwargs, tmp_path / f"{micro_batch_size}-{sorted(loss)}", steps=2, seed=123)
    return flat_params(module) - before


def test_the_update_with_every_option_does_not_depend_on_the_micro_batch_size(assets, data_kwargs, tmp_path):
    """Two optimizer steps on one rollout (ratios away from 1 in the second) with delta, GSPO and the top-entropy
    tokens: micro-batches of 3 and of 8 move the weights alike; without the options the weights move otherwise."""
    options = {"delta": 1.5, "importance_sampling_level": "sequence", "top_entropy_quantile": 0.5}
    small = _update(assets, data_kwargs, tmp_path, 3, **options)
    whole = _update(assets, data_kwargs, tmp_path, 8, **options)
    plain = _update(assets, data_kwargs, tmp_path, 8)
    assert small.abs().max() > 0
    torch.testing.assert_close(small, whole, rtol=1e-4, atol=1e-6)
    assert (plain - whole).abs().max() > 1e-4


# --------------------------------------------------------------------------------------------------------------
# Rewards: aggregation and the overlong reward's fields
# --------------------------------------------------------------------------------------------------------------


def _ref_gdpo(per_func: list[list[float]], weights: list[float], group: int, eps: float = 1e-4) -> list[float]:
    out = []
    for start in range(0, len(per_func), group):
        rows = per_func[start : start + group]
        normalised = [[math.nan] * len(weights) for _ in rows]
        for f in range(len(weights)):
            scored = [row[f] for row in rows if not math.isnan(row[f])]
            if not scored:
                continue
            mean = sum(scored) / len(scored)
            std = math.sqrt(sum((v - mean) ** 2 for v in scored) / (len(scored) - 1)) if len(scored) > 1 else 0.0
            for j, row in enumerate(rows):
                if not math.isnan(row[f]):
                    normalised[j][f] = (row[f] - mean) / (std + eps)
        out += [sum(w * v for w, v in zip(weights, row, strict=True) if not math.isnan(v)) for row in normalised]
    return out


def test_normalize_then_sum_trains_on_group_normalised_scores_and_logs_the_weighted_sum(
    assets, data_kwargs, tmp_path, monkeypatch
):
    rewards = {"funcs": ["tag_count", "format"], "weights": [2.0, 0.5], "aggregation": "normalize_then_sum"}
    module = make_module(assets, rewards=rewards, loss=dict(scale_rewards="batch"))
    module.configure_model()
    spy = _Spy(monkeypatch, module)
    trainer = fit(module, data_kwargs, tmp_path, steps=1)
    trained, per_func = spy.scored[0]
    expected = _ref_gdpo(per_func.tolist(), [2.0, 0.5], 4)
    torch.testing.assert_close(trained.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(spy.advantage_inputs[0].cpu(), trained)  # the advantages start from them
    weighted = (per_func * torch.tensor([2.0, 0.5], dtype=torch.float64)).nansum(dim=1)
    assert not torch.allclose(trained.double(), weighted)
    scalars = read_scalars(trainer.logger.log_dir)
    assert scalars["train/reward"][0][1] == pytest.approx(weighted.mean().item(), rel=1e-5)


def test_validation_rewards_stay_the_weighted_sum(assets):
    rewards = {"funcs": ["tag_count", "format"], "aggregation": "normalize_then_sum"}
    module = make_module(assets, rewards=rewards, loss=dict(scale_rewards="batch"))
    completions = ["<think>a</think>", "<answer>b</answer>", "x", "<think>c</think><answer>d</answer>"]
    rollout = Rollout(None, torch.tensor([0, 0, 1, 1]), torch.zeros(4, 3), torch.ones(4, 3), completions)
    batch = {"prompt": ["p", "q"], "id": ["a", "b"]}
    module.train()
    trained, per_func = module.rollouts.score(rollout, batch)
    module.eval()
    shown, _ = module.rollouts.score(rollout, batch)
    torch.testing.assert_close(shown, per_func.nansum(dim=1).float())
    assert not torch.allclose(trained, shown)


def test_the_overlong_reward_gets_each_completions_token_count_and_the_budget(
    assets, data_kwargs, tmp_path, monkeypatch
):
    rewards = {"funcs": ["format", "overlong"], "kwargs": {"overlong": {"buffer": 20}}}
    module = make_module(assets, rewards=rewards, sampling=dict(max_completion_length=40))
    module.configure_model()
    spy = _Spy(monkeypatch, module)
    fit(module, data_kwargs, tmp_path, steps=1)
    lengths = spy.rollouts[0].completion_mask.sum(-1).tolist()
    _, per_func = spy.scored[0]
    expected = [0.0 if n <= 20 else (20 - n) / 20 for n in lengths]  # 0 up to 40 - 20 tokens, -1 at 40
    assert per_func[:, 1].tolist() == pytest.approx(expected)
    assert min(expected) == -1.0 and max(expected) > -1.0  # both a cut completion and a shorter one


# --------------------------------------------------------------------------------------------------------------
# Reference sync
# --------------------------------------------------------------------------------------------------------------


def test_sync_reference_mixes_the_policy_into_the_reference(assets):
    module = make_module(assets, loss=dict(beta=0.04, ref_sync_steps=1, ref_sync_alpha=0.3))
    module.configure_model()
    with torch.no_grad():
        for weight in module.model.parameters():
            weight.add_(0.01 * torch.randn_like(weight))
    policy = {name: w.detach().double().clone() for name, w in module.model.named_parameters()}
    reference = {name: w.detach().double().clone() for name, w in module.reference.model.named_parameters()}
    distance = module.reference.distance(module.model)
    module.reference.sync(module.model)
    squared = 0.0
    for name, weight in module.reference.model.named_parameters():
        expected = 0.3 * policy[name] + 0.7 * reference[name]
        torch.testing.assert_close(weight.double(), expected, rtol=1e-6, atol=1e-7, msg=name)
        squared += float(((policy[name] - reference[name]) ** 2).sum())
    assert distance.item() == pytest.approx(math.sqrt(squared), rel=1e-6) and squared > 0  # float32 differences
    assert module.reference.distance(module.model).item() == pytest.approx(0.7 * distance.item(), rel=1e-5)
    assert not any(w.requires_grad for w in module.reference.model.parameters())


class _PolicySnapshots(L.Callback):
    """The policy's weights (float64) after each batch, by the optimizer steps done."""

    def __init__(self):
        self.by_step: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.by_step[trainer.global_step] = {
            n: w.detach().double().clone() for n, w in pl_module.model.named_parameters()
        }


@pytest.mark.parametrize(("num_iterations", "every", "synced_at"), [(1, 2, [2, 4]), (2, 3, [4, 6])])
def test_the_reference_follows_the_policy_every_ref_sync_steps(
    assets, data_kwargs, tmp_path, num_iterations, every, synced_at
):
    """After the batches in which the optimizer step count reaches a multiple of ``ref_sync_steps``, and only then,
    the reference becomes alpha * policy + (1 - alpha) * reference; the sync is logged at those steps."""
    alpha = 0.6
    module = make_module(
        assets,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05),
        loss=dict(beta=0.04, ref_sync_steps=every, ref_sync_alpha=alpha, num_iterations=num_iterations),
        rewards=dict(funcs=[TEXT_LENGTH]),
    )
    module.configure_model()
    expected = {n: w.detach().double().clone() for n, w in module.reference.model.named_parameters()}
    snapshots = _PolicySnapshots()
    L.seed_everything(0)
    trainer = quiet_trainer(
        max_steps=4 if num_iterations == 1 else 6, logger=TensorBoardLogger(tmp_path, name="run"), callbacks=[snapshots]
    )
    trainer.fit(module, datamodule=ViVQAXDataModule(**data_kwargs, batch_size=2, shuffle=False))
    for step in synced_at:
        expected = {n: alpha * snapshots.by_step[step][n] + (1 - alpha) * expected[n] for n in expected}
    for name, weight in module.reference.model.named_parameters():
        torch.testing.assert_close(weight.double(), expected[name], rtol=1e-5, atol=1e-6, msg=name)
    scalars = read_scalars(trainer.logger.log_dir)
    # logged after every batch, at the batch's index: 1 for the batches that synced
    batches = 4 if num_iterations == 1 else 3
    synced = [float((b + 1) * num_iterations in synced_at) for b in range(batches)]
    assert scalars["train/ref_sync/synced"] == list(enumerate(synced))
    distance = [value for _, value in scalars["train/ref_sync/distance"]]
    assert len(distance) == batches and all(value > 0 for value in distance)


def test_reference_sync_with_lora_is_refused_before_the_first_step(assets, data_kwargs, tmp_path):
    module = make_module(assets, lora=dict(r=4), loss=dict(beta=0.04, ref_sync_steps=2))
    with pytest.raises(ConfigError, match=r"loss.ref_sync_steps needs full fine-tuning: with LoRA"):
        fit(module, data_kwargs, tmp_path, steps=1)
    assert module.global_step == 0


class _TwoProcesses:
    """Stands in for a 2-process trainer whose ``all_gather`` stacks what both processes send, rank-major."""

    def __init__(self, rank: int, values_per_rank: list[torch.Tensor]):
        self.world_size, self.global_rank = 2, rank
        self.strategy = self
        self.values_per_rank = values_per_rank

    def all_gather(self, tensor, group=None, sync_grads=False):
        if tensor.ndim == 0:  # the counts
            return torch.tensor([len(v) for v in self.values_per_rank])
        width = len(tensor)
        return torch.stack([torch.cat([v, torch.full((width - len(v),), torch.nan)]) for v in self.values_per_rank])


def test_the_entropy_threshold_is_taken_over_every_processs_tokens(assets):
    """Processes with different token counts: each one's threshold comes from all the tokens, so they agree."""
    local = [torch.tensor([0.1, 2.0, 0.5]), torch.tensor([3.0, 1.0, 4.0, 0.2, 0.3])]
    everyone = torch.cat(local)
    for rank in (0, 1):
        module = make_module(assets)
        module._trainer = _TwoProcesses(rank, local)
        gathered, sizes = module.update.gathered(local[rank])
        assert torch.equal(gathered, everyone) and sizes == [3, 5]
    assert _ref_threshold(everyone.tolist(), 0.5) != _ref_threshold(local[0].tolist(), 0.5)


def test_kl_in_the_reward_is_taken_from_the_rewards_before_the_advantages_and_left_out_of_the_loss(
    assets, data_kwargs, tmp_path, monkeypatch
):
    """Two steps (the second's policy has moved from the reference): the advantages start from each reward minus beta
    times the completion's summed k2 between the sampling policy's and the reference's log-probs, the loss gets the
    same reference log-probs and adds no KL term, and ``train/kl`` is logged."""
    loss = dict(beta=0.5, kl_in_reward=True, kl_estimator="k2", advantage_estimator="reinforce_pp_baseline")
    module = make_module(assets, loss={**loss, "scale_rewards": "batch"})
    module.configure_model()
    spy = _Spy(monkeypatch, module)
    penalties: list[tuple] = []
    original_penalty = update_stage.sequence_kl_penalty

    def sequence_kl_penalty(logps, ref_logps, mask, estimator):
        penalty = original_penalty(logps, ref_logps, mask, estimator)
        penalties.append((logps.clone(), ref_logps.clone(), mask.clone(), estimator, penalty.clone()))
        return penalty

    monkeypatch.setattr(update_stage, "sequence_kl_penalty", sequence_kl_penalty)
    trainer = fit(module, data_kwargs, tmp_path, steps=2)
    assert len(penalties) == 2 and len(spy.advantage_inputs) == 2
    for step, (logps, ref_logps, mask, estimator, penalty) in enumerate(penalties):
        assert estimator == "k2"
        d = logps.double() - ref_logps.double()
        expected = (0.5 * d.square() * mask).sum(dim=1)
        torch.testing.assert_close(penalty.double(), expected, rtol=1e-5, atol=1e-7)
        rewards = spy.scored[step][0]
        torch.testing.assert_close(spy.advantage_inputs[step].cpu().double(), rewards.double() - 0.5 * expected.cpu())
        calls = spy.calls[step:]  # one micro-batch a step
        assert calls[0]["kl_in_reward"] and torch.equal(calls[0]["ref_logps"], ref_logps)
    assert penalties[1][4].abs().sum() > 0  # the policy has moved: a penalty to take
    scalars = read_scalars(trainer.logger.log_dir)
    assert len(scalars["train/kl"]) == 2
