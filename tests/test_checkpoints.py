"""Checkpoints: every N steps and at the end under the run's log folder, resume only when asked, run names with
'/', and a write killed half-way that leaves the previous last.ckpt intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger

from grpo_lightning.callbacks import (
    AtomicCheckpointIO,
    StepCheckpoint,
    check_run_name,
    continue_logger_version,
)
from grpo_lightning.cli import main as cli_main
from tests.helpers import ROOT, ManualBoringModel, fit_with, grpo_run, quiet_trainer

#: The checkpointing part of the shipped configs' `trainer:` section, as a user would write it; parsed by the CLI below.
PROPOSED_TRAINER_YAML = """
trainer:
  enable_checkpointing: true
  plugins:
    - class_path: grpo_lightning.callbacks.AtomicCheckpointIO   # last.ckpt is complete or absent, never truncated
  callbacks:
    - class_path: grpo_lightning.callbacks.StepCheckpoint       # <log_dir>/checkpoints/step=N.ckpt and last.ckpt
      init_args:
        every_n_train_steps: 200
        save_top_k: -1
        save_last: link           # a link, not a second copy; with DeepSpeed the only safe choice
    - class_path: grpo_lightning.callbacks.HFExportCallback     # <log_dir>/hf_export at the end of fit
      init_args:
        push_to_hub: false
        hub_model_id: null
"""


def boring_fit(save_dir: Path, name: str, steps: int, ckpt_path: str | None = None, **checkpoint) -> L.Trainer:
    callback = StepCheckpoint(every_n_train_steps=checkpoint.pop("every_n_train_steps", 2), **checkpoint)
    return fit_with(ManualBoringModel(), save_dir, steps, [callback], name=name, ckpt_path=ckpt_path)


def saved_steps(folder: Path) -> dict[str, int]:
    return {p.name: torch.load(p, weights_only=False)["global_step"] for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def run(assets, data_kwargs, tmp_path_factory) -> SimpleNamespace:
    return grpo_run(assets, data_kwargs, tmp_path_factory)


def test_fit_saves_every_n_steps_and_at_the_end_under_the_log_dir(run):
    assert run.checkpoints == run.save_dir / "run" / "version_0" / "checkpoints"
    # step 3 is not a multiple of 2: saved because training ended there
    assert saved_steps(run.checkpoints) == {"last.ckpt": 3, "step=2.ckpt": 2, "step=3.ckpt": 3}
    last = torch.load(run.checkpoints / "last.ckpt", weights_only=False)
    for key, value in run.module.state_dict().items():
        torch.testing.assert_close(last["state_dict"][key], value, rtol=0, atol=0)
    earlier = torch.load(run.checkpoints / "step=2.ckpt", weights_only=False)["state_dict"]
    assert any(not torch.equal(earlier[k], v) for k, v in last["state_dict"].items()), "step 3 changed no weight"
    assert last["hyper_parameters"]["model_name_or_path"] == run.module.hparams.model_name_or_path
    assert not any("manual optimization" in message for message in run.warnings), "the misleading warning is back"


def test_ckpt_path_last_resumes_the_latest_version_of_the_same_run_and_only_when_asked(tmp_path):
    first = boring_fit(tmp_path, "exp", steps=3)
    boring_fit(tmp_path, "other", steps=1)  # newer, but another run
    resumed = boring_fit(tmp_path, "exp", steps=5, ckpt_path="last")
    assert resumed.ckpt_path == str(tmp_path / "exp" / "version_0" / "checkpoints" / "last.ckpt")
    assert Path(resumed.log_dir) == tmp_path / "exp" / "version_1"
    assert saved_steps(Path(resumed.log_dir) / "checkpoints") == {"last.ckpt": 5, "step=4.ckpt": 4, "step=5.ckpt": 5}
    assert saved_steps(Path(first.log_dir) / "checkpoints")["last.ckpt"] == 3, "the first run's files were touched"
    newest = str(Path(resumed.log_dir) / "checkpoints" / "last.ckpt")
    assert resumed.checkpoint_callback.find_last_checkpoint(resumed) == newest
    fresh = boring_fit(tmp_path, "exp", steps=2)  # no ckpt_path: a new run from step 0, never a silent resume
    assert fresh.ckpt_path is None
    assert saved_steps(Path(fresh.log_dir) / "checkpoints") == {"last.ckpt": 2, "step=2.ckpt": 2}


def test_a_resumed_run_logs_into_the_version_folder_of_its_checkpoint(tmp_path):
    first = boring_fit(tmp_path, "exp", steps=3)
    checkpoint = Path(first.log_dir) / "checkpoints" / "last.ckpt"

    def trainer_for(name: str, version: int | None = None) -> L.Trainer:
        logger = TensorBoardLogger(tmp_path, name=name, version=version)
        callbacks = [StepCheckpoint(every_n_train_steps=2)]
        return quiet_trainer(logger=logger, callbacks=callbacks, enable_checkpointing=True)

    resumed = trainer_for("exp")
    assert continue_logger_version(resumed, "last") == [first.log_dir]
    assert resumed.log_dir == first.log_dir
    pinned = trainer_for("exp", version=5)  # a version the user chose is theirs
    assert continue_logger_version(pinned, checkpoint) == []
    assert Path(pinned.log_dir) == tmp_path / "exp" / "version_5"
    other = trainer_for("other")  # another run name resuming from this run's weights: its own folder
    assert continue_logger_version(other, checkpoint) == []
    assert Path(other.log_dir) == tmp_path / "other" / "version_0"
    fresh = trainer_for("exp")
    assert continue_logger_version(fresh, None) == []
    assert Path(fresh.log_dir) == tmp_path / "exp" / "version_1"


def test_ckpt_path_last_without_any_checkpoint_warns_and_trains_from_scratch(tmp_path):
    """Lightning's behaviour, kept as is here: a warning, then a fresh run (the CLI may turn it into an error)."""
    callback = StepCheckpoint(every_n_train_steps=2)
    unfitted = quiet_trainer(
        logger=TensorBoardLogger(tmp_path, name="new"), callbacks=[callback], enable_checkpointing=True
    )
    assert callback.find_last_checkpoint(unfitted) is None
    with pytest.warns(UserWarning, match=r'\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint'):
        trainer = boring_fit(tmp_path, "new", steps=2, ckpt_path="last")
    assert trainer.ckpt_path is None
    assert saved_steps(Path(trainer.log_dir) / "checkpoints") == {"last.ckpt": 2, "step=2.ckpt": 2}


def test_run_names_with_a_slash_are_nested_folders_that_resume(tmp_path):
    first = boring_fit(tmp_path, "internvl/lr1e-6", steps=2)
    assert Path(first.log_dir) == tmp_path / "internvl" / "lr1e-6" / "version_0"
    resumed = boring_fit(tmp_path, "internvl/lr1e-6", steps=3, ckpt_path="last")
    assert Path(resumed.log_dir) == tmp_path / "internvl" / "lr1e-6" / "version_1"
    assert resumed.ckpt_path == str(Path(first.log_dir) / "checkpoints" / "last.ckpt")
    assert saved_steps(Path(resumed.log_dir) / "checkpoints") == {"last.ckpt": 3, "step=3.ckpt": 3}


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("../escape", "escape"), ("/abs/run", "abs/run"), ("a//b", "a/b"), ("a/", "a"), ("./a", "a")],
)
def test_run_names_that_leave_or_alias_their_folder_are_refused_at_start_up(tmp_path, name, suggestion):
    expected = (
        f"The run name {name!r} is not a relative folder path: a run name is folder names separated by single '/', "
        "none of them '.' or '..', with no '/' at either end, so that the run stays in its own folder under the "
        f"logger's save_dir. Set the logger's name (trainer.logger.init_args.name) to {suggestion!r}, for example."
    )
    with pytest.raises(ValueError) as error:
        check_run_name(name)
    assert str(error.value) == expected
    if name.startswith("/"):
        name = str(tmp_path / "elsewhere" / name.lstrip("/"))  # the Trainer below must not write to /abs
        expected = expected.replace(repr("/abs/run"), repr(name)).replace(repr(suggestion), repr(name.lstrip("/")))
    model = ManualBoringModel()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError) as error:
        fit_with(model, tmp_path / "logs", 2, [StepCheckpoint(every_n_train_steps=1)], name=name)
    assert str(error.value) == expected
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), "a step ran"
    assert not list(tmp_path.rglob("*.ckpt"))


def test_save_last_link_points_at_the_final_step_checkpoint(tmp_path):
    trainer = boring_fit(tmp_path, "linked", steps=5, save_last="link")
    folder = Path(trainer.log_dir) / "checkpoints"
    assert saved_steps(folder) == {"last.ckpt": 5, "step=2.ckpt": 2, "step=4.ckpt": 4, "step=5.ckpt": 5}
    assert os.readlink(folder / "last.ckpt") == "step=5.ckpt"
    resumed = boring_fit(tmp_path, "linked", steps=6, ckpt_path="last", save_last="link")
    assert resumed.ckpt_path == str(folder / "last.ckpt") and resumed.global_step == 6
    with pytest.raises(ValueError, match="use save_top_k=-1 with 'link', or save_last=True"):
        StepCheckpoint(save_last="link", save_top_k=1)


# The child writes a valid checkpoint (step 1), then a 256 MB one (step 2) over it, which the parent kills half-way.
_WRITER = """
import sys
import torch
from grpo_lightning.callbacks import AtomicCheckpointIO

io = AtomicCheckpointIO()
io.save_checkpoint({"global_step": 1, "weights": torch.ones(4)}, sys.argv[1])
big = torch.full((64 * 2**20,), 2.0)
print("saved step 1", flush=True)
sys.stdin.readline()
io.save_checkpoint({"global_step": 2, "weights": big}, sys.argv[1])
print("saved step 2", flush=True)
"""
_BIG_BYTES = 64 * 2**20 * 4


def kill_during_the_second_write(target: Path) -> Path | None:
    """Run the writer and SIGKILL it as soon as the second write touches the disk: its temp file growing, or
    ``last.ckpt`` itself changing (a writer without a temp file). Returns the temp file left behind, if any."""
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "saved step 1"
        temp = target.with_name(f"{target.name}.tmp-{writer.pid}")
        first = target.stat()
        writer.stdin.write("go\n")
        writer.stdin.flush()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and writer.poll() is None:
            try:
                if 0 < temp.stat().st_size < _BIG_BYTES:
                    break
            except FileNotFoundError:
                pass
            now = target.stat()
            if (now.st_ino, now.st_size, now.st_mtime_ns) != (first.st_ino, first.st_size, first.st_mtime_ns):
                break
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    return temp if temp.exists() else None


def test_a_write_killed_half_way_leaves_the_previous_last_ckpt(tmp_path):
    for attempt in range(3):
        target = tmp_path / f"attempt{attempt}" / "checkpoints" / "last.ckpt"
        partial = kill_during_the_second_write(target)
        # Whenever the kill came, last.ckpt is a whole checkpoint (torch.load fails on a truncated one).
        previous = torch.load(target, weights_only=True)
        if partial is not None:
            break
    else:
        pytest.fail("the 256 MB write finished before the kill three times; nothing was tested")
    assert previous["global_step"] == 1 and torch.equal(previous["weights"], torch.ones(4))
    assert 0 < partial.stat().st_size < _BIG_BYTES + 10**6
    with pytest.raises((RuntimeError, OSError)):  # what a direct write to last.ckpt would have left there
        torch.load(partial, weights_only=True)

    # The next save removes the dead writer's temp file, not a live writer's.
    alive = target.with_name(f"step=9.ckpt.tmp-{os.getppid()}")
    alive.write_bytes(b"in progress")
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt", alive.name]
    assert torch.load(target, weights_only=True)["global_step"] == 3


def test_a_failed_write_keeps_the_previous_file_and_no_temp_file(tmp_path):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, target)
    with pytest.raises(Exception, match="pickle"):
        io.save_checkpoint({"global_step": 2, "not_picklable": lambda: None}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.load(target, weights_only=True)["global_step"] == 1


def test_the_proposed_trainer_config_parses(tmp_path, capsys):
    overlay = tmp_path / "checkpointing.yaml"
    overlay.write_text(PROPOSED_TRAINER_YAML)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--config", str(overlay), "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    trainer = yaml.safe_load("\n".join(line for line in out.splitlines() if not line.startswith("[")))["trainer"]
    assert [c["class_path"] for c in trainer["callbacks"]] == [
        "grpo_lightning.callbacks.StepCheckpoint",
        "grpo_lightning.callbacks.HFExportCallback",
    ]
    assert trainer["callbacks"][0]["init_args"]["save_last"] == "link"
    assert trainer["plugins"][0]["class_path"] == "grpo_lightning.callbacks.AtomicCheckpointIO"


# ------------------------------------------------------------------------------------- resumes into the same folder
class FailingBoringModel(ManualBoringModel):
    """Raises in the training step that would start after ``fail_after`` optimizer steps (None: never)."""

    def __init__(self, fail_after: int | None = None):
        super().__init__()
        self.fail_after = fail_after

    def training_step(self, batch, batch_idx):
        if self.global_step == self.fail_after:
            raise RuntimeError("the reward server is unreachable")
        return super().training_step(batch, batch_idx)


def resumed_fit(
    save_dir: Path, steps: int, ckpt_path: str | None, save_last: bool | str, fail_after: int | None = None
) -> L.Trainer:
    """A boring run named ``demo`` that, as the command line does, goes on in its checkpoint's version folder."""
    L.seed_everything(0)
    trainer = quiet_trainer(
        max_steps=steps,
        logger=TensorBoardLogger(save_dir, name="demo"),
        callbacks=[StepCheckpoint(every_n_train_steps=50, save_last=save_last)],
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=True,
    )
    continue_logger_version(trainer, ckpt_path)
    trainer.fit(FailingBoringModel(fail_after), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("save_last", [True, "link"])
def test_last_ckpt_is_the_newest_checkpoint_of_its_run_through_every_resume(tmp_path, save_last):
    """Fit 2, resume to 4 (--ckpt_path last), resume to 6 (the file itself), fail in step 8 (a crash save of step 7),
    resume to 9: last.ckpt holds each newest step, and no last-v1.ckpt appears beside it."""
    folder = tmp_path / "demo" / "version_0" / "checkpoints"
    last = folder / "last.ckpt"

    def last_step() -> int:
        assert sorted(p.name for p in folder.iterdir() if p.name.startswith("last")) == ["last.ckpt"]
        return torch.load(last, weights_only=True)["global_step"]

    resumed_fit(tmp_path, 2, None, save_last)
    assert last_step() == 2
    resumed_fit(tmp_path, 4, "last", save_last)
    assert last_step() == 4
    resumed_fit(tmp_path, 6, str(last), save_last)
    assert last_step() == 6
    with pytest.raises(RuntimeError, match="the reward server is unreachable"):
        resumed_fit(tmp_path, 9, str(last), save_last, fail_after=7)
    assert last_step() == 7
    trainer = resumed_fit(tmp_path, 9, "last", save_last)
    assert trainer.global_step == 9 and last_step() == 9
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["version_0"]
    if save_last == "link":
        assert os.readlink(last) == "step=9.ckpt"


def test_the_progress_bar_of_a_run_resumed_mid_epoch_counts_steps(tmp_path, capsys):
    """Lightning calls no on_train_epoch_start when a run resumes mid-epoch: the bar is set up at the train start."""
    from grpo_lightning.progress import StepProgressBar

    def fit(steps: int, ckpt_path: str | None) -> None:
        L.seed_everything(0)
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=steps,
            logger=TensorBoardLogger(tmp_path, name="demo"),
            callbacks=[StepCheckpoint(every_n_train_steps=50), StepProgressBar()],
            enable_model_summary=False,
            limit_val_batches=0,
        )
        continue_logger_version(trainer, ckpt_path)
        trainer.fit(ManualBoringModel(), ckpt_path=ckpt_path)

    fit(2, None)
    capsys.readouterr()
    fit(5, "last")  # 32 batches an epoch: step 2 is mid-epoch
    captured = capsys.readouterr()  # Lightning's bar writes to stdout
    lines = (captured.out + captured.err).replace("\r", "\n").splitlines()
    bars = [line for line in lines if "step" in line and "/" in line]
    assert bars and all(line.startswith("train step: ") for line in bars), bars
    assert any("2/5" in line for line in bars) and "5/5" in bars[-1], bars
    assert not any(f"{step}/5" in line for line in bars for step in (0, 1)), "the count started over"
    assert not any(line.startswith("Training") for line in lines)
