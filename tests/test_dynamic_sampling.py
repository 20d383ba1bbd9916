"""Dynamic sampling: the group filter against float64, the choice of groups, the joined rollout against the plain
one, each option with teeth, the data position across kill-and-resume, and two processes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import statistics
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from grpo_lightning.callbacks import StepCheckpoint, continue_logger_version
from grpo_lightning.cli import main as cli_main
from grpo_lightning.config import SamplingConfig
from grpo_lightning.data import ResumableDataLoader, ViVQAXDataModule
from grpo_lightning.dynamic_sampling import check_validation_schedule, choose_groups, informative_groups
from grpo_lightning.errors import ConfigError
from grpo_lightning.rewards import RewardError
from grpo_lightning.rollout import join_groups
from scripts.tb_scalars import read_scalars
from tests.helpers import fit_on_two_processes, flat_params, make_module, quiet_trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
G = 4

#: Every reward call's groups, as the prompt id of each group in order (one entry per round of sampling).
CALLS: list[list[str]] = []
#: The reward of the next call raises this on its ``at_call``-th call (1-based).
FAULT: dict = {"at_call": None, "error": None}


def flat(prompt_id: str) -> bool:
    """Prompts whose completions all score the same: half of them, fixed by the id alone."""
    return int(hashlib.md5(prompt_id.encode()).hexdigest(), 16) % 2 == 0


def id_reward(completions, solution, id, **kwargs):  # noqa: A002 - `id` is the batch field's name
    """0.5 for every completion of a `flat` prompt; else the completion's place in its group / 10 (a spread of 0.13),
    plus its length, so every update moves the weights. Records the groups of every call."""
    groups = [id[i] for i in range(0, len(id), G)]
    CALLS.append(groups)
    if FAULT["at_call"] == len(CALLS):
        raise FAULT["error"]
    return [
        0.5 if flat(i) else (j % G) / 10 + len(text) / 500
        for j, (i, text) in enumerate(zip(id, completions, strict=True))
    ]


def small_spread_reward(completions, solution, id, **kwargs):  # noqa: A002
    """A spread of std 0.0129 for `flat` prompts, 1.29 for the others."""
    return [(j % G) / (100 if flat(i) else 1) for j, i in enumerate(id)]


def equal_reward(completions, solution, **kwargs):
    return [1.0] * len(completions)


def make(assets, sampling=None, reward="id_reward", **overrides):
    return make_module(
        assets,
        rewards=dict(funcs=[f"tests.test_dynamic_sampling:{reward}"]),
        sampling=dict(num_generations=G, max_completion_length=8, **(sampling or {})),
        logging=dict(completions_every_n_steps=0, **overrides.pop("logging", {})),
        **overrides,
    )


def fit(
    module,
    data_kwargs,
    save_dir,
    max_steps,
    ckpt_path=None,
    limit_train_batches=None,
    checkpoints=None,
    short_step_warnings=False,
):
    """A fit of ``module`` on the demo data (batches of 2, shuffled), resumable from ``ckpt_path``; dynamic
    sampling's warnings about steps short of groups are silenced unless ``short_step_warnings``."""
    L.seed_everything(5)
    trainer = quiet_trainer(
        max_steps=max_steps,
        logger=TensorBoardLogger(save_dir, name="run"),
        callbacks=[checkpoints] if checkpoints else [],
        enable_checkpointing=checkpoints is not None,
        limit_train_batches=limit_train_batches,
    )
    continue_logger_version(trainer, ckpt_path)
    data = ViVQAXDataModule(**data_kwargs, batch_size=2, shuffle=True, seed=3)
    with contextlib.nullcontext() if short_step_warnings else warnings.catch_warnings():
        if not short_step_warnings:
            warnings.filterwarnings("ignore", message="Dynamic sampling, step")
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer


# ------------------------------------------------------------------------------------------- the pure parts
@pytest.mark.parametrize(
    ("rewards", "min_std"),
    [
        ([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.1, 0.1, 0.1, 0.1], 0.0),
        ([0.3, 0.3, 0.3, 0.3, 0.3, 0.3000001, 0.3, 0.3, 2.0, 0.0, 1.0, 3.0], 0.0),
        ([0.0, 0.01, 0.02, 0.03, 0.0, 0.5, 1.0, 1.5, 7.0, 7.0, 7.0, 7.0], 0.1),
        ([0.0, 0.01, 0.02, 0.03, 0.0, 0.5, 1.0, 1.5, float("nan"), 1.0, 2.0, 3.0], 0.0129),
        ([float("nan"), 1.0, float("nan"), float("nan"), 0.0, float("nan"), 2.0, 2.0, 0.0, 0.0, 0.0, 0.0], 0.0),
    ],
)
def test_informative_groups_against_a_float64_loop(rewards, min_std):
    expected = []
    for p in range(len(rewards) // G):
        group = [r for r in rewards[p * G : (p + 1) * G] if not math.isnan(r)]  # NaN: no reward, left out
        spread = statistics.stdev(group) if len(group) > 1 else 0.0
        expected.append(len(set(group)) > 1 and spread > min_std)
    got = informative_groups(torch.tensor(rewards, dtype=torch.float32), G, min_std)
    assert got.tolist() == expected


@pytest.mark.parametrize(
    ("flags", "quota", "chosen", "filled"),
    [
        ([True, True], 2, [0, 1], 0),
        ([False, True, True, False, True, True], 2, [1, 2], 0),  # the first informative ones, in the order drawn
        ([False, True, False, False, False, True], 2, [1, 5], 0),
        ([False, False, True, False, False, False], 2, [0, 2], 1),  # short: the first uninformative one fills up
        ([False, False, False, False], 2, [0, 1], 2),
        ([True, False, True, False], 3, [0, 1, 2], 1),
    ],
)
def test_choose_groups(flags, quota, chosen, filled):
    assert choose_groups(flags, quota) == (chosen, filled)


def test_choose_groups_needs_enough_groups():
    with pytest.raises(ValueError, match="cannot choose 3 groups out of 2"):
        choose_groups([True, True], 3)


def test_options_out_of_range_are_refused():
    with pytest.raises(ConfigError, match="min_group_reward_std"):
        SamplingConfig(dynamic_sampling=True, min_group_reward_std=-0.1)
    with pytest.raises(ConfigError, match="max_refill_rounds"):
        SamplingConfig(max_refill_rounds=-1)


def test_the_options_are_in_fit_help(capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--help"])
    out = capsys.readouterr().out
    for option in ("dynamic_sampling", "min_group_reward_std", "max_refill_rounds", "rollouts_every_n_steps"):
        assert f"--model.sampling.{option}" in out or f"--model.logging.{option}" in out, option
    assert "DAPO's dynamic sampling" in out


# ------------------------------------------------------------------------------ the joined rollout = the plain one
@pytest.mark.parametrize("family", ["internvl", "qwen2_vl"])
def test_a_rollout_joined_from_chosen_groups_equals_the_plain_rollout_of_those_prompts(assets, data_kwargs, family):
    """Tokens, visual inputs and log-probs of the joined rollout are those of its groups in their own rollouts, and
    its prompts are what the adapter makes of the chosen samples directly."""
    module = make(assets, family=family)
    module.configure_model()
    data = ViVQAXDataModule(**data_kwargs, batch_size=3, shuffle=False)
    data.setup("fit")
    loader = iter(data.train_dataloader())
    batches = [next(loader), next(loader)]
    torch.manual_seed(0)
    rollouts = [module.rollouts.generate(batch, G, do_sample=True) for batch in batches]
    chosen = [(0, 2), (1, 0), (1, 2)]
    pad = module.adapter.tokenizer.pad_token_id
    joined = join_groups([(rollouts[0], [2]), (rollouts[1], [0, 2])], G, pad)

    plain = module.adapter.prepare_prompts(
        [batches[r]["image"][p] for r, p in chosen], [batches[r]["prompt"][p] for r, p in chosen]
    )
    assert torch.equal(joined.prompts.input_ids, plain.input_ids)
    assert torch.equal(joined.prompts.attention_mask, plain.attention_mask)
    assert joined.prompts.texts == plain.texts
    for key in plain.token_aligned:
        assert torch.equal(joined.prompts.token_aligned[key], plain.token_aligned[key])
    for mine, theirs in zip(joined.prompts.visual, plain.visual, strict=True):
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert joined.prompt_index.tolist() == [0] * G + [1] * G + [2] * G

    rows = [(r, p * G + g) for r, p in chosen for g in range(G)]
    assert joined.completions == [rollouts[r].completions[j] for r, j in rows]
    separate = [module.update.completion_logps(module.model, rollout) for rollout in rollouts]
    together = module.update.completion_logps(module.model, joined)
    for i, (r, j) in enumerate(rows):
        width = int(rollouts[r].completion_mask[j].sum())
        assert torch.equal(joined.completion_ids[i, :width], rollouts[r].completion_ids[j, :width])
        assert torch.equal(
            joined.completion_mask[i],
            torch.nn.functional.pad(
                rollouts[r].completion_mask[j],
                (0, joined.completion_mask.shape[1] - rollouts[r].completion_mask.shape[1]),
            ),
        )
        torch.testing.assert_close(together[i, :width], separate[r][j, :width], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ the options, in a fit
def test_off_by_default_the_step_trains_its_own_batch_and_takes_no_more(assets, data_kwargs, tmp_path, monkeypatch):
    assert SamplingConfig().dynamic_sampling is False
    monkeypatch.setattr(ResumableDataLoader, "next_batch", lambda self: pytest.fail("no refill without the option"))
    CALLS.clear()
    trainer = fit(make(assets), data_kwargs, tmp_path, max_steps=3)
    assert trainer.train_dataloader.state_dict() == {"batches_done": 3}
    assert len(CALLS) == 3 and all(len(groups) == 2 for groups in CALLS)
    assert not [tag for tag in read_scalars(trainer.logger.log_dir) if "dynamic_sampling" in tag]


def test_on_every_trained_group_has_a_spread_and_the_refills_are_logged(assets, data_kwargs, tmp_path):
    CALLS.clear()
    trainer = fit(make(assets, sampling=dict(dynamic_sampling=True)), data_kwargs, tmp_path, max_steps=4)
    sampled_groups = [group for call in CALLS for group in call]
    scalars = read_scalars(trainer.logger.log_dir)
    extra = [value for _, value in scalars["train/dynamic_sampling/extra_rounds"]]
    assert len(CALLS) == 4 + sum(extra) and sum(extra) > 0, "some step needed further prompts"
    dropped = [value for _, value in scalars["train/dynamic_sampling/dropped_fraction"]]
    assert sum(dropped) > 0
    # the fraction logged is the fraction of `flat` prompts among those sampled in the step
    calls = iter(CALLS)
    for rounds, fraction in zip(extra, dropped, strict=True):
        groups = [group for _ in range(int(rounds) + 1) for group in next(calls)]
        assert fraction == pytest.approx(sum(map(flat, groups)) / len(groups))
    assert [value for _, value in scalars["train/dynamic_sampling/filled_fraction"]] == [0.0] * 4
    assert scalars["train/frac_reward_zero_std"] and all(v == 0.0 for _, v in scalars["train/frac_reward_zero_std"])
    # the refills came from the training data: the loader's position counts them, no prompt was seen twice
    assert trainer.train_dataloader.state_dict() == {"batches_done": len(CALLS)}
    assert len(set(sampled_groups)) == len(sampled_groups)


def test_min_group_reward_std_leaves_out_small_spreads(assets, data_kwargs, tmp_path):
    def dropped(min_std, folder):
        module = make(
            assets, reward="small_spread_reward", sampling=dict(dynamic_sampling=True, min_group_reward_std=min_std)
        )
        trainer = fit(module, data_kwargs, tmp_path / folder, max_steps=2)
        return [value for _, value in read_scalars(trainer.logger.log_dir)["train/dynamic_sampling/dropped_fraction"]]

    assert dropped(0.0, "zero") == [0.0, 0.0]
    assert all(value > 0 for value in dropped(0.1, "tenth"))


@pytest.mark.parametrize("rounds", [0, 2])
def test_max_refill_rounds_bounds_the_rounds_then_equal_groups_fill_up_with_a_warning(
    assets, data_kwargs, tmp_path, rounds
):
    module = make(assets, reward="equal_reward", sampling=dict(dynamic_sampling=True, max_refill_rounds=rounds))
    with pytest.warns(UserWarning) as caught:
        trainer = fit(module, data_kwargs, tmp_path, max_steps=3, short_step_warnings=True)
    scalars = read_scalars(trainer.logger.log_dir)
    assert [v for _, v in scalars["train/dynamic_sampling/extra_rounds"]] == [float(rounds)] * 3
    assert [v for _, v in scalars["train/dynamic_sampling/dropped_fraction"]] == [1.0] * 3
    assert [v for _, v in scalars["train/dynamic_sampling/filled_fraction"]] == [1.0] * 3
    assert trainer.train_dataloader.state_dict() == {"batches_done": 3 * (1 + rounds)}
    messages = [str(w.message) for w in caught if "Dynamic sampling" in str(w.message)]
    # at the 1st and 2nd short step, not the 3rd (then at the 4th, 8th, ...)
    assert [m.split(":")[0] for m in messages] == ["Dynamic sampling, step 0", "Dynamic sampling, step 1"]
    assert f"only 0 of 2 groups had rewards with a spread (std above 0.0) after {rounds} extra rounds" in messages[0]


def silent_reward(completions, **kwargs):
    return [None] * len(completions)


def test_rewards_that_never_score_stop_the_run_after_three_steps_not_three_rounds(assets, data_kwargs, tmp_path):
    """A step of dynamic sampling scores several rounds; the rewards' patience (3) still counts steps."""
    module = make(assets, reward="silent_reward", sampling=dict(dynamic_sampling=True, max_refill_rounds=2))
    with pytest.raises(RewardError, match=r"No reward \('silent_reward'\) scored any completion in the first 3 "):
        fit(module, data_kwargs, tmp_path, max_steps=5, short_step_warnings=True)
    assert module.global_step == 2  # stopped in the third step, after its 3 rounds of sampling
    assert module.trainer.train_dataloader.state_dict() == {"batches_done": 3 * (1 + 2)}


def test_a_loader_that_cannot_refill_is_refused_with_what_to_do(assets, data_kwargs, tmp_path):
    class PlainData(ViVQAXDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(
                self.dataset("train"), batch_size=2, collate_fn=lambda s: {key: [x[key] for x in s] for key in s[0]}
            )

    module = make(assets, sampling=dict(dynamic_sampling=True))
    trainer = quiet_trainer(max_steps=1)
    with pytest.raises(
        ConfigError, match=r"must be a grpo_lightning.data.ResumableDataLoader \(.*sampling.dynamic_sampling: false"
    ):
        trainer.fit(module, datamodule=PlainData(**data_kwargs, batch_size=2))


# ------------------------------------------------------------------------------------------ kill and resume
def resumable_run(assets, data_kwargs, save_dir, max_steps, ckpt_path=None, limit_train_batches=None):
    module = make(
        assets,
        sampling=dict(dynamic_sampling=True, max_refill_rounds=3),
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - 0.1 * step),
    )
    checkpoints = StepCheckpoint(every_n_train_steps=2, save_last="link")
    trainer = fit(module, data_kwargs, save_dir, max_steps, ckpt_path, limit_train_batches, checkpoints)
    return trainer, module


def stopped_and_resumed(assets, data_kwargs, save_dir, stop_at, limit_train_batches=None, failure=False):
    """The prompt ids every reward call saw and the final weights of a run stopped after ``stop_at`` steps (by its
    end, or by a failure in the next step) and resumed with ``--ckpt_path last`` to 6 steps."""
    CALLS.clear()
    if failure:  # the reward fails in the step after stop_at (the straight run shows at which call that is)
        straight_calls = STRAIGHT[limit_train_batches][0]
        FAULT.update(at_call=sum(straight_calls[:stop_at]) + 1, error=RuntimeError("reward server down"))
        with pytest.raises(RuntimeError, match="reward server down"):
            resumable_run(assets, data_kwargs, save_dir, 6, limit_train_batches=limit_train_batches)
        # the failed call, and the calls that named the failing sample: the step is done again after the resume
        del CALLS[FAULT["at_call"] - 1 :]
        FAULT.update(at_call=None)
    else:
        resumable_run(assets, data_kwargs, save_dir, stop_at, limit_train_batches=limit_train_batches)
    last = save_dir / "run" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == stop_at
    position = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    _, module = resumable_run(assets, data_kwargs, save_dir, 6, "last", limit_train_batches)
    return list(CALLS), flat_params(module), position


#: limit_train_batches -> (calls per step, every call's groups, final weights) of the straight 6-step run.
STRAIGHT: dict = {}


def straight(assets, data_kwargs, tmp_path_factory, limit_train_batches):
    if limit_train_batches not in STRAIGHT:
        CALLS.clear()
        trainer, module = resumable_run(
            assets, data_kwargs, tmp_path_factory.mktemp("straight"), 6, limit_train_batches=limit_train_batches
        )
        rounds = [int(v) + 1 for _, v in read_scalars(trainer.logger.log_dir)["train/dynamic_sampling/extra_rounds"]]
        assert sum(rounds) == len(CALLS) and len(rounds) == 6
        STRAIGHT[limit_train_batches] = (rounds, list(CALLS), flat_params(module))
    return STRAIGHT[limit_train_batches]


@pytest.mark.slow
@pytest.mark.parametrize("failure", [False, True], ids=["end of fit", "failure"])
def test_refills_are_neither_replayed_nor_skipped_after_a_kill_and_resume(
    assets, data_kwargs, tmp_path, tmp_path_factory, failure
):
    rounds, calls, params = straight(assets, data_kwargs, tmp_path_factory, None)
    stop_at = next(step for step in range(2, 5) if rounds[step - 1] > 1)  # a step with refills before the stop
    resumed_calls, resumed_params, position = stopped_and_resumed(assets, data_kwargs, tmp_path, stop_at, None, failure)
    assert position == {"batches_done": sum(rounds[:stop_at])}
    assert resumed_calls == calls, "the same prompts, in the same rounds, in the same order"
    torch.testing.assert_close(resumed_params, params, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_step_whose_refills_use_up_the_epoch_resumes_into_the_next_epoch(
    assets, data_kwargs, tmp_path, tmp_path_factory
):
    """Epochs of 4 batches: refills use an epoch up before the loop has taken its 4 batches. The straight run's
    next step starts the next epoch; so does the run resumed from the checkpoint of that step."""
    rounds, calls, params = straight(assets, data_kwargs, tmp_path_factory, 4)
    used_up = [step for step in range(1, 6) if sum(rounds[:step]) % 4 == 0 and step % 4 != 0]
    assert used_up, f"no step of this data ends an epoch early: {rounds}"
    stop_at = used_up[0]
    resumed_calls, resumed_params, position = stopped_and_resumed(assets, data_kwargs, tmp_path, stop_at, 4)
    assert position["batches_done"] == 4 and "epoch" in position
    assert resumed_calls == calls
    torch.testing.assert_close(resumed_params, params, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ two processes
@pytest.mark.slow
def test_two_processes_agree_on_rounds_and_each_trains_its_share(assets, data_kwargs, tmp_path):
    fit_on_two_processes(
        assets,
        data_kwargs,
        tmp_path,
        reward="tests.test_dynamic_sampling:id_reward",
        num_generations=G,
        max_steps=3,
        options=(
            *("--model.sampling.dynamic_sampling", "true", "--model.sampling.max_refill_rounds", "3"),
            *("--model.loss.scale_rewards", "batch", "--model.logging.rollouts_every_n_steps", "1"),
        ),
    )

    run = tmp_path / "logs" / "demo" / "version_0"
    scalars = read_scalars(run)
    records = {
        step: [json.loads(line) for line in (run / "rollouts" / f"step={step}.jsonl").read_text().splitlines()]
        for step in range(3)
    }
    for step, groups in records.items():
        by_rank = [[g for g in groups if g["rank"] == rank] for rank in (0, 1)]
        # the same rounds on both processes, each round a batch of 2 prompts per process
        assert [sorted({g["round"] for g in mine}) for mine in by_rank] == [list(range(len(by_rank[0]) // 2))] * 2
        assert len(by_rank[0]) == len(by_rank[1])
        for mine in by_rank:
            trained = [g for g in mine if g["trained"]]
            assert len(trained) == 2, "each process trains batch_size / world_size groups"
            assert all(g["filtered"] == flat(g["prompt_id"]) for g in mine)
            assert all(not g["filtered"] for g in trained) or len([g for g in mine if not g["filtered"]]) < 2
            assert all(c["advantage"] is not None for g in trained for c in g["completions"])
        ids = [g["prompt_id"] for g in groups]
        assert len(set(ids)) == len(ids), "the processes take different prompts in every round"
        dropped = sum(g["filtered"] for g in groups) / len(groups)
        assert scalars["train/dynamic_sampling/dropped_fraction"][step][1] == pytest.approx(dropped)
        rounds = len({g["round"] for g in groups}) - 1
        assert scalars["train/dynamic_sampling/extra_rounds"][step][1] == rounds
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    position = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches_done"]
    assert position == sum(len({g["round"] for g in groups}) for groups in records.values())


@pytest.mark.slow
@pytest.mark.parametrize("forget", ["refills in the position", "the used-up epoch"])
def test_the_resume_checks_fail_without_each_piece_of_the_position(
    assets, data_kwargs, tmp_path, tmp_path_factory, monkeypatch, forget
):
    """The two tests above have teeth: a position that counts only the loop's own batches, or forgets that refills
    used its epoch up, gives the resumed run other prompts."""
    limit = None if forget == "refills in the position" else 4
    rounds, calls, params = straight(assets, data_kwargs, tmp_path_factory, limit)
    if forget == "refills in the position":
        stop_at = next(step for step in range(2, 5) if rounds[step - 1] > 1)
        position = {"batches_done": stop_at}
    else:
        stop_at = next(step for step in range(1, 6) if sum(rounds[:step]) % 4 == 0 and step % 4 != 0)
        position = {"batches_done": 4}
    load = ResumableDataLoader.load_state_dict
    monkeypatch.setattr(ResumableDataLoader, "load_state_dict", lambda self, state: load(self, position))
    resumed_calls, resumed_params, _ = stopped_and_resumed(assets, data_kwargs, tmp_path, stop_at, limit)
    assert resumed_calls != calls
    assert not torch.allclose(resumed_params, params, rtol=1e-5, atol=1e-6)


class _Split:
    def __init__(self, file):
        self.file = file


class _Trainer:
    def __init__(self, every_n_epoch, interval, limit=1.0, val_file="val.json"):
        self.check_val_every_n_epoch, self.val_check_interval, self.limit_val_batches = every_n_epoch, interval, limit
        self.datamodule = type("DataModule", (), {"splits": {"val": _Split(val_file)}})()


@pytest.mark.parametrize(
    "trainer, refused",
    [
        (_Trainer(1, 1.0), True),  # Lightning's defaults: validation at each epoch's end
        (_Trainer(2, 0.5), True),  # also at the epoch's end
        (_Trainer(None, 50), False),  # every 50 steps of the loop, as the shipped configs
        (_Trainer(1, 50), False),  # every 50 batches within the epoch: the loop's own count
        (_Trainer(1, 1.0, limit=0), False),  # validation off
        (_Trainer(1, 1.0, val_file=None), False),  # no validation data
    ],
)
def test_dynamic_sampling_refuses_validation_at_the_end_of_an_epoch(trainer, refused):
    if refused:
        with pytest.raises(ConfigError, match=r"trainer.val_check_interval: N \(an integer\)"):
            check_validation_schedule(trainer)
    else:
        check_validation_schedule(trainer)
