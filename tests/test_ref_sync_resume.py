"""Resume is exact with reference sync (``loss.ref_sync_steps: 2``): checkpoints hold the reference's weights, so 3
steps, stop, and resume to 6 give the policy, the reference and the rewards of 6 steps straight; from the end-of-fit
checkpoint of step 3 and from the periodic one of step 2, saved after step 2's optimizer step and before its sync."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from grpo_lightning.callbacks import StepCheckpoint
from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.module import GRPOModule
from grpo_lightning.stages.reference import ReferencePolicy
from scripts.tb_scalars import read_scalars
from tests.helpers import flat_params, make_module, quiet_trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SYNC = dict(beta=0.04, ref_sync_steps=2, ref_sync_alpha=0.6)


def characters_reward(completions, **kwargs):
    """A dense reward (every completion scores differently), so that every step moves the weights."""
    return [len(text) / 50 for text in completions]


def run(assets, data_kwargs, save_dir: Path, max_steps: int, ckpt_path=None, loss=SYNC):
    """Checkpoints every 2 steps and at the end (``step=N.ckpt``), curves in ``save_dir/run/version_0``."""
    L.seed_everything(7)
    module = make_module(
        assets,
        rewards=dict(funcs=["tests.test_ref_sync_resume:characters_reward"]),
        loss=loss,
        logging=dict(completions_every_n_steps=0),
    )
    trainer = quiet_trainer(
        max_steps=max_steps,
        logger=TensorBoardLogger(save_dir, name="run"),
        callbacks=[StepCheckpoint(every_n_train_steps=2, save_last=False)],
        enable_checkpointing=True,
    )
    trainer.fit(
        module, datamodule=ViVQAXDataModule(**data_kwargs, batch_size=2, shuffle=True, seed=3), ckpt_path=ckpt_path
    )
    return module, [value for _, value in read_scalars(save_dir / "run" / "version_0")["train/reward"]]


def flat_reference(module: GRPOModule) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.reference.model.parameters()])


_RUNS: dict[str, dict] = {}


@pytest.fixture
def runs(assets, data_kwargs, tmp_path_factory) -> dict:
    """6 steps straight (policy, reference, rewards), and the checkpoint folder of a run stopped after 3 steps."""
    key = str(assets)
    if key not in _RUNS:
        module, rewards = run(assets, data_kwargs, tmp_path_factory.mktemp("straight"), max_steps=6)
        base = make_module(assets, loss=SYNC)
        base.configure_model()
        stopped = tmp_path_factory.mktemp("stopped")
        run(assets, data_kwargs, stopped, max_steps=3)
        _RUNS[key] = dict(
            policy=flat_params(module),
            reference=flat_reference(module),
            base_reference=flat_reference(base),
            reference_names=set(base.reference.model.state_dict()),
            rewards=rewards,
            checkpoints=stopped / "run" / "version_0" / "checkpoints",
        )
    return _RUNS[key]


def resume(assets, data_kwargs, runs, tmp_path, checkpoint: str | Path):
    """Resume to step 6 from one of the stopped run's checkpoints (a copy), logging into a folder of its own."""
    path = tmp_path / "resumed.ckpt"
    shutil.copyfile(runs["checkpoints"] / checkpoint if isinstance(checkpoint, str) else checkpoint, path)
    return run(assets, data_kwargs, tmp_path / "logs", max_steps=6, ckpt_path=str(path))


@pytest.mark.parametrize(("checkpoint", "sync_pending"), [("step=3.ckpt", False), ("step=2.ckpt", True)])
def test_resuming_a_run_with_reference_sync_gives_the_straight_run(
    assets, data_kwargs, tmp_path, runs, checkpoint, sync_pending
):
    saved = torch.load(runs["checkpoints"] / checkpoint, weights_only=True)
    step = saved["global_step"]
    # the periodic checkpoint of step 2 is saved before the module's on_train_batch_end makes step 2's sync
    assert saved["reference_sync_pending"] is sync_pending
    assert set(saved["reference_state_dict"]) == runs["reference_names"]
    module, rewards = resume(assets, data_kwargs, runs, tmp_path, checkpoint)
    assert module.global_step == 6
    torch.testing.assert_close(flat_params(module), runs["policy"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(flat_reference(module), runs["reference"], rtol=1e-5, atol=1e-6)
    # the same samples drawn and scored the same, at steps step..5
    assert rewards == pytest.approx(runs["rewards"][step:], rel=1e-6)
    assert len(set(runs["rewards"])) > 1
    assert not torch.allclose(runs["reference"], runs["base_reference"]), "the syncs moved the reference"


@pytest.mark.parametrize("forget", ["reference state", "pending sync"])
def test_the_resume_check_fails_without_the_restored_reference(
    assets, data_kwargs, tmp_path, monkeypatch, runs, forget
):
    """The test above has teeth: resumed without the saved reference, or without step 2's sync, the runs differ."""
    if forget == "reference state":
        monkeypatch.setattr(ReferencePolicy, "restore", lambda self, policy: None)
        checkpoint = "step=3.ckpt"
    else:
        saved = torch.load(runs["checkpoints"] / "step=2.ckpt", weights_only=True)
        saved["reference_sync_pending"] = False
        checkpoint = tmp_path / "without_pending.ckpt"
        torch.save(saved, checkpoint)
    module, _ = resume(assets, data_kwargs, runs, tmp_path, checkpoint)
    assert not torch.allclose(flat_reference(module), runs["reference"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(flat_params(module), runs["policy"], rtol=1e-5, atol=1e-6)


def test_checkpoints_hold_no_reference_without_reference_sync(assets):
    module = make_module(assets, loss=dict(beta=0.04))
    module.configure_model()
    module._trainer = SimpleNamespace(world_size=1)
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint) == {"rng_states"}


def test_a_checkpoint_without_the_reference_says_the_reference_starts_from_the_base_weights(assets, caplog):
    module = make_module(assets, loss=SYNC)
    # the run that saved it did not sync: its reference was the base weights, which the resumed run starts from
    with caplog.at_level("INFO"), warnings.catch_warnings():
        warnings.simplefilter("error")
        module.on_load_checkpoint({"hyper_parameters": {"loss": {"beta": 0.04, "ref_sync_steps": 0}}})
    assert "The checkpoint holds no reference model (its run did not sync it" in caplog.text
    assert module.reference.saved is None
    # its run synced (a checkpoint without the reference's weights): the resumed run is not exact, a warning says so
    with pytest.warns(UserWarning, match=r"holds no reference model although its run synced it every 2 steps"):
        module.on_load_checkpoint({"hyper_parameters": {"loss": {"beta": 0.04, "ref_sync_steps": 2}}})


def test_only_a_fit_keeps_the_checkpoints_reference(assets):
    """Validate, test and predict use no reference: they keep no copy of the checkpoint's."""
    module = make_module(assets, loss=SYNC)
    checkpoint = {"reference_state_dict": {"w": torch.zeros(2)}, "reference_sync_pending": False}
    module.on_load_checkpoint(checkpoint)  # no trainer yet (load_from_checkpoint): kept for the fit
    assert module.reference.saved == (checkpoint["reference_state_dict"], False)
    module._trainer = SimpleNamespace(state=SimpleNamespace(fn="validate"))
    module.on_load_checkpoint(checkpoint)
    assert module.reference.saved is None
