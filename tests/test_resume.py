"""Resume is exact: 6 steps straight equal 3 steps, stop, and ``ckpt_path="last"`` to 6, from the checkpoint written
at the end of a shorter run or on a failure, with the curves continued in the same log folder."""

from __future__ import annotations

import os
import shutil
import signal
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from grpo_lightning.callbacks import StepCheckpoint, continue_logger_version
from grpo_lightning.data import ResumableDataLoader, ResumableSampler, ViVQAXDataModule, read_samples
from grpo_lightning.module import GRPOModule
from scripts.tb_scalars import read_scalars
from tests.helpers import COMPOSED_UPDATE, LOSS_COMBINATIONS, arm, flat_params, make_module, quiet_trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(
    assets,
    data_kwargs,
    save_dir,
    max_steps,
    ckpt_path=None,
    every_n_train_steps=2,
    lr_lambda=None,
    callbacks=(),
    limit_train_batches=None,
    loss=None,
):
    """A user's run: StepCheckpoint every 2 steps, an automatically numbered TensorBoard version, and on resume
    the version folder of the checkpoint again (as the command line does); ``loss`` adds to its loss options."""
    L.seed_everything(7)
    module = make_module(
        assets,
        rewards=dict(funcs=["tests.helpers:characters_reward"]),  # made to fail by `arm`
        loss=dict(beta=0.04, **(loss or {})),
        logging=dict(completions_every_n_steps=0),
        # a schedule that changes every step: a resumed run that restarted it would end with other weights
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda or (lambda step: 1.0 - 0.15 * step)
        ),
    )
    checkpoints = StepCheckpoint(every_n_train_steps=every_n_train_steps, save_last="link")
    trainer = quiet_trainer(
        max_steps=max_steps,
        logger=TensorBoardLogger(save_dir, name="run"),
        callbacks=[*callbacks, checkpoints],
        enable_checkpointing=True,
        limit_train_batches=limit_train_batches,
    )
    continue_logger_version(trainer, ckpt_path)
    data = ViVQAXDataModule(**data_kwargs, batch_size=2, shuffle=True, seed=3)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer, module


_STRAIGHT: dict[str, tuple[torch.Tensor, dict]] = {}


def straight_run(assets, data_kwargs, tmp_path_factory) -> tuple[torch.Tensor, dict[str, list]]:
    """Weights and scalars of 6 steps without a stop (shared by the tests of this file)."""
    key = str(assets)
    if key not in _STRAIGHT:
        arm(None)
        save_dir = tmp_path_factory.mktemp("straight")
        trainer, module = run(assets, data_kwargs, save_dir, max_steps=6)
        assert trainer.global_step == 6
        _STRAIGHT[key] = (flat_params(module), read_scalars(save_dir))
    return _STRAIGHT[key]


@pytest.fixture
def straight(assets, data_kwargs, tmp_path_factory):
    return straight_run(assets, data_kwargs, tmp_path_factory)


def checkpoint_steps(folder: Path) -> dict[str, int]:
    return {p.name: torch.load(p, weights_only=True)["global_step"] for p in sorted(folder.iterdir())}


def assert_one_continued_curve(save_dir: Path, straight_scalars: dict[str, list]) -> None:
    """One version folder whose curves have steps 0..5 once each, with the straight run's values."""
    assert sorted(p.name for p in (save_dir / "run").iterdir()) == ["version_0"]
    resumed = read_scalars(save_dir / "run" / "version_0")
    assert [step for step, _ in resumed["train/reward"]] == [0, 1, 2, 3, 4, 5]
    # the same samples drawn and scored the same
    expected = [v for _, v in straight_scalars["train/reward"]]
    assert [v for _, v in resumed["train/reward"]] == pytest.approx(expected, rel=1e-6)
    assert len(set(expected)) > 1
    assert resumed["train/learning_rate"] == straight_scalars["train/learning_rate"]
    assert straight_scalars["train/learning_rate"][0][1] > straight_scalars["train/learning_rate"][-1][1]


@pytest.mark.slow
def test_resuming_the_end_of_fit_checkpoint_reproduces_the_straight_run(assets, data_kwargs, tmp_path, straight):
    straight_params, straight_scalars = straight
    arm(None)
    first, _ = run(assets, data_kwargs, tmp_path, max_steps=3)
    folder = Path(first.log_dir) / "checkpoints"
    # 3 is not a multiple of 2: saved because training ended there, at step 3 of the first epoch's 32 batches
    assert checkpoint_steps(folder) == {"last.ckpt": 3, "step=2.ckpt": 2, "step=3.ckpt": 3}
    last = torch.load(folder / "last.ckpt", weights_only=True)
    fit_loop = last["loops"]["fit_loop"]
    assert fit_loop["state_dict"]["combined_loader"] == [{"batches_done": 3}]
    assert fit_loop["epoch_progress"]["current"]["completed"] == 0, "the epoch is not over after 3 of 32 batches"
    assert "ViVQAXDataModule" not in last, "the position travels with the dataloader, once"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed, resumed_module = run(assets, data_kwargs, tmp_path, max_steps=6, ckpt_path="last")
    assert resumed.ckpt_path == str(folder / "last.ckpt")
    assert not [w for w in caught if "resum" in str(w.message)], [str(w.message) for w in caught]
    assert resumed.global_step == 6
    torch.testing.assert_close(flat_params(resumed_module), straight_params, rtol=1e-5, atol=1e-6)
    # the resumed run wrote into the same folder, and last.ckpt follows it
    assert Path(resumed.log_dir) == Path(first.log_dir)
    steps = checkpoint_steps(folder)
    assert steps == {"last.ckpt": 6, "step=2.ckpt": 2, "step=3.ckpt": 3, "step=4.ckpt": 4, "step=6.ckpt": 6}
    assert os.readlink(folder / "last.ckpt") == "step=6.ckpt"
    assert_one_continued_curve(tmp_path, straight_scalars)


@pytest.mark.slow
def test_the_adaptive_entropy_coefficient_resumes_exactly(assets, data_kwargs, tmp_path):
    """3 steps, stop, resume to 6 equal 6 straight: the weights, and the coefficient, which the checkpoint holds with
    the last step's entropy (a resumed run that started from the configured coefficient, and no entropy, would apply
    no bonus to its first step). The target lies above the tiny model's entropy, so the coefficient rises each step."""
    loss = dict(entropy_coef=0.02, adaptive_entropy=True, entropy_target=50.0, entropy_coef_delta=0.01)
    arm(None)
    _, straight_module = run(assets, data_kwargs, tmp_path / "straight", max_steps=6, loss=loss)
    first, first_module = run(assets, data_kwargs, tmp_path / "stopped", max_steps=3, loss=loss)
    saved = torch.load(Path(first.log_dir) / "checkpoints" / "last.ckpt", weights_only=True)["entropy_control"]
    assert saved == first_module.update.entropy.state_dict()
    assert saved["entropy_coef"] == pytest.approx(0.05, abs=1e-12) and saved["last_entropy"] < 50.0
    resumed, resumed_module = run(assets, data_kwargs, tmp_path / "stopped", max_steps=6, ckpt_path="last", loss=loss)
    assert resumed.global_step == 6
    assert resumed_module.update.entropy.state_dict() == straight_module.update.entropy.state_dict()
    assert straight_module.update.entropy.coef == pytest.approx(0.08, abs=1e-12)
    torch.testing.assert_close(flat_params(resumed_module), flat_params(straight_module), rtol=1e-5, atol=1e-6)
    scalars = read_scalars(tmp_path / "stopped" / "run" / "version_0")["train/entropy_coef"]
    straight_scalars = read_scalars(tmp_path / "straight" / "run" / "version_0")["train/entropy_coef"]
    assert scalars == straight_scalars and [step for step, _ in scalars] == [0, 1, 2, 3, 4, 5]


_DEFAULT_OBJECTIVE: dict[str, torch.Tensor] = {}


def default_objective_weights(assets, data_kwargs, tmp_path_factory) -> torch.Tensor:
    """The weights after 6 optimizer steps of :data:`COMPOSED_UPDATE` with the default objective (ppo, k3, grpo, no
    entropy bonus), shared by the composed options' tests."""
    key = str(assets)
    if key not in _DEFAULT_OBJECTIVE:
        arm(None)
        _, module = run(assets, data_kwargs, tmp_path_factory.mktemp("default"), max_steps=6, loss=COMPOSED_UPDATE)
        _DEFAULT_OBJECTIVE[key] = flat_params(module)
    return _DEFAULT_OBJECTIVE[key]


@pytest.mark.slow
@pytest.mark.parametrize("combination", list(LOSS_COMBINATIONS))
def test_each_combination_of_loss_options_resumes_exactly(assets, data_kwargs, tmp_path, tmp_path_factory, combination):
    """6 optimizer steps straight (3 rollouts of 2 steps each, num_iterations 2, in micro-batches) equal 4 steps,
    stop, and a resume to 6, with each combination of the loss options; the options' own metrics are logged at every
    step, the same after the resume, and the combination trains other weights than the default objective does."""
    entry = LOSS_COMBINATIONS[combination]
    loss = {**COMPOSED_UPDATE, **entry.options}
    arm(None)
    _, straight_module = run(assets, data_kwargs, tmp_path / "straight", max_steps=6, loss=loss)
    first, _ = run(assets, data_kwargs, tmp_path / "stopped", max_steps=4, loss=loss)
    assert first.global_step == 4
    resumed, resumed_module = run(assets, data_kwargs, tmp_path / "stopped", max_steps=6, ckpt_path="last", loss=loss)
    assert resumed.global_step == 6
    straight_params = flat_params(straight_module)
    torch.testing.assert_close(flat_params(resumed_module), straight_params, rtol=1e-5, atol=1e-6)
    assert resumed_module.update.entropy.state_dict() == straight_module.update.entropy.state_dict()
    straight_scalars = read_scalars(tmp_path / "straight" / "run" / "version_0")
    resumed_scalars = read_scalars(tmp_path / "stopped" / "run" / "version_0")
    steps = [step for step, _ in straight_scalars["train/reward"]]
    assert [step for step, _ in resumed_scalars["train/reward"]] == steps == [0, 1, 2]  # one per rollout
    for tag in entry.metrics:
        assert [step for step, _ in straight_scalars[tag]] == steps, tag
        assert any(value != 0 for _, value in straight_scalars[tag]), f"{tag} stayed 0: the option never acted"
        resumed_values = [value for _, value in resumed_scalars[tag]]
        assert resumed_values == pytest.approx([value for _, value in straight_scalars[tag]], rel=1e-5, abs=1e-6), tag
    default = default_objective_weights(assets, data_kwargs, tmp_path_factory)
    assert not torch.allclose(straight_params, default, rtol=1e-5, atol=1e-6), "the options changed nothing"


@pytest.mark.slow
@pytest.mark.parametrize("forget", ["data position", "rng states", "step end"])
def test_the_resume_check_fails_without_each_piece_of_restored_state(
    assets, data_kwargs, tmp_path, monkeypatch, straight, forget
):
    """The test above has teeth: drop any piece of the restored state and the runs differ."""
    arm(None)
    if forget == "step end":  # the end-of-fit checkpoint with the loop state Lightning has at on_train_end
        monkeypatch.setattr(StepCheckpoint, "on_save_checkpoint", lambda self, trainer, module, checkpoint: None)
    run(assets, data_kwargs, tmp_path, max_steps=3)
    if forget == "data position":
        monkeypatch.setattr(ResumableDataLoader, "load_state_dict", lambda self, state: None)
    elif forget == "rng states":
        monkeypatch.setattr(GRPOModule, "on_load_checkpoint", lambda self, checkpoint: None)
    _, resumed_module = run(assets, data_kwargs, tmp_path, max_steps=6, ckpt_path="last")
    assert not torch.allclose(flat_params(resumed_module), straight[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_failure_at_step_4_leaves_step_3_which_resumes_exactly(assets, data_kwargs, tmp_path, straight):
    straight_params, straight_scalars = straight
    arm(4, RuntimeError("the reward server is unreachable"))
    with pytest.raises(RuntimeError, match="the reward server is unreachable") as failure:
        run(assets, data_kwargs, tmp_path, max_steps=6)
    folder = tmp_path / "run" / "version_0" / "checkpoints"
    assert checkpoint_steps(folder) == {"last.ckpt": 3, "step=2.ckpt": 2, "step=3.ckpt": 3}
    assert failure.value.__notes__ == [
        f"Training stopped (RewardError): saved step=3 checkpoint to {folder / 'last.ckpt'}; fix the cause and "
        "resume with --ckpt_path last."
    ]
    arm(None)
    resumed, resumed_module = run(assets, data_kwargs, tmp_path, max_steps=6, ckpt_path="last")
    assert resumed.global_step == 6
    torch.testing.assert_close(flat_params(resumed_module), straight_params, rtol=1e-5, atol=1e-6)
    assert_one_continued_curve(tmp_path, straight_scalars)


class TruncateOnceTrainingStarts(L.Callback):
    """Truncates an image after the start-up checks, as a copy still in progress on a network file system would."""

    def __init__(self, image: Path):
        self.image = image

    def on_train_start(self, trainer, pl_module):
        self.image.write_bytes(self.image.read_bytes()[:200])


def copy_with_victim(data_kwargs: dict[str, str], tmp_path: Path, batch: int) -> tuple[dict[str, str], Path]:
    """The data with its own copy of the images, and the first image of training batch ``batch`` (0-based, in the
    order of seed 3, 2 prompts a batch)."""
    images = tmp_path / "images"
    shutil.copytree(data_kwargs["train_image_dir"], images)
    samples, _ = read_samples(data_kwargs["train_file"])
    order = list(ResumableSampler(samples, num_replicas=1, rank=0, shuffle=True, seed=3))
    return {**data_kwargs, "train_image_dir": str(images)}, images / samples[order[2 * batch]].image


@pytest.mark.slow
def test_an_unreadable_image_in_batch_4_leaves_step_3_which_resumes_exactly(assets, data_kwargs, tmp_path, straight):
    straight_params, straight_scalars = straight
    arm(None)
    data, victim = copy_with_victim(data_kwargs, tmp_path, batch=3)
    with pytest.raises(ValueError, match=f"cannot read image {victim}") as failure:
        run(assets, data, tmp_path, max_steps=6, callbacks=[TruncateOnceTrainingStarts(victim)])
    folder = tmp_path / "run" / "version_0" / "checkpoints"
    assert checkpoint_steps(folder) == {"last.ckpt": 3, "step=2.ckpt": 2, "step=3.ckpt": 3}
    assert f"saved step=3 checkpoint to {folder / 'last.ckpt'}" in failure.value.__notes__[0]
    shutil.copyfile(Path(data_kwargs["train_image_dir"]) / victim.name, victim)  # the download, repaired
    _, resumed_module = run(assets, data, tmp_path, max_steps=6, ckpt_path="last")
    torch.testing.assert_close(flat_params(resumed_module), straight_params, rtol=1e-5, atol=1e-6)
    assert_one_continued_curve(tmp_path, straight_scalars)


@pytest.mark.slow
def test_ctrl_c_leaves_the_last_completed_step(assets, data_kwargs, tmp_path):
    arm(4, KeyboardInterrupt())
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown on Ctrl-C exits with status 1
            run(assets, data_kwargs, tmp_path, max_steps=6, every_n_train_steps=5)
    finally:
        signal.signal(signal.SIGINT, handler)
    folder = tmp_path / "run" / "version_0" / "checkpoints"
    assert checkpoint_steps(folder) == {"last.ckpt": 3, "step=3.ckpt": 3}
    loops = torch.load(folder / "last.ckpt", weights_only=True)["loops"]["fit_loop"]
    assert loops["state_dict"]["combined_loader"] == [{"batches_done": 3}]


@pytest.mark.slow
def test_a_failure_after_the_optimizer_step_began_saves_nothing_and_says_so(assets, data_kwargs, tmp_path):
    """The schedule steps after the optimizer: failing there, the weights are step 4's while the loops say 3."""

    def lr_lambda(step):
        if step == 4:
            raise RuntimeError("schedule failed")
        return 1.0

    arm(None)
    with pytest.raises(RuntimeError, match="schedule failed") as failure:
        run(assets, data_kwargs, tmp_path, max_steps=6, lr_lambda=lr_lambda)
    folder = tmp_path / "run" / "version_0" / "checkpoints"
    assert checkpoint_steps(folder) == {"last.ckpt": 2, "step=2.ckpt": 2}
    assert failure.value.__notes__ == [
        "Training stopped (RuntimeError) after an optimizer step had begun, so the weights are no longer those of "
        f"step 3; no checkpoint was saved on the way out. The last saved checkpoint is {folder / 'last.ckpt'}; "
        "resume with --ckpt_path last."
    ]


@pytest.mark.slow
def test_resuming_at_the_end_of_an_epoch_shortened_by_limit_train_batches_starts_the_next_epoch(
    assets, data_kwargs, tmp_path
):
    """Epochs of 2 batches (limit_train_batches): the checkpoint of step 2 ends an epoch, so the resumed run starts
    the next epoch at its first batch, as the straight run does, not 2 batches into it."""
    arm(None)
    _, straight = run(assets, data_kwargs, tmp_path / "straight", max_steps=5, limit_train_batches=2)
    run(assets, data_kwargs, tmp_path / "stopped", max_steps=2, limit_train_batches=2)
    _, resumed = run(assets, data_kwargs, tmp_path / "stopped", max_steps=5, ckpt_path="last", limit_train_batches=2)
    torch.testing.assert_close(flat_params(resumed), flat_params(straight), rtol=1e-5, atol=1e-6)
    straight_rewards = read_scalars(tmp_path / "straight")["train/reward"]
    resumed_rewards = read_scalars(tmp_path / "stopped")["train/reward"]
    assert [step for step, _ in resumed_rewards] == [step for step, _ in straight_rewards] == [0, 1, 2, 3, 4]
    assert [v for _, v in resumed_rewards] == pytest.approx([v for _, v in straight_rewards], rel=1e-6)
