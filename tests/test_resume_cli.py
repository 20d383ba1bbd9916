"""Resume from the command line: a run stopped by a failure says which checkpoint it left, ``--ckpt_path last``
continues it in the same log folder (one curve), and the export at the end replaces the earlier part's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import grpo_demo
from grpo_lightning.cli import main
from scripts.tb_scalars import read_scalars
from tests.helpers import ROOT, arm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHECKPOINTING_YAML = """
trainer:
  callbacks:
    - class_path: grpo_lightning.callbacks.StepCheckpoint
      init_args:
        every_n_train_steps: 2
        save_last: link
    - class_path: grpo_lightning.callbacks.HFExportCallback
"""


def fit(assets, data_kwargs, save_dir: Path, overlay: Path, max_steps: int, *extra: str) -> None:
    """``configs/demo.yaml`` shortened and shrunk, with the dense test reward (which a test can make fail)."""
    overrides = {
        "--model.model_name_or_path": str(grpo_demo.internvl_path(assets)),
        "--model.rewards.funcs": "[tests.helpers:characters_reward]",
        "--model.rewards.weights": "[1.0]",
        "--model.rewards.kwargs": "null",
        "--model.sampling.num_generations": "4",
        "--model.sampling.max_completion_length": "12",
        "--data.batch_size": "2",
        "--trainer.logger.init_args.save_dir": str(save_dir),
        "--trainer.max_steps": str(max_steps),
        "--trainer.limit_val_batches": "0",
        "--trainer.enable_progress_bar": "false",
        **{f"--data.{key}": value for key, value in data_kwargs.items()},
    }
    args = ["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--config", str(overlay)]
    for key, value in overrides.items():
        args += [key, value]
    main([*args, *extra])


@pytest.mark.slow
def test_a_failed_run_resumes_from_the_cli_into_one_curve_and_one_export(assets, data_kwargs, tmp_path, caplog, capsys):
    overlay = tmp_path / "checkpointing.yaml"
    overlay.write_text(CHECKPOINTING_YAML)
    arm(None)
    fit(assets, data_kwargs, tmp_path / "straight", overlay, 6)
    straight = tmp_path / "straight" / "demo" / "version_0"

    run = tmp_path / "stopped" / "demo" / "version_0"
    fit(assets, data_kwargs, tmp_path / "stopped", overlay, 3)
    first_export = load_file(run / "hf_export" / "model.safetensors")

    arm(3, RuntimeError("the reward server is unreachable"))  # steps 4 and 5 train, step 6 fails
    caplog.clear()
    capsys.readouterr()
    with pytest.raises(SystemExit) as failure:
        fit(assets, data_kwargs, tmp_path / "stopped", overlay, 6, "--ckpt_path", "last")
    message = (
        f"Training stopped (RewardError): saved step=5 checkpoint to {run / 'checkpoints' / 'last.ckpt'}; "
        "fix the cause and resume with --ckpt_path last."
    )
    assert message in caplog.messages  # Lightning's log, on the console
    # a raising reward is the user's to fix: one message (the reward's own frames in it), then where the step went
    assert failure.value.code == 2
    err = capsys.readouterr().err
    printed = err[err.index("error: ") :].splitlines()
    assert printed[0].startswith(
        "error: Reward 'characters_reward' raised RuntimeError: the reward server is unreachable"
    )
    assert printed[-1] == message
    assert "lightning" not in err  # no trainer frames, only the reward's own
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5

    arm(None)
    fit(assets, data_kwargs, tmp_path / "stopped", overlay, 6, "--ckpt_path", "last")
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "last.ckpt",
        "step=2.ckpt",
        "step=3.ckpt",
        "step=4.ckpt",
        "step=5.ckpt",
        "step=6.ckpt",
    ]
    resumed_state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    straight_state = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed_state["global_step"] == straight_state["global_step"] == 6
    for key, value in straight_state["state_dict"].items():
        torch.testing.assert_close(resumed_state["state_dict"][key], value, rtol=1e-5, atol=1e-6)

    rewards = read_scalars(run)["train/reward"]
    assert [step for step, _ in rewards] == [0, 1, 2, 3, 4, 5]
    assert [v for _, v in rewards] == pytest.approx([v for _, v in read_scalars(straight)["train/reward"]], rel=1e-6)

    # the export of the first 3 steps was replaced by the one of all 6, equal to the straight run's
    export = load_file(run / "hf_export" / "model.safetensors")
    straight_export = load_file(straight / "hf_export" / "model.safetensors")
    assert export.keys() == straight_export.keys()
    for key, value in straight_export.items():
        torch.testing.assert_close(export[key], value, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(first_export[key], export[key]) for key in export), "the export was not replaced"
    assert not [p.name for p in run.iterdir() if "tmp" in p.name], "a staging folder was left behind"
