"""How a run ends when something goes wrong outside the math: signals, a hung reward, a second run in the same log
folder, a kill between checkpoints, a failing fit's worker processes, hardware the config cannot run on, and the
command-line mistakes that must be one ``error:`` line with status 2.

The runs are the command line itself, in a process of its own where a signal or a kill is the point (the reward in
this module sends it from inside the step, so that the step it lands in is known), in this process otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

import grpo_demo
from grpo_lightning.cli import main
from grpo_lightning.hardware import CPU_TRY, check_hardware
from grpo_lightning.run_lock import LOCK_NAME, RunFolderBusy, RunLock
from scripts.tb_scalars import read_scalars
from tests.helpers import ROOT

#: Environment of the reward below: after how many calls it acts (one call per training step), and how.
AT_ENV, ACTION_ENV, MARKER_ENV = "GRPO_TEST_AT_CALL", "GRPO_TEST_ACTION", "GRPO_TEST_MARKER"
_CALLS = [0]


def faulty_reward(completions, solution, **kwargs):
    """A dense reward that, on call ``$GRPO_TEST_AT_CALL``, does ``$GRPO_TEST_ACTION``: ``SIGTERM``/``SIGINT`` (sends
    itself the signal, then scores as usual), ``hang`` (writes ``$GRPO_TEST_MARKER``, then sleeps for an hour) or
    ``raise``."""
    _CALLS[0] += 1
    if _CALLS[0] == int(os.environ.get(AT_ENV, "0")):
        action = os.environ[ACTION_ENV]
        if action in ("SIGTERM", "SIGINT"):
            os.kill(os.getpid(), getattr(signal, action))
        elif action == "hang":
            Path(os.environ[MARKER_ENV]).write_text(str(os.getpid()))
            time.sleep(3600)
        elif action == "raise":
            raise RuntimeError("the reward server is unreachable")
    return [len(text) / 50 for text in completions]


#: The demo's callbacks replaced: a checkpoint every N optimizer steps, no export.
CHECKPOINT_EVERY = (
    "{{class_path: grpo_lightning.callbacks.StepCheckpoint, init_args: {{every_n_train_steps: {}, save_last: link}}}}"
)


def demo_args(
    assets,
    data_kwargs,
    save_dir: Path,
    max_steps: int,
    *extra: str,
    callbacks: tuple[str, ...] = (),
    checkpoint_every: int = 2,
) -> list[str]:
    """``fit --config configs/demo.yaml`` shrunk: the reward above, 2 prompts x 4 completions of 8 tokens, checkpoints
    every 2 steps (and ``callbacks``, inline YAML), no validation, rollouts written every step."""
    callbacks_yaml = ", ".join((CHECKPOINT_EVERY.format(checkpoint_every), *callbacks))
    args = [
        "fit",
        "--config",
        str(ROOT / "configs" / "demo.yaml"),
        "--config",
        f"{{trainer: {{callbacks: [{callbacks_yaml}]}}}}",
    ]
    args += ["--model.model_name_or_path", str(grpo_demo.internvl_path(assets))]
    args += ["--model.rewards.funcs", "[tests.test_faults:faulty_reward]", "--model.rewards.weights", "null"]
    args += ["--model.rewards.kwargs", "null"]
    args += ["--model.sampling.num_generations", "4", "--model.sampling.max_completion_length", "8"]
    args += ["--data.batch_size", "2", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.max_steps", str(max_steps), "--trainer.logger.init_args.save_dir", str(save_dir)]
    args += ["--model.logging.rollouts_every_n_steps", "1"]
    for key, value in data_kwargs.items():
        args += [f"--data.{key}", value]
    return args + list(extra)


def start(args: list[str], **env: str) -> subprocess.Popen:
    """The command line leading a process group of its own, so that a test can signal it and find its children."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(
        [sys.executable, "-m", "grpo_lightning", *args],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=os.setpgrp,  # the group's id is the process's: its children stay in the group
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def last_step(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def group_processes(group: int) -> list[int]:
    """The processes still alive in a process group (the command line's children, dataloader workers, stay in it)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] != "Z":  # the fields after the name: state, ppid, pgrp
                alive.append(int(entry.name))
    return alive


def assert_no_process_left(group: int, grace: float = 10) -> None:
    """No process of the group outlives the run by more than ``grace`` seconds (workers see their parent go)."""
    deadline = time.monotonic() + grace
    while group_processes(group) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_processes(group), "processes outlived the run"


# ------------------------------------------------------------------------------------------------------- signals
@pytest.mark.slow
@pytest.mark.parametrize(("name", "status"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_saves_the_last_completed_step_and_exits_with_its_status(assets, data_kwargs, tmp_path, name, status):
    """A scheduler's SIGTERM (or Ctrl-C) in step 4: the run saves step 3 and exits with 128 + the signal's number,
    so the job counts as killed, not as a success; --ckpt_path last then trains on to the end."""
    process = start(demo_args(assets, data_kwargs, tmp_path, 6), **{AT_ENV: "4", ACTION_ENV: name})
    code, err = finish(process)
    run = tmp_path / "demo" / "version_0"
    assert code == status, err[-3000:]
    assert f"Stopped by {name}." in err
    # SIGTERM ends the step it arrives in (step 4 completes); Ctrl-C interrupts it (step 3 is the last complete)
    assert last_step(run) == (4 if name == "SIGTERM" else 3)
    code, err = finish(start(demo_args(assets, data_kwargs, tmp_path, 6, "--ckpt_path", "last")))
    assert code == 0, err[-3000:]
    assert last_step(run) == 6


@pytest.mark.slow
def test_a_hung_reward_ends_on_a_second_sigterm_after_saving(assets, data_kwargs, tmp_path):
    marker = tmp_path / "hanging"
    process = start(
        demo_args(assets, data_kwargs, tmp_path, 6, "--data.num_workers", "2"),
        **{AT_ENV: "3", ACTION_ENV: "hang", MARKER_ENV: str(marker)},
    )
    wait_for(marker, process)
    process.send_signal(signal.SIGTERM)
    time.sleep(3)
    assert process.poll() is None, "one SIGTERM waits for the end of the step"
    process.send_signal(signal.SIGTERM)
    code, err = finish(process, timeout=60)
    assert code == 143, err[-3000:]
    assert "Training stopped (Terminated): saved step=2 checkpoint to" in err
    assert last_step(tmp_path / "demo" / "version_0") == 2
    assert_no_process_left(process.pid)


# ------------------------------------------------------------------------------------------------ one run, one folder
@pytest.mark.slow
def test_a_second_run_in_the_same_log_folder_is_refused_with_the_holders_pid(assets, data_kwargs, tmp_path, capsys):
    marker = tmp_path / "hanging"
    first = start(
        demo_args(assets, data_kwargs, tmp_path, 6), **{AT_ENV: "2", ACTION_ENV: "hang", MARKER_ENV: str(marker)}
    )
    try:
        wait_for(marker, first)
        run = tmp_path / "demo" / "version_0"
        assert (run / LOCK_NAME).read_text().split()[0] == str(first.pid)
        before = sorted(p.name for p in run.rglob("*"))
        with pytest.raises(SystemExit) as stopped:  # the same version, as a resume or a run started with it would take
            main(demo_args(assets, data_kwargs, tmp_path, 6, "--trainer.logger.init_args.version", "0"))
        assert stopped.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {run} is the log folder of a run that is still going (PID {first.pid} on ")
        assert len(err.splitlines()) == 1
        assert sorted(p.name for p in run.rglob("*")) == before, "the refused run wrote into the folder"
    finally:
        first.kill()  # kill -9: its lock goes with it
        first.communicate()
    with RunLock(tmp_path / "demo" / "version_0") as lock:  # a killed holder's lock is stale: taken over
        assert lock.held


def test_the_run_lock_is_refused_while_held_and_free_once_released_or_its_holder_is_killed(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from grpo_lightning.run_lock import RunLock; "
         "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(3600)", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=rf"still going \(PID {holder.pid} on .*, since "):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunFolderBusy, match=rf"PID {os.getpid()} "):
        RunLock(tmp_path).acquire()  # a second holder in one process is refused too
    first.release()
    assert (tmp_path / LOCK_NAME).read_text() == "", "a released lock names no holder"
    with RunLock(tmp_path):
        pass


# ---------------------------------------------------------------------------------------- a kill between checkpoints
@pytest.mark.slow
@pytest.mark.parametrize("iterations", [1, 2])
def test_a_run_killed_between_checkpoints_resumes_into_one_curve_with_each_step_once(
    assets, data_kwargs, tmp_path, iterations
):
    """kill -9 after batch 6 (TensorBoard's events of batches 0-4 on disk, the rollouts of all 6, a checkpoint after
    batch 4): the run resumed for one more batch logs batch 4 again, TensorBoard shows it once, and the rollout
    browser has nothing of batch 5. With 2 optimizer steps a batch, TensorBoard counts batches and the checkpoints
    and rollout files optimizer steps."""
    kill = f"{{class_path: tests.test_faults.KillAfter, init_args: {{step: {6 * iterations}}}}}"
    options = ("--model.loss.num_iterations", str(iterations))
    every = 4 * iterations  # one checkpoint before the kill: after batch 4
    killed = start(
        demo_args(assets, data_kwargs, tmp_path, 8 * iterations, *options, callbacks=(kill,), checkpoint_every=every)
    )
    code, err = finish(killed)
    assert code == -signal.SIGKILL, err[-3000:]
    run = tmp_path / "demo" / "version_0"
    assert last_step(run) == 4 * iterations
    assert [step for step, _ in read_scalars(run)["train/reward"]] == [0, 1, 2, 3, 4]  # written before the kill

    def rollout_batches() -> list[int]:
        return sorted(int(p.stem.split("=")[1]) // iterations for p in (run / "rollouts").glob("step=*.jsonl"))

    assert rollout_batches() == [0, 1, 2, 3, 4, 5]
    resumed = demo_args(
        assets, data_kwargs, tmp_path, 5 * iterations, *options, "--ckpt_path", "last", checkpoint_every=every
    )
    code, err = finish(start(resumed))
    assert code == 0, err[-3000:]
    assert [step for step, _ in read_scalars(run)["train/reward"]] == [0, 1, 2, 3, 4]
    assert rollout_batches() == [0, 1, 2, 3, 4]


class KillAfter(L.Callback):
    """Writes the loggers' events to disk, then kills its process with SIGKILL at the end of step ``step``, as a
    machine failure would after TensorBoard's periodic flush."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            for logger in trainer.loggers:
                logger.experiment.flush()
            os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------------------- no process left over
@pytest.mark.slow
def test_a_failing_fit_with_dataloader_workers_leaves_no_process_behind(assets, data_kwargs, tmp_path):
    process = start(
        demo_args(assets, data_kwargs, tmp_path, 6, "--data.num_workers", "2"), **{AT_ENV: "2", ACTION_ENV: "raise"}
    )
    code, err = finish(process)
    assert code == 2, err[-3000:]
    assert "error: Reward 'faulty_reward' raised RuntimeError: the reward server is unreachable" in err
    assert_no_process_left(process.pid)


# -------------------------------------------------------------------------------------------------------- hardware
def test_the_recipe_on_a_machine_without_cuda_is_refused_before_anything_loads(capsys, tmp_path, monkeypatch):
    """configs/internvl.yaml as shipped, and with each flag a user tries first; a model path that does not exist
    proves nothing was loaded (it would be the first thing to fail)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this machine, also on one with a GPU
    base = ["fit", "--config", "internvl.yaml", "--model.model_name_or_path", str(tmp_path / "no-model")]
    base += ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    cases = {
        (): "error: trainer.accelerator gpu needs a CUDA GPU and this machine has none",
        ("--trainer.accelerator", "cpu"): "error: trainer.strategy DeepSpeedStrategy needs a CUDA GPU",
        ("--trainer.strategy", "auto"): "error: model.optimizer deepspeed.ops.adam.DeepSpeedCPUAdam runs only inside a "
        "DeepSpeed strategy",
    }
    for extra, expected in cases.items():
        with pytest.raises(SystemExit) as stopped:
            main([*base, *extra])
        assert stopped.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(expected), err
        assert not any(line.startswith("Traceback") for line in err)
    assert not list(tmp_path.iterdir()), "a refused run wrote logs"


@pytest.mark.slow
def test_the_cpu_flags_the_message_names_run_the_recipe(assets, data_kwargs, tmp_path):
    args = ["fit", "--config", "internvl.yaml", *CPU_TRY.split()]
    args += ["--model.model_name_or_path", str(grpo_demo.internvl_path(assets))]
    args += ["--model.rewards.funcs", "[format]", "--model.rewards.weights", "null", "--model.rewards.kwargs", "null"]
    args += ["--model.sampling.num_generations", "2", "--model.sampling.max_completion_length", "4"]
    args += ["--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path), "--data.batch_size", "1", "--data.num_workers", "0"]
    for key, value in data_kwargs.items():
        args += [f"--data.{key}", value]
    cli = main(args)
    assert cli.trainer.global_step == 1


@pytest.mark.parametrize(
    ("strategy", "accelerator", "optimizer", "cuda", "expected"),
    [
        ("auto", "gpu", "torch.optim.AdamW", False, "trainer.accelerator gpu needs a CUDA GPU"),
        ("deepspeed_stage_2_offload", "cpu", "torch.optim.AdamW", False, "trainer.strategy deepspeed_stage_2_offload"),
        ({"class_path": "lightning.pytorch.strategies.DeepSpeedStrategy"}, "auto", None, False, "DeepSpeedStrategy"),
        ("ddp", "cpu", {"class_path": "deepspeed.ops.adam.DeepSpeedCPUAdam"}, True, "runs only inside a DeepSpeed"),
        ("auto", "auto", "deepspeed.ops.adam.FusedAdam", False, "runs only inside a DeepSpeed strategy"),
        ("auto", "cpu", "apex.optimizers.FusedAdam", False, "apex.optimizers.FusedAdam runs only on a CUDA GPU"),
        ("auto", "gpu", "apex.optimizers.FusedAdam", True, None),
        ("auto", "cpu", "torch.optim.AdamW", False, None),
        ("deepspeed", "gpu", "deepspeed.ops.adam.DeepSpeedCPUAdam", True, None),
        ({"class_path": "lightning.pytorch.strategies.DDPStrategy"}, "gpu", "torch.optim.AdamW", True, None),
    ],
)
def test_check_hardware(strategy, accelerator, optimizer, cuda, expected):
    from grpo_lightning.errors import ConfigError

    def check():
        check_hardware(strategy, accelerator, optimizer, cuda_available=lambda: cuda)

    if expected is None:
        check()
    else:
        with pytest.raises(ConfigError, match=expected):
            check()


# ------------------------------------------------------------------------------------------ one line, status 2
@pytest.fixture(scope="module")
def qwen_checkpoint(assets, data_kwargs, tmp_path_factory) -> Path:
    """A one-step fit of the tiny Qwen2-VL: a checkpoint of another model family than the InternVL runs below."""
    save_dir = tmp_path_factory.mktemp("qwen")
    args = demo_args(
        assets, data_kwargs, save_dir, 1, "--model.model_name_or_path", str(grpo_demo.qwen2vl_path(assets))
    )
    main([arg.replace("tests.test_faults:faulty_reward", "format") for arg in args])
    return save_dir / "demo" / "version_0" / "checkpoints" / "last.ckpt"


def test_each_command_line_mistake_is_one_error_line_with_status_2(
    assets, data_kwargs, tmp_path, capsys, qwen_checkpoint
):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(qwen_checkpoint.read_bytes()[:1000])  # `head -c 1000`: a copy that did not finish
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder")
    cases = {
        ("--model.sampling.num_generations", "1"): "sampling.num_generations must be at least 2, not 1",
        ("--model.sampling.temperature", "0"): "sampling.temperature must be above 0, not 0.0",
        ("--model.sampling.temperature", "-1"): "sampling.temperature must be above 0, not -1.0",
        ("--model.sampling.max_completion_length", "0"): "sampling.max_completion_length must be at least 1 token",
        ("--model.loss.beta", "-0.1"): "loss.beta must be 0 (no KL term) or more, not -0.1",
        ("--ckpt_path", str(tmp_path / "missing.ckpt")): f"--ckpt_path {tmp_path / 'missing.ckpt'}: no such checkpoint",
        ("--ckpt_path", str(truncated)): f"--ckpt_path {truncated}: not a readable checkpoint (",
        ("--ckpt_path", str(qwen_checkpoint)): f"--ckpt_path {qwen_checkpoint}: it holds the weights of another model "
        f"than the one configured ({str(grpo_demo.internvl_path(assets))!r})",
        ("--trainer.logger.init_args.save_dir", str(in_the_way / "logs")): "Cannot write to the log folder "
        f"{in_the_way / 'logs' / 'demo' / 'version_0'} (Not a directory)",
        ("--ckpt_path", "last"): "--ckpt_path last: this run name has no last.ckpt yet",
    }
    for extra, expected in cases.items():
        save_dir = tmp_path / "logs"
        with pytest.raises(SystemExit) as stopped:
            main(demo_args(assets, data_kwargs, save_dir, 2, *extra))
        assert stopped.value.code == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.splitlines()[-1].startswith(f"error: {expected}"), (extra, err[-2000:])
        assert "Traceback" not in err and err.count("error:") == 1, extra
    assert not list((tmp_path / "logs").rglob("*.ckpt")), "a refused run trained"


def test_a_log_folder_that_cannot_be_written_is_one_error_line(assets, data_kwargs, tmp_path, capsys, monkeypatch):
    """A read-only folder (an unprivileged user's; root writes anyway, so the refusal is simulated where the lock
    file is created, the first write of a run)."""
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(tmp_path)) and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(SystemExit) as stopped:
        main(demo_args(assets, data_kwargs, tmp_path, 2))
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: Cannot write to the log folder {tmp_path / 'demo' / 'version_0'} (Permission denied); give a folder "
        "you can write to with --trainer.logger.init_args.save_dir (or --trainer.default_root_dir without a logger)."
    )
