"""Checkpoints and resume: 6 steps straight equal 3 steps, stop, and resume to 6."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.module import GRPOModule
from scripts.tb_scalars import read_scalars
from tests.test_module import flat_params, make_module


def characters_reward(completions, solution, **kwargs):
    """A dense reward (every completion scores differently), so that every step moves the weights."""
    return [len(text) / 50 for text in completions]


def run(assets, data_kwargs, save_dir, max_steps, ckpt_path=None):
    L.seed_everything(7)
    module = make_module(
        assets,
        reward_funcs=["tests.test_resume:characters_reward"],
        beta=0.04,
        log_completions_every_n_steps=0,
        # a schedule that changes every step: a resumed run that restarted it would end with other weights
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.1, total_iters=6),
    )
    checkpoints = ModelCheckpoint(every_n_train_steps=3, save_top_k=-1, save_last=True)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=TensorBoardLogger(save_dir, name="run", version=0),
        callbacks=[checkpoints],
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    data = ViVQAXDataModule(**data_kwargs, batch_size=2, shuffle=True, seed=3)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer, module, checkpoints


@pytest.mark.slow
def test_resuming_from_step_3_reproduces_the_straight_run(assets, data_kwargs, tmp_path):
    straight, straight_module, _ = run(assets, data_kwargs, tmp_path / "straight", max_steps=6)
    first, _, checkpoints = run(assets, data_kwargs, tmp_path / "stopped", max_steps=3)
    step3 = checkpoints.dirpath + "/epoch=0-step=3.ckpt"
    assert torch.load(step3, weights_only=True)["global_step"] == 3
    resumed, resumed_module, _ = run(assets, data_kwargs, tmp_path / "stopped", max_steps=6, ckpt_path=step3)
    assert straight.global_step == resumed.global_step == 6
    torch.testing.assert_close(flat_params(resumed_module), flat_params(straight_module), rtol=1e-5, atol=1e-6)

    straight_rewards = read_scalars(tmp_path / "straight")["train/reward"]
    resumed_rewards = read_scalars(tmp_path / "stopped")["train/reward"]
    assert [step for step, _ in straight_rewards] == [0, 1, 2, 3, 4, 5]
    assert [step for step, _ in resumed_rewards] == [0, 1, 2, 3, 4, 5]
    # the same samples drawn and scored the same
    assert [v for _, v in resumed_rewards] == pytest.approx([v for _, v in straight_rewards], rel=1e-6)
    assert len({v for _, v in straight_rewards}) > 1
    straight_lr = read_scalars(tmp_path / "straight")["train/learning_rate"]
    assert read_scalars(tmp_path / "stopped")["train/learning_rate"] == straight_lr
    assert straight_lr[0][1] > straight_lr[-1][1]


@pytest.mark.slow
@pytest.mark.parametrize("forget", ["data position", "rng states"])
def test_the_resume_check_fails_without_the_data_position_or_the_rng(
    assets, data_kwargs, tmp_path, monkeypatch, forget
):
    """The test above has teeth: drop either piece of restored state and the runs differ."""
    _, straight_module, _ = run(assets, data_kwargs, tmp_path / "straight", max_steps=6)
    _, _, checkpoints = run(assets, data_kwargs, tmp_path / "stopped", max_steps=3)
    if forget == "data position":
        monkeypatch.setattr(ViVQAXDataModule, "load_state_dict", lambda self, state: None)
    else:
        monkeypatch.setattr(GRPOModule, "on_load_checkpoint", lambda self, checkpoint: None)
    step3 = checkpoints.dirpath + "/epoch=0-step=3.ckpt"
    _, resumed_module, _ = run(assets, data_kwargs, tmp_path / "stopped", max_steps=6, ckpt_path=step3)
    assert not torch.allclose(flat_params(resumed_module), flat_params(straight_module), rtol=1e-5, atol=1e-6)
